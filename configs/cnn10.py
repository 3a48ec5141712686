"""Train CNN-10 (Chen et al. 2017): `python launch/main.py --config=configs/cnn10.py[:preset]`.

Presets:
  (none)      synthetic data built into <workdir>/data; finishes in minutes on a 2-core CPU.
  paper       Mayo data (--config.data.root=...), patches 64x64, batch 128, Adam 1e-5 with
              betas 0.5/0.9: the settings the issue calls published (Yang et al. 2018), used
              for both networks so that they are trained alike.
  ldctbench   ldct-benchmark's tuned values (configs/cnn10.yaml of eeulig/ldct-benchmark):
              patches 92, batch 68, Adam 1.58e-4 (0.9, 0.999), 86188 iterations, Mayo data.

Every field can be overridden, e.g. --config.num_steps=100 --config.optimizer.lr=3e-4.
"""

import ml_collections

from configs import common


def get_config(arg=None):
    preset = arg or "default"
    c = ml_collections.ConfigDict()
    c.job = "train"
    c.model = "cnn10"
    c.model_config = ml_collections.ConfigDict(dict(features=(64, 32)))
    c.seed = 0
    c.num_steps = 600
    c.batch_size = 16
    c.patch_size = 48
    # schedule: 'constant' or 'cosine' (decay to 5 % of lr over num_steps).
    c.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, b1=0.9, b2=0.999,
                                                 schedule="constant"))
    c.log_every_steps = 10
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, keep=3))
    c.eval = ml_collections.ConfigDict(dict(every_steps=0, slices_per_patient=4, batch_size=4))
    c.data = common.data_config()
    c.distributed = "auto"   # 'auto' | 'on' | 'off': jax.distributed.initialize()
    c.num_devices = 0        # 0: every device
    c.progress_bar = True

    if preset == "paper":
        c.data.source = "mayo"
        c.num_steps = 100_000
        c.batch_size = 128
        c.patch_size = 64
        c.optimizer.update(lr=1e-5, b1=0.5, b2=0.9, schedule="constant")
        c.checkpoint.every_steps = 2000
        c.eval.every_steps = 5000
        c.log_every_steps = 100
    elif preset == "ldctbench":
        c.data.source = "mayo"
        c.seed = 1341
        c.num_steps = 86188
        c.batch_size = 68
        c.patch_size = 92
        c.optimizer.update(lr=0.00015837006124497214, b1=0.9, b2=0.999,
                           schedule="constant")
        c.checkpoint.every_steps = 2000
        c.eval.every_steps = 5000
        c.log_every_steps = 100
    elif preset != "default":
        raise ValueError(f"configs/cnn10.py: unknown preset {preset!r}; expected '', 'paper' "
                         "or 'ldctbench'")
    c.lock()
    return c
