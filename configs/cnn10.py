"""Train CNN-10 (Chen et al. 2017): `python launch/main.py --config=configs/cnn10.py[:preset]`.

The same config as `configs/supervised.py:cnn10[,preset]`, in the workdir runs/cnn10 that the
sweeps read by default.

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

from ldct_jax.jobs import configs

PRESETS = ("default", "paper", "ldctbench")


def get_config(arg=None):
    (preset,) = configs.parse_preset("configs/cnn10.py", arg, PRESETS)
    c = configs.supervised_config("cnn10", preset)
    c.lock()
    return c
