"""Train CNN-10 (Chen et al. 2017): `python launch/main.py --config=configs/cnn10.py[:preset]`.

Presets:
  (none)      synthetic data built into <workdir>/data; about 6 minutes on a 2-core CPU with the
              data build (2000 steps, batch 16, patches 48, Adam 1e-3 with a cosine decay).
  paper       Mayo data (--config.data.root=...), patches 64x64, batch 128, Adam 1e-5 with
              betas 0.5/0.9: the published WGAN-VGG settings (Yang et al. 2018), used for both
              networks so that they are trained alike.
  ldctbench   ldct-benchmark's tuned values (configs/cnn10.yaml of eeulig/ldct-benchmark):
              patches 92, batch 68, Adam 1.58e-4 (0.9, 0.999), 86188 iterations, Mayo data.

Every field can be overridden, e.g. --config.num_steps=100 --config.optimizer.lr=3e-4.
"""

import ml_collections

from ldct_jax.jobs import configs

PRESETS = ("default", "paper", "ldctbench")


def get_config(arg=None):
    (preset,) = configs.parse_preset("configs/cnn10.py", arg, PRESETS)
    c = configs.train_config("cnn10", dict(features=(64, 32)), checkpoint_every=200,
                             slices_per_patient=4)
    # 2000 steps with a cosine decay: 38.5 % RMSE reduction on the held-out synthetic slices in
    # about 5 minutes of training on 2 cores; 600 constant-lr steps gave 30.2 %, 900 gave 27.6 %
    # (the last iterate of a constant lr is noisy), 1200 cosine 32.4 %.
    c.num_steps = 2000
    c.batch_size = 16
    c.patch_size = 48
    # schedule: 'constant' or 'cosine' (decay to 5 % of lr over num_steps).
    c.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.9, b2=0.999,
                                                 schedule="cosine"))

    if preset == "paper":
        configs.mayo_run(c, num_steps=100_000, batch_size=128, patch_size=64)
        c.optimizer.update(configs.PAPER_ADAM)
    elif preset == "ldctbench":
        configs.mayo_run(c, num_steps=86188, batch_size=68, patch_size=92)
        c.seed = 1341
        c.optimizer.update(lr=0.00015837006124497214, schedule="constant")
    c.lock()
    return c
