"""Jacobian spectrum: `python launch/main.py --config=configs/jacobian.py:<model>[,quick]`.

At each image, the k largest and k smallest singular values of the denoiser's Jacobian and
their right singular vectors (ldct_jax.analysis.jacobian): the directions the network passes
most and the ones it locally ignores, without an optimisation. See ldct_jax/jobs/jacobian.py
for what lands in the workdir.

Models and images as in configs/invariance.py (gauss_ri needs no training; cnn10 and wgan_vgg
read config.checkpoint, default runs/cnn10/model and runs/wgan/model).
Variants (after a comma):
  quick      one 64 x 64 image: gauss_ri under a minute on a 2-core CPU, CNN-10 about 6 minutes
             (both ends converged; fewer --config.iterations for a rougher answer).

config.mask: a .npy [H, W] or [N, H, W] of 0/1 restricting the input directions. Every field
can be overridden, e.g. --config.k=8 --config.iterations=500.
"""

import ml_collections

from ldct_jax.jobs import configs

MODELS = configs.SWEEP_MODELS
VARIANTS = ("default", "quick")


def get_config(arg=None):
    model, variant = configs.parse_preset("configs/jacobian.py", arg, MODELS, VARIANTS)
    c = configs.sweep_config("jacobian", model)
    c.mask = ""                # .npy [H, W] or [N, H, W] of 0/1; '' -> every pixel
    c.k = 16                   # singular pairs at each end
    c.extra = 8                # extra LOBPCG block vectors
    c.iterations = 1000        # LOBPCG iterations at most, per end
    c.tolerance = 1e-5         # converged: ||J^T J v - s^2 v|| <= tolerance ||J||^2
    c.smallest_tolerance = 0.0  # the smallest end's; 0 -> tolerance (2e-6: values to ~1e-4)
    c.images_per_chunk = 1
    c.report = ml_collections.ConfigDict(dict(figures=True))
    if variant == "quick":
        if model == "gauss_ri":
            c.data.synthetic.size = 64
        elif c.crop:  # TransCT takes whole 512 x 512 slices only
            c.crop = 64
        c.num_images = 1
    c.lock()
    return c
