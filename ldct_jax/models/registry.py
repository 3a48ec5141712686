"""The registry of denoiser architectures: name -> Flax module and normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ldct_jax import ct
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
    module: Callable[..., Any]
    shift: float
    scale: float


# The networks use ldct-benchmark's normalisation, so imported and own weights agree.
# gauss_ri has shift 0 so that its zeroed square is 0 HU.
ARCHITECTURES: dict[str, Architecture] = {
    "cnn10": Architecture(CNN10, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "wgan_vgg": Architecture(Generator, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "redcnn": Architecture(REDCNN, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "dugan": Architecture(REDCNN, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),  # its generator
    "qae": Architecture(QAE, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "resnet": Architecture(ResNet, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "bilateral": Architecture(Bilateral, ct.LDCTBENCH_SHIFT, ct.LDCTBENCH_SCALE),
    "gauss_ri": Architecture(GaussRI, 0.0, ct.LDCTBENCH_SCALE),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown denoiser {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def spec(name: str, **config) -> DenoiserSpec:
    """The spec of architecture `name` with module config `config` (e.g. `features`)."""
    arch = architecture(name)
    return DenoiserSpec(name=name, module=arch.module(**config), shift=arch.shift,
                        scale=arch.scale)


def param_shapes(s: DenoiserSpec) -> dict[str, tuple[int, ...]]:
    """Flat `'layer/kind'` param shapes of `s` (nothing is computed)."""
    import flax.traverse_util
    shapes = jax.eval_shape(s.module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
    params = shapes.get("params", {})
    return {k: tuple(v.shape) for k, v in
            flax.traverse_util.flatten_dict(params, sep="/").items()} if params else {}


def build(name: str, params, **config) -> Denoiser:
    """A denoiser of architecture `name` with the given params and module config."""
    return Denoiser(spec(name, **config), params)


def create(name: str, key: jax.Array, **config) -> Denoiser:
    """A denoiser of architecture `name` with fresh params drawn from `key`.

    Args:
      name: a key of `ARCHITECTURES`: 'cnn10', 'wgan_vgg' (the generator), 'redcnn', 'dugan'
        (its generator, a RED-CNN), 'qae', 'resnet', 'bilateral' or 'gauss_ri'.
      key: a PRNG key.
      **config: constructor arguments of the Flax module (e.g. `features`).
    """
    s = spec(name, **config)
    # Jitted: Flax's eager init runs every initialiser op by op (seconds for cnn10 on a CPU).
    variables = jax.jit(s.module.init)(key, jnp.zeros((1, 32, 32, 1), jnp.float32))
    return Denoiser(s, variables.get("params", {}))
