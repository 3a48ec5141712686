"""The registry of denoiser architectures: name -> Flax module and normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ldct_jax import ct
from ldct_jax.models import transct
from ldct_jax.models.bilateral import Bilateral
from ldct_jax.models.cnn10 import CNN10
from ldct_jax.models.denoiser import Denoiser, DenoiserSpec
from ldct_jax.models.gauss_ri import GaussRI
from ldct_jax.models.qae import QAE
from ldct_jax.models.redcnn import REDCNN
from ldct_jax.models.resnet import ResNet
from ldct_jax.models.wgan_vgg import Generator


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    Attributes:
      module: the Flax module's class; its constructor arguments are the module config.
      shift, scale: normalisation; network units are `(hu - shift) / scale`.
      init_size: the side of the square input the params are initialised (and their shapes
        found) on; any size for the convolutional networks, the only size for a fixed one.
      fixed_size: the network takes `init_size` x `init_size` images only (TransCT).
      flax_default_init: every param is a Conv/Dense kernel or bias with Flax's default
        initialisers, which the trainers then draw with numpy (`jobs.trainers`); modules with
        their own initialisers (Q-AE's quadratic terms, BatchNorm) are initialised by Flax.
      min_size: the smallest image side the network takes (unpadded convolutions shrink it).
    """

    module: Callable[..., Any]
    shift: float
    scale: float
    init_size: int = 32
    fixed_size: bool = False
    flax_default_init: bool = True
    min_size: int = 1


# The networks use ldct-benchmark's normalisation, so imported and own weights agree.
# gauss_ri has shift 0 so that its zeroed square is 0 HU.
ARCHITECTURES: dict[str, Architecture] = {
    "cnn10": Architecture(CNN10, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "wgan_vgg": Architecture(Generator, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    # RED-CNN's five unpadded 5x5 convolutions take 4 px each.
    "redcnn": Architecture(REDCNN, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE, min_size=21),
    "dugan": Architecture(REDCNN, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE,  # its generator
                          min_size=21),
    "qae": Architecture(QAE, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE, flax_default_init=False,
                        min_size=3),
    "resnet": Architecture(ResNet, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE,
                           flax_default_init=False),
    "bilateral": Architecture(Bilateral, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE,
                              flax_default_init=False),
    "gauss_ri": Architecture(GaussRI, 0.0, ct.LDCTBENCH_SCALE),
    "transct": Architecture(transct.TransCT, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE,
                            transct.SIZE, fixed_size=True, flax_default_init=False),
}

# Other names of an architecture: ldct-benchmark's method names where they differ from ours.
ALIASES = {"wganvgg": "wgan_vgg"}


def canonical(name: str) -> str:
    """The registered name of `name` (an alias such as 'wganvgg' -> 'wgan_vgg')."""
    name = ALIASES.get(name, name)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown denoiser {name!r}; expected one of "
                         f"{sorted([*ARCHITECTURES, *ALIASES])}")
    return name


def architecture(name: str) -> Architecture:
    return ARCHITECTURES[canonical(name)]


def check_input_size(name: str, shape: tuple[int, ...], what: str = "images") -> None:
    """A ValueError naming `what` when images of `shape` (`[..., H, W]`) are too small for
    architecture `name`."""
    arch = architecture(name)
    h, w = shape[-2:]
    if arch.fixed_size and (h, w) != (arch.init_size, arch.init_size):
        raise ValueError(f"{what} of {h}x{w} px: {canonical(name)} takes {arch.init_size}x"
                         f"{arch.init_size} images only")
    need = arch.min_size
    if min(h, w) < need:
        raise ValueError(f"{what} of {h}x{w} px are smaller than {canonical(name)} takes "
                         f"({need}x{need} px at least)")


def spec(name: str, **config) -> DenoiserSpec:
    """The spec of architecture `name` (or an alias) with module config `config` (e.g.
    `features`)."""
    name = canonical(name)
    arch = ARCHITECTURES[name]
    return DenoiserSpec(name=name, module=arch.module(**config), shift=arch.shift,
                        scale=arch.scale)


def init_input(name: str) -> jax.ShapeDtypeStruct:
    """The `[1, init_size, init_size, 1]` float32 input that architecture `name`'s params are
    initialised on."""
    size = architecture(name).init_size
    return jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)


def param_shapes(s: DenoiserSpec) -> dict[str, tuple[int, ...]]:
    """Flat `'layer/kind'` param shapes of `s` (nothing is computed)."""
    import flax.traverse_util
    shapes = jax.eval_shape(s.module.init, jax.random.key(0), init_input(s.name))
    params = shapes.get("params", {})
    return {k: tuple(v.shape) for k, v in
            flax.traverse_util.flatten_dict(params, sep="/").items()} if params else {}


def build(name: str, params, **config) -> Denoiser:
    """A denoiser of architecture `name` with the given params and module config."""
    return Denoiser(spec(name, **config), params)


def create(name: str, key: jax.Array, **config) -> Denoiser:
    """A denoiser of architecture `name` with fresh params drawn from `key`.

    Args:
      name: a key of `ARCHITECTURES`: 'cnn10', 'wgan_vgg' (the generator; also 'wganvgg'),
        'redcnn', 'dugan' (its generator, a RED-CNN), 'qae', 'resnet', 'transct', 'bilateral'
        or 'gauss_ri'.
      key: a PRNG key.
      **config: constructor arguments of the Flax module (e.g. `features`).
    """
    s = spec(name, **config)
    # Jitted: Flax's eager init runs every initialiser op by op (seconds for cnn10 on a CPU).
    shape = init_input(name)
    variables = jax.jit(s.module.init)(key, jnp.zeros(shape.shape, shape.dtype))
    return Denoiser(s, variables.get("params", {}))
