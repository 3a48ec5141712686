"""Natural invariances: `python launch/main.py --config=configs/natural.py:<model>[,<variant>]`.

Trains a conditional generator g(x, z) -> x_inv against a multi-scale Wasserstein critic so
that x + x_inv looks like a low-dose image and the denoiser f gives f(x + x_inv) ~= f(x)
(ldct_jax.train.natural), then samples it on whole slices and writes a report next to the
image-domain search on the same images (ldct_jax/jobs/natural.py lists what lands in the
workdir). Resumable like the trainers: run the same command again.

Models: every denoiser of the sweeps (gauss_ri needs no training; the others read
config.checkpoint, default the training job's model, e.g. runs/cnn10/model, or an
ldct-benchmark .pt).
Variants (after a comma):
  (none)     synthetic data (2 anatomies x 2 patients x 4 slices, one patient per anatomy held
             out for the report), 80 x 80 patches.
  quick      a smoke run of the same, minutes on a CPU.
  paper      the talk's setting: 80 x 80 patches of the Mayo data (--config.data.root=...),
             GPU-sized batches, whole held-out slices in the report.
gauss_ri trains on 64 x 64 patches of 96 x 96 slices: its zeroed square sits at the centre of
whatever image it is given, so patches move the anatomy against it.
"""

import ml_collections

from ldct_jax import models
from ldct_jax.jobs import configs

MODELS = configs.SWEEP_MODELS
VARIANTS = ("default", "quick", "paper")


def get_config(arg=None):
    model, variant = configs.parse_preset("configs/natural.py", arg, MODELS, VARIANTS)
    c = configs.sweep_config("natural", model)
    c.data = configs.data_config(patients_per_anatomy=2, slices=4,
                                 anatomies=configs.SWEEP_ANATOMIES)
    c.data.anatomies = configs.SWEEP_ANATOMIES
    c.data.held_out_patients = 1   # per anatomy: the report's images come from these
    c.crop = 256                   # report images: centre crop (0: whole slices)

    c.num_steps = 600
    c.batch_size = 8
    c.patch_size = 80
    c.log_every_steps = 10
    # Training checkpoints (config.checkpoint is the denoiser's, as in the sweeps).
    c.checkpoints = ml_collections.ConfigDict(dict(every_steps=100, keep=3))
    c.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.5, b2=0.9,
                                                 schedule="constant"))
    c.critic_optimizer = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.5, b2=0.9,
                                                        schedule="constant"))
    # condition_on_output: the generator sees f(x) beside x (ldct_jax/models/natural.py).
    c.generator = ml_collections.ConfigDict(dict(features=16, levels=2, noise_channels=4,
                                                 out_scale=0.1, condition_on_output=True))
    c.critic = ml_collections.ConfigDict(dict(features=16, scales=3, n_critic=1,
                                              gp_weight=10.0))
    # The generator loss: D_out - lam * d_in(distance) - alpha * critics - beta * d_in(x_1, x_2).
    # lam_start, lam_steps: lambda falls from lam_start to lam over the first lam_steps steps.
    c.loss = ml_collections.ConfigDict(dict(distance="mse", lam=1e-2, lam_start=0.0,
                                            lam_steps=0, alpha=3e-4, beta=1e-2))
    # Samples per report image (seed: their noise); every_steps: sample images to TensorBoard.
    c.samples = ml_collections.ConfigDict(dict(num_samples=4, seed=0, batch_size=8,
                                               every_steps=100))
    c.report = ml_collections.ConfigDict(dict(
        search=True,            # the image-domain search on the same images, beside it
        search_starts=2,        # its random starts per image; wgan_vgg, 2 images of 256 x 256
                                # on 2 CPU cores: 1.3 s an iteration with 2, 2.7 s with 4
        noise_patches=32,       # low-minus-routine-dose patches the noise spectrum is taken on
        noise_patch_size=64,
    ))
    # SearchOptions of that search (0 / -1: the method's value; see configs/invariance.py).
    c.search = ml_collections.ConfigDict(dict(method="anneal", iterations=0, learning_rate=0.0))

    if models.architecture(model).fixed_size:  # TransCT: whole 512 x 512 slices only
        c.crop = 0
        c.patch_size = c.data.synthetic.size
        c.batch_size = 2
    if model == "gauss_ri":
        # 64 x 64 patches of 96 x 96 slices: f zeroes the centre of the patch it is given, so
        # the anatomy moves against the square from patch to patch and the generator must find
        # the square in f(x), not learn where it sits in the few training slices (on whole
        # 64 x 64 slices, the held-out slices got x_inv across the square's edge).
        c.data.synthetic.size = 96
        c.patch_size = 64
        c.crop = 0
        c.critic.scales = 3
        # The output term 100x stronger against the other three (for Adam, the same as dividing
        # all three weights by 100): the reward grows whatever f passes with a gain below
        # sqrt(lam), and a Gaussian passes high frequencies at up to 10% (lam 1e-2: x_inv's
        # leftovers outside the square moved f by 5.8 HU RMS) or 1% (lam 1e-4: 0.13-0.44 HU).
        c.loss.update(lam=1e-4, alpha=3e-6, beta=1e-4)
    if variant == "quick":
        c.num_steps = 400
        c.batch_size = 4
        c.checkpoints.every_steps = 50
        c.samples.every_steps = 50
        c.num_images = 2
        c.crop = min(c.crop, 128) if c.crop else 0
        c.report.noise_patches = 16
    elif variant == "paper":
        configs.mayo_sweep_data(c)
        c.data.held_out_patients = 1
        c.num_steps = 20_000
        c.batch_size = 64
        c.checkpoints.every_steps = 1000
        c.samples.every_steps = 1000
        c.log_every_steps = 100
        c.generator.features = 32
        c.critic.features = 32
        c.critic.n_critic = 4
        c.optimizer.update(lr=1e-4)
        c.critic_optimizer.update(lr=1e-4)
    c.lock()
    return c
