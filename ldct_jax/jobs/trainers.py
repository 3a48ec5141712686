"""From a config to a ready trainer: checked values, initial state, jitted data-parallel step.

`check_config(config)` fails early, naming the key, for values that would only break later
(after the data build or the compile); `build(config, mesh, train_scans)` returns a `Trainer`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import models, parallel
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import configs
from ldct_jax.jobs import data as data_job
from ldct_jax.models import vgg as vgg_lib
from ldct_jax.models import bilateral, vgg_weights, wgan_vgg
from ldct_jax.train import supervised, wgan
from ldct_jax.train.state import TrainState

# Trained with the MSE, as ldct-benchmark trains them; WGAN-VGG as a WGAN-GP.
SUPERVISED = ("cnn10", "redcnn", "resnet", "qae", "transct", "bilateral")
MODELS = SUPERVISED + ("wgan_vgg",)
# VGG19 pools 4 times before conv5_4.
_MIN_PERCEPTUAL_PATCH = 16


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the training loop needs, independent of the model.

    Attributes:
      denoiser: the network being trained (architecture, normalisation, initial params).
      init_state: step-0 state, replicated over the mesh.
      step: `step(state, batch) -> (state, metrics)`, jitted with the state donated; the batch
        is global arrays sharded along the batch axis.
      local_batch: `local_batch(step) -> dict of numpy` this process's rows of step's batch.
      patches_per_step: patches the step consumes (batch x n_critic for WGAN-VGG).
      notes: facts to log and write into results (e.g. the VGG's description).
    """

    denoiser: models.Denoiser
    init_state: TrainState
    step: Callable[..., tuple[TrainState, dict]]
    local_batch: Callable[[int], dict[str, np.ndarray]]
    patches_per_step: int
    notes: dict[str, str]


def check_positive(config, key: str, value, *, allow_zero: bool = False) -> None:
    """`value` (of config.<key>) is a finite number > 0 (>= 0 with `allow_zero`), or a
    ValueError."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(
            value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"config.{key}={value!r} must be {'>= 0' if allow_zero else '> 0'} "
                         "and finite")


def check_model_config(config) -> None:
    """Every number of config.model_config (layer widths and counts, window radii, initial
    sigmas) is > 0: zero or negative ones fail deep inside the model's init, or train a
    network that does nothing (a bilateral filter of radius 0)."""
    for k, v in config.model_config.items():
        for x in v if isinstance(v, (tuple, list)) else (v,):
            check_positive(config, f"model_config.{k}", x)


def check_adam(config, key: str) -> None:
    """config.<key> is an Adam of the trainers: lr > 0, betas in [0, 1), a known schedule."""
    opt = config[key]
    check_positive(config, f"{key}.lr", opt.lr)
    for b in ("b1", "b2"):
        if not 0.0 <= opt[b] < 1.0:
            raise ValueError(f"config.{key}.{b}={opt[b]!r} must be in [0, 1)")
    if opt.get("schedule", "constant") not in supervised.SCHEDULES:
        raise ValueError(f"config.{key}.schedule={opt.schedule!r}; expected one of "
                         f"{supervised.SCHEDULES}")


def check_config(config) -> None:
    """Raises ValueError naming the key for any value that cannot work, before any heavy work."""
    if config.model not in MODELS:
        raise ValueError(f"config.model={config.model!r}; expected one of {MODELS}")
    arch = models.architecture(config.model)
    if arch.fixed_size and config.patch_size != arch.init_size:
        n = arch.init_size
        raise ValueError(f"config.patch_size={config.patch_size!r}: {config.model} takes {n} x "
                         f"{n} images only (whole slices); set config.patch_size={n}")
    check_loop(config)
    check_model_config(config)
    for key in ("eval.slices_per_patient", "eval.batch_size"):
        check_positive(config, key, field(config, key))
    check_positive(config, "eval.every_steps", config.eval.every_steps, allow_zero=True)
    check_adam(config, "optimizer")
    if config.model == "bilateral":
        if "lr_range" not in config.optimizer:
            raise ValueError("config.optimizer.lr_range is missing: bilateral trains its range "
                             "sigmas with a learning rate of their own (configs/supervised.py:"
                             "bilateral sets it)")
        check_positive(config, "optimizer.lr_range", config.optimizer.lr_range)
    if config.model == "wgan_vgg":
        check_adam(config, "critic_optimizer")
        check_positive(config, "wgan.n_critic", config.wgan.n_critic)
        check_positive(config, "wgan.gp_weight", config.wgan.gp_weight, allow_zero=True)
        check_positive(config, "wgan.perceptual_weight", config.wgan.perceptual_weight,
                       allow_zero=True)
        check_positive(config, "wgan.mse_weight", config.wgan.get("mse_weight", 0.0),
                       allow_zero=True)
        try:
            wgan_vgg.critic_output_size(config.patch_size)
        except ValueError as e:
            raise ValueError(f"config.patch_size={config.patch_size}: {e}") from None
        if config.patch_size < _MIN_PERCEPTUAL_PATCH:
            raise ValueError(f"config.patch_size={config.patch_size}: the VGG19 conv5_4 "
                             f"perceptual loss needs patches of at least "
                             f"{_MIN_PERCEPTUAL_PATCH} pixels")
        if config.vgg.tap not in vgg_lib.tap_names(config.vgg.arch):
            raise ValueError(f"config.vgg.tap={config.vgg.tap!r} is not a tap of "
                             f"{config.vgg.arch}")
        if config.vgg.weights and not os.path.exists(config.vgg.weights):
            raise ValueError(f"config.vgg.weights={config.vgg.weights!r} does not exist (leave "
                             "it empty for a random-init VGG)")
    with configs.naming("patch_size", config.patch_size):
        models.check_input_size(config.model, (config.patch_size,) * 2, "patches")
    check_data(config)


def check_loop(config, checkpoints: str = "checkpoint") -> None:
    """The fields of the training loop (`jobs.train.step_loop`) and its batches are positive;
    `checkpoints` names the group of `every_steps` and `keep`."""
    for key in ("num_steps", "batch_size", "patch_size", "log_every_steps",
                f"{checkpoints}.every_steps", f"{checkpoints}.keep"):
        check_positive(config, key, field(config, key))
    check_positive(config, "num_devices", config.num_devices, allow_zero=True)
    check_positive(config, "seed", config.seed, allow_zero=True)


def check_data(config) -> None:
    """config.data names data that can exist, and the patches fit synthetic images."""
    data = config.data
    data_job.check_data_config(data)
    if data.source == "dicom" and (data.full_dir or data.low_dir):
        for key in ("full_dir", "low_dir"):
            if not data[key]:
                raise ValueError(f"config.data.{key} is empty, but config.data.source='dicom' "
                                 "with a series pair needs both config.data.full_dir and "
                                 "config.data.low_dir")
    elif data.source in ("mayo", "dicom") and not data.root:
        raise ValueError(f"config.data.root is empty, but config.data.source={data.source!r} "
                         "needs it: pass --config.data.root=/path/to/the/data"
                         + (" (or config.data.full_dir and config.data.low_dir for one series "
                            "pair)" if data.source == "dicom" else ""))
    for key in ("root", "full_dir", "low_dir"):
        path = data.get(key)
        if data.source != "synthetic" and path and not os.path.isdir(path):
            raise ValueError(f"config.data.{key}={path!r} is not a directory")
    held = data.held_out_patients
    if held < 0:
        raise ValueError(f"config.data.held_out_patients={held}; expected >= 0 (per anatomy)")
    if data.source == "synthetic" and held >= data.synthetic.patients_per_anatomy:
        raise ValueError(f"config.data.held_out_patients={held} leaves no patient to train on: "
                         f"the synthetic set has {data.synthetic.patients_per_anatomy} per "
                         "anatomy (config.data.synthetic.patients_per_anatomy)")
    if data.source == "dicom" and data.full_dir and held:
        raise ValueError(f"config.data.held_out_patients={held}, but one series pair "
                         "(config.data.full_dir, low_dir) is one patient: set it to 0 (no "
                         "held-out set) or use config.data.root with several patients")
    if data.source == "synthetic" and config.patch_size > data.synthetic.size:
        raise ValueError(f"config.patch_size={config.patch_size} is larger than the synthetic "
                         f"images (config.data.synthetic.size={data.synthetic.size})")


def check_patch_fits(config, scans: Sequence[Scan]) -> None:
    """The patch size against the smallest image of the loaded scans."""
    smallest = min(scans, key=lambda s: min(s.full.shape[1:]))
    h, w = smallest.full.shape[1:]
    if config.patch_size > min(h, w):
        raise ValueError(f"config.patch_size={config.patch_size} is larger than the images of "
                         f"patient {smallest.patient} ({h}x{w})")


def field(config, dotted: str):
    """`config.<dotted>` (e.g. 'checkpoint.every_steps')."""
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _init_params(module, key: jax.Array, size: int, flax_default_init: bool = True):
    """Fresh params for `module` on `[1, size, size, 1]` inputs, drawn with numpy.

    The distributions of Flax's defaults for Conv and Dense, which these modules use: kernels
    LeCun normal (truncated at 2 sigma, std sqrt(1 / fan_in) / .8796), biases 0. Drawn with
    numpy from `key` (deterministic) because compiling JAX's RNG for every kernel shape takes
    tens of seconds on a busy 2-core CPU; the shapes come from `jax.eval_shape` (no compile).
    """
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    if not flax_default_init:  # the module's own initialisers (e.g. Q-AE's, BatchNorm's)
        return jax.jit(module.init)(key, jnp.zeros(x.shape, x.dtype))["params"]
    shapes = jax.eval_shape(lambda k, x: module.init(k, x)["params"], key, x)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def draw(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name != "kernel":
            raise ValueError(f"{type(module).__name__}: no numpy initialiser for "
                             f"{jax.tree_util.keystr(path)}")
        z = rng.standard_normal(leaf.shape)
        while np.any(bad := np.abs(z) > 2.0):
            z[bad] = rng.standard_normal(int(bad.sum()))
        std = np.sqrt(1.0 / np.prod(leaf.shape[:-1])) / .87962566103423978
        return jnp.asarray(z * std, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def make_adam(opt, num_steps: int):
    """The Adam of config.<optimizer> `opt` (lr, b1, b2, schedule) over `num_steps` updates."""
    return supervised.adam(opt.lr, opt.b1, opt.b2, schedule=opt.get("schedule", "constant"),
                           num_steps=num_steps)


def critic_adam(opt, num_steps: int, n_critic: int):
    """A critic's Adam: `make_adam` over its `num_steps * n_critic` updates (it takes
    `n_critic` per step), so that a cosine schedule spans the run, not its first 1/n_critic."""
    return make_adam(opt, num_steps * n_critic)


def _optimizer(config):
    """The denoiser's Adam; bilateral's range sigmas get `optimizer.lr_range`, as
    ldct-benchmark gives them its `lr_r`."""
    opt = config.optimizer
    if config.model != "bilateral":
        return make_adam(opt, config.num_steps)
    return supervised.adam_groups({bilateral.SPATIAL: opt.lr, bilateral.RANGE: opt.lr_range},
                                  bilateral.param_groups, opt.b1, opt.b2,
                                  schedule=opt.get("schedule", "constant"),
                                  num_steps=config.num_steps)


def _keys(seed: int) -> dict[str, jax.Array]:
    root = jax.random.PRNGKey(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(("model", "critic", "vgg"))}


def perceptual_vgg(config) -> Optional[vgg_weights.VGG]:
    """WGAN-VGG's perceptual network as `config.vgg` asks for it (None for the other models).
    `jobs.train` loads it before the data, so that a wrong weight file fails first."""
    if config.model in SUPERVISED:
        return None
    keys = _keys(config.seed)
    return vgg_weights.from_config(config.vgg.weights, config.vgg.arch, keys["vgg"],
                                   imagenet_norm=config.vgg.imagenet_norm)


def build(config, mesh, train_scans: Sequence[Scan],
          vgg: Optional[vgg_weights.VGG] = None) -> Trainer:
    """The trainer `config.model` names, on `mesh`, sampling from `train_scans`; WGAN-VGG's
    perceptual network is `vgg`, or else `perceptual_vgg(config)`."""
    keys = _keys(config.seed)
    model_config = dict(config.model_config)
    spec = models.spec(config.model, **model_config)
    arch = models.architecture(config.model)
    denoiser = models.Denoiser(spec, _init_params(spec.module, keys["model"], arch.init_size,
                                                  arch.flax_default_init))
    optimizer = _optimizer(config)
    common = dict(batch_size=config.batch_size, patch_size=config.patch_size, seed=config.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    if config.model in SUPERVISED:
        state = supervised.init_state(denoiser, optimizer, config.seed)
        jitted = parallel.data_parallel_step(supervised.make_step(spec, optimizer), mesh)
        return Trainer(denoiser, parallel.replicate(state, mesh), jitted,
                       lambda step: supervised.local_batch(train_scans, step, **common),
                       config.batch_size, {})

    copt = config.critic_optimizer
    critic_optimizer = critic_adam(copt, config.num_steps, config.wgan.n_critic)
    wgan_vgg.critic_output_size(config.patch_size)
    critic = wgan_vgg.Critic()
    critic_params = _init_params(critic, keys["critic"], config.patch_size)
    vgg = vgg or perceptual_vgg(config)
    settings = wgan.WGANSettings(n_critic=config.wgan.n_critic, gp_weight=config.wgan.gp_weight,
                                 perceptual_weight=config.wgan.perceptual_weight,
                                 tap=config.vgg.tap,
                                 mse_weight=config.wgan.get("mse_weight", 0.0))
    state = wgan.init_state(denoiser, critic_params, optimizer, critic_optimizer, config.seed)
    step_fn = wgan.make_step(spec, critic, vgg, optimizer, critic_optimizer, settings)
    jitted = parallel.data_parallel_step(step_fn, mesh, extra_args=1)
    vgg_params = parallel.replicate(vgg.params, mesh)
    n = settings.n_critic
    return Trainer(denoiser, parallel.replicate(state, mesh),
                   lambda state, batch: jitted(state, batch, vgg_params),
                   lambda step: wgan.local_batch(train_scans, step, n_critic=n, **common),
                   config.batch_size * n, {"vgg": vgg.describe()})
