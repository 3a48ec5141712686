"""What the job configs share (big_vision style: plain functions returning ConfigDicts).

`configs/<job>.py:get_config(arg)` builds its config from these pieces; `arg` is the preset,
`<name>[,<variant>]`, parsed by `parse_preset`. Presets change a default config, never repeat
it: the paper's and ldct-benchmark's settings appear here once.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np

# Adam of Yang et al. 2018 for generator and critic (the paper presets of both trainings).
PAPER_ADAM = dict(lr=1e-5, b1=0.5, b2=0.9, schedule="constant")

# The denoisers the sweeps study (presets `configs/<sweep>.py:<model>`): gauss_ri needs no
# training and is the default; the others are ldct-benchmark's methods ('wganvgg' is its name
# of wgan_vgg), trained here or imported.
SWEEP_MODELS = ("gauss_ri", "cnn10", "wgan_vgg", "wganvgg", "redcnn", "dugan", "qae", "resnet",
                "transct", "bilateral")

# Anatomies of the sweeps' images (the head window is too narrow to read x_inv in).
SWEEP_ANATOMIES = ("chest", "abdomen")


def parse_preset(config_file: str, arg: Any, *parts: Sequence[str]) -> tuple[str, ...]:
    """The preset `arg` = `a[,b...]` as one name per part; an omitted part is its first name.

    Args:
      config_file: named in the error.
      arg: the text after `:` in `--config=configs/x.py:arg` (None or '' for the defaults).
      *parts: the names each comma-separated part may take, its default first.

    Raises:
      ValueError: naming `config_file`, `arg` and what each part may be.
    """
    given = str(arg or "").split(",") if arg else []
    names = [g or choices[0] for g, choices in zip(given, parts)]
    names += [choices[0] for choices in parts[len(names):]]
    if len(given) > len(parts) or any(n not in c for n, c in zip(names, parts)):
        expected = ",".join(f"{{{'|'.join(c)}}}" for c in parts)
        raise ValueError(f"{config_file}: unknown preset {arg!r}; expected {expected}")
    return tuple(names)


@contextlib.contextmanager
def naming(key: str, value: Any) -> Iterator[None]:
    """Re-raises a ValueError of the library with the config key and value it came from."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"config.{key}={value!r}: {e}") from None


def load(arg: str) -> ml_collections.ConfigDict:
    """The config of `configs/<job>.py[:preset]` (as `--config=` names it)."""
    path, _, preset = arg.partition(":")
    spec = importlib.util.spec_from_file_location("ldct_jax_config", path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"--config={arg}: no config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None)


def unknown_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
    """One line per `--config.<key>=...` of `argv` naming a field `config` does not have, with
    the nearest field there is."""
    keys = _dotted_keys(config.to_dict())
    lines = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if key in keys:
            continue
        near = difflib.get_close_matches(key, keys, n=1)
        hint = f"; did you mean --config.{near[0]}?" if near else ""
        lines.append(f"--config.{key}: the config has no field {key!r}{hint}")
    return lines


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for name, value in d.items():
        out.append(prefix + name)
        if isinstance(value, dict):
            out += _dotted_keys(value, f"{prefix}{name}.")
    return out


def check_choices(config: Any, key: str, known: Sequence[str], what: str) -> None:
    """`config.<key>` is a non-empty list of names from `known`, or a ValueError naming it."""
    given = tuple(str(v) for v in config[key])
    unknown = sorted(set(given) - set(known))
    if unknown or not given:
        raise ValueError(f"config.{key}={given}: unknown {what}(s) {unknown}; expected some of "
                         f"{', '.join(known)}")


def check_nonnegative(config: Any, key: str, what: str) -> None:
    """`config.<key>` is a non-empty list of finite numbers >= 0, or a ValueError naming it."""
    values = np.asarray(config[key], np.float64)
    if values.ndim != 1 or not values.size or not np.all(np.isfinite(values)) or values.min() < 0:
        raise ValueError(f"config.{key}={config[key]}: expected a non-empty list of finite "
                         f"{what}")


def data_config(**synthetic_overrides) -> ml_collections.ConfigDict:
    """Where the CT data comes from; read by `ldct_jax.jobs.data.load_scans`.

    source: 'synthetic' (embedded, built on first use), 'mayo' (TCIA layout under `root`) or
      'dicom' (a pair of full/low dose series folders, `full_dir` and `low_dir`, or a folder of
      pairs, `root`; `anatomy` and `dose_fraction` describe them).
    root: data set directory; '' means `<workdir>/data` for the synthetic set.
    synthetic: every parameter of `ldct_jax.data.synthetic.build` (its defaults, then
      `synthetic_overrides`), so that each can be overridden on the command line.
    """
    from ldct_jax.data import synthetic as synthetic_lib
    synthetic = synthetic_lib.build_params(**synthetic_overrides)
    del synthetic["format"]
    synthetic["anatomies"] = tuple(synthetic["anatomies"])  # as --config overrides give them
    return ml_collections.ConfigDict(dict(
        source="synthetic",
        root="",
        full_dir="",
        low_dir="",
        anatomies=("chest", "abdomen", "head"),
        anatomy="unknown",     # source='dicom': the anatomy of every pair (its display window)
        dose_fraction=0.0,     # source='dicom': low dose / routine dose (0: unknown)
        cache_dir="",          # '' -> a cache folder inside the workdir
        skip_bad_slices=False,  # skip unreadable slices (each is logged and counted)
        held_out_patients=1,   # per anatomy, whole patients kept for evaluation
        synthetic=synthetic,
    ))


def train_config(model: str, model_config: dict, *, checkpoint_every: int,
                 slices_per_patient: int) -> ml_collections.ConfigDict:
    """The fields every training config has (configs/cnn10.py, configs/wgan.py); the caller
    adds its model's steps, batch, patch and optimisers."""
    c = ml_collections.ConfigDict()
    c.job = "train"
    c.model = model
    c.model_config = ml_collections.ConfigDict(model_config)
    c.seed = 0
    c.log_every_steps = 10
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=checkpoint_every, keep=3))
    c.eval = ml_collections.ConfigDict(dict(every_steps=0, slices_per_patient=slices_per_patient,
                                            batch_size=4))
    c.data = data_config()
    c.distributed = "auto"   # 'auto' | 'on' | 'off': jax.distributed.initialize()
    c.num_devices = 0        # 0: every device
    c.progress_bar = True
    return c


# Synthetic-data defaults of the MSE-trained methods: minutes on a 2-core CPU. RED-CNN and
# ResNet are narrower than ldct-benchmark's (96 and 128 channels, 10 blocks: about 230 times
# CNN-10's arithmetic per pixel); their `ldctbench` preset has the package's widths. Unless
# given here: patches 48, Adam lr 1e-3 with a cosine decay.
SUPERVISED_DEFAULTS = {
    # 2000 steps with a cosine decay: 38.5 % RMSE reduction on the held-out synthetic slices in
    # about 5 minutes of training on 2 cores; 600 constant-lr steps gave 30.2 %, 900 gave 27.6 %
    # (the last iterate of a constant lr is noisy), 1200 cosine 32.4 %.
    "cnn10": dict(model_config=dict(features=(64, 32)), num_steps=2000, batch_size=16),
    "redcnn": dict(model_config=dict(features=16), num_steps=1000, batch_size=8),
    "resnet": dict(model_config=dict(features=32, blocks=4), num_steps=1000, batch_size=8),
    "qae": dict(model_config=dict(), num_steps=1000, batch_size=8),
    # 12 params, initialised as ldct-benchmark's: 300 steps of 8 patches of 64 px, lr 0.05
    # (spatial sigmas) and 0.01 (range sigmas): 44.0 % RMSE reduction on the held-out synthetic
    # slices in about 4 minutes of training on 2 busy cores (5 for the command, data build
    # included); 150 steps gave 41.1 %, 400 steps at lr 0.01 for both 44.0 %.
    "bilateral": dict(model_config=dict(), num_steps=300, batch_size=8, patch_size=64, lr=0.05,
                      lr_range=0.01),
    # A smoke run, not a denoiser: TransCT (79 M params, whole 512 x 512 slices, about 4 s a
    # step on 2 busy cores) drops its training loss from 0.8 to 0.1 in these 60 steps (4
    # minutes of training), but its held-out RMSE, 176 HU, is far above the low dose's 21 HU
    # (lr 1e-4: 248 HU). It needs ldct-benchmark's tens of thousands of steps: train it on an
    # accelerator (batch_size a multiple of the device count).
    "transct": dict(model_config=dict(), num_steps=60, batch_size=1, lr=3e-4),
}

# ldct-benchmark's tuned values (configs/<method>.yaml of eeulig/ldct-benchmark): Adam lr
# (betas 0.9, 0.999), iterations, minibatch, patch size, seed; architectures at its defaults.
LDCTBENCH_SUPERVISED = {
    "cnn10": dict(lr=0.00015837006124497214, num_steps=86188, batch_size=68, patch_size=92,
                  seed=1341),
    "redcnn": dict(lr=9.583417460320728e-05, num_steps=92994, batch_size=73, patch_size=128,
                   seed=1339),
    "resnet": dict(lr=1e-4, num_steps=20000, batch_size=64, patch_size=64, seed=1332),
    "qae": dict(lr=2.8427860979114494e-05, num_steps=94025, batch_size=125, patch_size=36,
                seed=1371),
    # Also lr_r, the range sigmas' lr. Its yaml's sigma_xyz_init and sigma_r_init are not used
    # by its Model (see models.bilateral.Bilateral): the architecture's defaults are its init.
    "bilateral": dict(lr=4.001423666414552e-05, lr_range=0.003555342304006777, num_steps=74981,
                      batch_size=2, patch_size=121, seed=1341),
    # patchsize 0 there: whole 512 x 512 slices.
    "transct": dict(lr=2.3978185694166783e-05, num_steps=89378, batch_size=16, patch_size=512,
                    seed=1341),
}


def supervised_config(method: str, preset: str) -> ml_collections.ConfigDict:
    """The training config of an MSE-trained method (configs/supervised.py, configs/cnn10.py).

    Args:
      method: a key of `SUPERVISED_DEFAULTS`.
      preset: 'default' (synthetic data, minutes on a CPU), 'paper' (Mayo data, the published
        WGAN-VGG settings, so that every network is trained alike) or 'ldctbench' (Mayo data,
        ldct-benchmark's tuned values); both Mayo presets build the architecture at its
        defaults (ldct-benchmark's).

    Every preset trains TransCT on whole 512 x 512 slices (patch_size 512), and gives bilateral
    `optimizer.lr_range`, the learning rate of its range sigmas (ldct-benchmark's `lr_r`; the
    paper preset: the common lr).
    """
    from ldct_jax import models
    d = SUPERVISED_DEFAULTS[method]
    c = train_config(method, d["model_config"], checkpoint_every=200, slices_per_patient=4)
    c.num_steps = d["num_steps"]
    c.batch_size = d["batch_size"]
    c.patch_size = d.get("patch_size", 48)
    # schedule: 'constant' or 'cosine' (decay to 5 % of lr over num_steps).
    c.optimizer = ml_collections.ConfigDict(dict(lr=d.get("lr", 1e-3), b1=0.9, b2=0.999,
                                                 schedule="cosine"))
    if method == "bilateral":  # the range sigmas' lr (ldct-benchmark's lr_r), with the schedule
        c.optimizer.lr_range = d["lr_range"]
    if preset != "default":  # the architecture's own widths on the Mayo data
        c.model_config = ml_collections.ConfigDict()
    if preset == "paper":
        mayo_run(c, num_steps=100_000, batch_size=128, patch_size=64)
        c.optimizer.update(PAPER_ADAM)
        if method == "bilateral":  # every param trained alike
            c.optimizer.lr_range = PAPER_ADAM["lr"]
    elif preset == "ldctbench":
        t = LDCTBENCH_SUPERVISED[method]
        mayo_run(c, num_steps=t["num_steps"], batch_size=t["batch_size"],
                 patch_size=t["patch_size"])
        c.seed = t["seed"]
        c.optimizer.update(lr=t["lr"], schedule="constant")
        if method == "bilateral":
            c.optimizer.lr_range = t["lr_range"]
    arch = models.architecture(method)
    if arch.fixed_size:  # TransCT: whole 512 x 512 slices in every preset
        c.patch_size = arch.init_size
    return c


def mayo_run(c: ml_collections.ConfigDict, *, num_steps: int, batch_size: int,
             patch_size: int) -> None:
    """Turns a training config into a long run on the Mayo data (the paper/ldctbench presets)."""
    c.data.source = "mayo"
    c.num_steps = num_steps
    c.batch_size = batch_size
    c.patch_size = patch_size
    c.checkpoint.every_steps = 2000
    c.eval.every_steps = 5000
    c.log_every_steps = 100


def sweep_config(job: str, model: str) -> ml_collections.ConfigDict:
    """The fields the invariance and attack sweeps share: model, images, data, run settings.

    Trained models get synthetic slices of the size (so the pixel size) the training jobs use,
    centre-cropped to 128 px so that a CPU finishes in reasonable time; gauss_ri needs no
    training and gets small whole slices.
    """
    from ldct_jax import models
    c = ml_collections.ConfigDict()
    c.job = job
    c.model = models.canonical(model)
    # '' -> the training job's model (ldct_jax.jobs.inputs.TRAINED; unused by gauss_ri); a
    # model directory (ldct_jax.models.save) or an ldct-benchmark .pt
    c.checkpoint = ""
    c.model_config = ml_collections.ConfigDict()  # module arguments for gauss_ri (sigma, square)
    c.images = ""              # .npy [H, W] or [N, H, W] HU; '' -> slices from config.data
    c.anatomy = "abdomen"      # anatomy of .npy images (picks the display window)
    c.num_images = 2
    c.image_seed = 0
    c.crop = 0                 # centre crop to crop x crop px; 0 keeps whole slices
    if model == "gauss_ri":
        c.data = data_config(patients_per_anatomy=1, slices=1, size=128,
                             anatomies=SWEEP_ANATOMIES)
        c.data.anatomies = SWEEP_ANATOMIES[::-1]
    else:
        c.data = data_config(patients_per_anatomy=1, slices=2, anatomies=SWEEP_ANATOMIES)
        c.data.anatomies = SWEEP_ANATOMIES
        # TransCT takes whole 512 x 512 slices only.
        c.crop = 0 if models.architecture(model).fixed_size else 128
    c.data.held_out_patients = 0
    c.seed = 0                 # model init (gauss_ri has no params) and VGG random init
    c.distributed = "auto"
    c.num_devices = 0          # 0: every device
    c.progress_bar = True
    return c


def mayo_sweep_data(c: ml_collections.ConfigDict) -> None:
    """The `paper` variant of a sweep: whole slices of the Mayo data (config.data.root)."""
    c.data = data_config()
    c.data.source = "mayo"
    c.data.anatomies = SWEEP_ANATOMIES
    c.data.held_out_patients = 0
    c.crop = 0
