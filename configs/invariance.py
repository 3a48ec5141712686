"""Invariance sweep: `python launch/main.py --config=configs/invariance.py:<model>[,<variant>]`.

Finds, for every (distance, lambda, image, seed) of a grid, the large input perturbation x_inv
the denoiser ignores (ldct_jax.analysis.search), in chunks that a restarted run does not
redo, then writes a report (figures in the slides' layout and a table). See
ldct_jax/jobs/invariance.py for what lands in the workdir.

Models:
  gauss_ri   the Gaussian + zeroed square ground truth: no training, a tiny default (2
             synthetic slices at 128x128 built in <workdir>/data) that runs in a few minutes
             on a CPU.
  cnn10      needs a trained model: config.checkpoint, default runs/cnn10/model
             (python launch/main.py --config=configs/cnn10.py), or an ldct-benchmark .pt.
             Default: 2 synthetic slices at 512x512 as in training (built in <workdir>/data),
             centre-cropped to 128x128 (--config.crop=0 for whole slices), 8 perturbations.
  wgan_vgg   needs a trained model: config.checkpoint, default runs/wgan/model
             (python launch/main.py --config=configs/wgan.py), or an ldct-benchmark .pt.
Variants (after a comma):
  quick      few iterations and small images: a smoke run.
  paper      the talk's settings: Mayo slices (--config.data.root=...), 512x512, 3000 Adam
             iterations at a constant 1e-2 (method 'adam'), distances mse, dssim and vgg16
             (--config.vgg16_weights=...).
The search runs the default method ('anneal': a decaying step and lambda continuation, each
row stopping once converged, at most 300 iterations) except in 'paper'.

Images: config.images (a .npy, [H, W] or [N, H, W] HU; config.anatomy names their anatomy)
or, when empty, config.num_images low-dose slices drawn from config.data (seed
config.image_seed), optionally centre-cropped to config.crop px. config.mask: a .npy [H, W] or
[N, H, W] in [0, 1], where x_inv may live. Every field can be overridden, e.g.
--config.lambdas='(1e-4, 1e-2)' --config.search.iterations=1000.
"""

import ml_collections

from ldct_jax.jobs import configs

MODELS = configs.SWEEP_MODELS
VARIANTS = ("default", "quick", "paper")


def get_config(arg=None):
    model, variant = configs.parse_preset("configs/invariance.py", arg, MODELS, VARIANTS)
    c = configs.sweep_config("invariance", model)
    c.mask = ""                # .npy [H, W] or [N, H, W] in [0, 1]; '' -> everywhere

    # The grid: distances x lambdas x images x seeds, cut into chunks of rows.
    c.distances = ("mse", "dssim")
    c.lambdas = (1e-4, 1e-2)
    c.seeds = (0,)
    c.rows_per_chunk = 4
    c.vgg16_weights = ""       # torchvision VGG16 .pth/.safetensors; '' -> random init (logged)

    # SearchOptions; 0 (-1 for lambda_start and tolerance): the method's value. 'anneal' stops
    # each row on convergence (at most 300 iterations); 'adam' is the talk's 3000 steps.
    c.search = ml_collections.ConfigDict(dict(
        method="anneal", iterations=0, chunk=25, learning_rate=0.0, b1=0.9, b2=0.0, eps=1e-8,
        lambda_start=-1.0, lambda_steps=0, final_lr_fraction=0.0, tolerance=-1.0, window=0,
        init_scale_hu=1.0, clip=True, sensitivity=False, compute_dtype="float32"))

    c.report = ml_collections.ConfigDict(dict(
        figures=True,
        figure_seed=-1,        # the seed shown in figures; -1: the first of config.seeds
        compare=(),            # other sweep workdirs whose summaries join the table
    ))

    if variant == "quick":
        c.crop = 64 if c.crop else 0  # whole slices stay whole (gauss_ri, TransCT)
        c.num_images = 1
        c.search.iterations = 100
        c.search.chunk = 25
        c.lambdas = (1e-2,)
    elif variant == "paper":
        configs.mayo_sweep_data(c)
        c.distances = ("mse", "dssim", "vgg16")
        c.lambdas = (1e-4, 1e-3, 1e-2, 1e-1)
        c.search.update(method="adam", iterations=3000, chunk=100, learning_rate=1e-2,
                        b2=0.999)
    c.lock()
    return c
