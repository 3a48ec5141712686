"""Build (or read) the data set, write a preview: `python launch/main.py --config=configs/data.py`.

Presets:
  (none)   the synthetic set the training configs use: 3 anatomies x 2 patients x 8 slices at
           512 x 512, built into <workdir>/data (about a minute on a 2-core CPU).
  small    1 patient per anatomy, 4 slices at 128 x 128: a few seconds, for smoke tests.
  mayo     the Mayo LDCT-and-Projection-data from TCIA: --config.data.root=/path/to/LDCT-data.

Any source works with --config.data.source=... (see ldct_jax.jobs.configs.data_config); the job
writes <workdir>/preview.png (per anatomy: low dose, routine dose, low - routine, in the
anatomy's window) and <workdir>/data_summary.txt.
"""

import ml_collections

from ldct_jax.jobs import configs

PRESETS = ("default", "small", "mayo")


def get_config(arg=None):
    (preset,) = configs.parse_preset("configs/data.py", arg, PRESETS)
    c = ml_collections.ConfigDict()
    c.job = "data"
    c.data = configs.data_config()
    c.preview_slice = -1   # slice index shown for each anatomy's first patient; -1: the middle
    if preset == "small":
        c.data.synthetic.update(patients_per_anatomy=1, slices=4, size=128)
    elif preset == "mayo":
        c.data.source = "mayo"
    c.lock()
    return c
