"""The denoiser: a Flax module, its params and its normalisation, used in HU."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

Params = Any


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A denoiser that maps HU images to HU images.

    `d(x)` denoises `[H, W]` or `[B, H, W]` float32 HU arrays. `d.apply(params, x)` is the pure
    form: params are an argument, never closed over, so one jitted function serves every
    checkpoint, and jit/vmap/grad work over inputs and params alike.

    Attributes:
      name: architecture name, a key of `ldct_jax.models.ARCHITECTURES`.
      module: the Flax module; it works in network units on `[B, H, W, 1]`.
      params: the module's params (the `'params'` collection).
      shift, scale: normalisation; network units are `(hu - shift) / scale`.
      config: the module's constructor arguments (JSON-serialisable), stored by `save`.
    """

    name: str
    module: nn.Module
    params: Params
    shift: float
    scale: float
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_net(self, hu):
        """HU -> network units."""
        return (hu - self.shift) / self.scale

    def from_net(self, y):
        """Network units -> HU."""
        return y * self.scale + self.shift

    def apply_net(self, params: Params, x_net):
        """The network on `[..., H, W]` arrays in network units (no normalisation)."""
        lead = x_net.shape[:-2]
        flat = x_net.reshape((-1,) + x_net.shape[-2:])[..., None]
        y = self.module.apply({"params": params}, flat)[..., 0]
        return y.reshape(lead + y.shape[-2:])

    def apply(self, params: Params, x):
        """Denoises `x` (HU, `[H, W]` or `[B, H, W]`) with `params`; returns HU, same shape."""
        x = jnp.asarray(x, jnp.float32)
        if x.ndim not in (2, 3):
            raise ValueError(f"{self.name}: expected an image [H, W] or a batch [B, H, W] in HU, "
                             f"got shape {x.shape}")
        return self.from_net(self.apply_net(params, self.to_net(x)))

    def __call__(self, x):
        return self.apply(self.params, x)

    def replace(self, **changes) -> "Denoiser":
        return dataclasses.replace(self, **changes)
