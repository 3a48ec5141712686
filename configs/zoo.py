"""Compare denoisers by what they ignore: `python launch/main.py --config=configs/zoo.py[:quick]`.

One invariance grid (configs/invariance.py's fields and defaults for trained models: 2
synthetic slices centre-cropped to 128 px, distances mse and dssim, lambdas 1e-4 and 1e-2, 500
Adam iterations) run over every model of config.models on the same images; then a table
ranking the models per distance and lambda by the input change they ignore per HU of output
change, and one figure per distance with every model's x_inv of the same image side by side.
See ldct_jax/jobs/zoo.py for what lands in the workdir.

Models: config.models, any registered denoiser; each reads config.checkpoints.<model> (a model
directory written by ldct_jax.models.save or an ldct-benchmark .pt), by default where its
training job leaves it: runs/cnn10/model (configs/cnn10.py), runs/wgan/model (configs/wgan.py),
runs/supervised_<method>/model (configs/supervised.py:<method>, also transct and bilateral);
dugan needs a checkpoint (transct takes 512 x 512 images: --config.crop=0).
gauss_ri (no training) is the known-answer reference.
Variants:
  quick      one 64 x 64 crop, lambda 1e-2, 100 iterations: a smoke run.

E.g. --config.models='("cnn10", "redcnn", "dugan")' --config.checkpoints.dugan=dugan.pt
"""

import os

import ml_collections

from ldct_jax.jobs import configs

VARIANTS = ("default", "quick")
DEFAULT_MODELS = ("gauss_ri", "cnn10", "wgan_vgg", "redcnn", "resnet", "qae")
CHECKPOINTS = ("cnn10", "wgan_vgg", "redcnn", "dugan", "qae", "resnet", "transct", "bilateral")


def get_config(arg=None):
    (variant,) = configs.parse_preset("configs/zoo.py", arg, VARIANTS)
    preset = "cnn10" if variant == "default" else f"cnn10,{variant}"
    grid = configs.load(os.path.join(os.path.dirname(__file__), "invariance.py") + ":" + preset)
    d = grid.to_dict()
    for key in ("model", "checkpoint", "model_config"):
        d.pop(key)
    d["report"].pop("compare")
    c = ml_collections.ConfigDict(d)
    c.job = "zoo"
    c.models = DEFAULT_MODELS
    c.checkpoints = ml_collections.ConfigDict({m: "" for m in CHECKPOINTS})
    c.report.figure_image = 0  # the image whose x_inv every model shows side by side
    c.lock()
    return c
