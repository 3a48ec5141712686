"""Config pieces shared by every job (big_vision style: plain functions returning ConfigDicts)."""

import ml_collections


def data_config(**synthetic_overrides) -> ml_collections.ConfigDict:
    """Where the CT data comes from; read by `ldct_jax.data.load_scans`.

    source: 'synthetic' (embedded, built on first use), 'mayo' (TCIA layout under `root`) or
      'dicom' (a pair of full/low dose series folders, `full_dir` and `low_dir`).
    root: data set directory; '' means `<workdir>/data` for the synthetic set.
    """
    synthetic = dict(patients_per_anatomy=2, slices=8, size=512, seed=0)
    synthetic.update(synthetic_overrides)
    return ml_collections.ConfigDict(dict(
        source="synthetic",
        root="",
        full_dir="",
        low_dir="",
        anatomies=("chest", "abdomen", "head"),
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


SWEEP_MODELS = ("gauss_ri", "cnn10", "wgan_vgg")


def sweep_preset(config_file: str, arg, variants: tuple[str, ...]) -> tuple[str, str]:
    """Parses a sweep preset `<model>[,<variant>]` (default gauss_ri) into (model, variant)."""
    model, _, variant = (arg or "gauss_ri").partition(",")
    variant = variant or "default"
    if model not in SWEEP_MODELS or variant not in variants:
        raise ValueError(f"{config_file}: unknown preset {arg!r}; expected <model>[,<variant>] "
                         f"with model in {SWEEP_MODELS} and variant in {variants[1:]}")
    return model, variant


def sweep_config(job: str, model: str) -> ml_collections.ConfigDict:
    """The fields the invariance and attack sweeps share: model, images, data, run settings.

    Trained models get synthetic slices of the size (so the pixel size) the training jobs use,
    centre-cropped to 128 px so that a CPU finishes in reasonable time; gauss_ri needs no
    training and gets small whole slices.
    """
    c = ml_collections.ConfigDict()
    c.job = job
    c.model = model
    c.checkpoint = ""          # '' -> runs/cnn10/model or runs/wgan/model (unused by gauss_ri)
    c.model_config = ml_collections.ConfigDict()  # module arguments for gauss_ri (sigma, square)
    c.images = ""              # .npy [H, W] or [N, H, W] HU; '' -> slices from config.data
    c.anatomy = "abdomen"      # anatomy of .npy images (picks the display window)
    c.num_images = 2
    c.image_seed = 0
    c.crop = 0                 # centre crop to crop x crop px; 0 keeps whole slices
    if model == "gauss_ri":
        c.data = data_config(patients_per_anatomy=1, slices=1, size=128,
                             anatomies=("chest", "abdomen"))
        c.data.anatomies = ("abdomen", "chest")
    else:
        c.data = data_config(patients_per_anatomy=1, slices=2, anatomies=("chest", "abdomen"))
        c.data.anatomies = ("chest", "abdomen")
        c.crop = 128
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
    c.data.held_out_patients = 0
    c.crop = 0
