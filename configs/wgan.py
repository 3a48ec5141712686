"""Train WGAN-VGG (Yang et al. 2018): `python launch/main.py --config=configs/wgan.py[:preset]`.

Presets:
  (none)      synthetic data built into <workdir>/data; about 6 minutes on a 2-core CPU with the
              data build (400 steps, batch 4, patches 48, 1 critic step). Without
              --config.vgg.weights the VGG19 is RANDOM INIT (logged, and written into
              eval.json), so this preset adds a pixel MSE term to the generator loss
              (wgan.mse_weight=1000; 0, the paper's loss, in the other presets): a smoke run,
              not a study.
  paper       Mayo data (--config.data.root=...), the published settings: patches 64x64, batch
              128, Adam 1e-5 with betas 0.5/0.9 for generator and critic, 4 critic steps per
              generator step, perceptual weight 0.1, gradient penalty weight 10.
  ldctbench   ldct-benchmark's tuned values (configs/wganvgg.yaml of eeulig/ldct-benchmark):
              patches 77, batch 77, Adam 7.1e-5 (0.326, 0.999) for both, 1 critic step,
              perceptual weight 0.689, 67306 iterations, Mayo data.

VGG19 weights: a torchvision .pth/.safetensors or a converted directory (see
ldct_jax.models.vgg_weights), fed network units without ImageNet normalisation, as
ldct-benchmark does.
"""

import ml_collections

from ldct_jax.jobs import configs

PRESETS = ("default", "paper", "ldctbench")


def get_config(arg=None):
    (preset,) = configs.parse_preset("configs/wgan.py", arg, PRESETS)
    c = configs.train_config("wgan_vgg", dict(features=32, depth=8), checkpoint_every=100,
                             slices_per_patient=2)
    # 39.4 % RMSE reduction on the held-out synthetic slices (abdomen 37.9, chest 47.6, head
    # 28.8 %) in 5:10 of training on 2 cores; 250 steps on patches of 32 gave 15.5 %.
    c.num_steps = 400
    c.batch_size = 4
    c.patch_size = 48
    # schedule: 'constant' or 'cosine' (decay to 5 % of lr over num_steps).
    c.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.5, b2=0.9,        # generator
                                                 schedule="cosine"))
    c.critic_optimizer = ml_collections.ConfigDict(dict(lr=1e-4, b1=0.5, b2=0.9,
                                                        schedule="constant"))
    # mse_weight: an extra pixel MSE term in the generator loss (0 = the paper's loss). The
    # synthetic default needs it: with a RANDOM INIT VGG19 the perceptual term does not pin the
    # intensities, and a few hundred CPU steps do not reach a usable denoiser without it.
    c.wgan = ml_collections.ConfigDict(dict(n_critic=1, gp_weight=10.0, perceptual_weight=1.0,
                                            mse_weight=1000.0))
    c.vgg = ml_collections.ConfigDict(dict(weights="", arch="vgg19", tap="conv5_4",
                                           imagenet_norm=False))

    if preset == "paper":
        configs.mayo_run(c, num_steps=100_000, batch_size=128, patch_size=64)
        c.optimizer.update(configs.PAPER_ADAM)
        c.critic_optimizer.update(configs.PAPER_ADAM)
        c.wgan.update(n_critic=4, perceptual_weight=0.1, mse_weight=0.0)
    elif preset == "ldctbench":
        configs.mayo_run(c, num_steps=67306, batch_size=77, patch_size=77)
        c.seed = 1344
        adam = dict(lr=7.096903581620458e-05, b1=0.3260552006030955, b2=0.999)
        c.optimizer.update(adam, schedule="constant")
        c.critic_optimizer.update(adam)
        c.wgan.update(perceptual_weight=0.6893269329076448, mse_weight=0.0)
    c.lock()
    return c
