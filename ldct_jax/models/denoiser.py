"""A denoiser is a hashable spec (architecture, module, normalisation) plus its params.

    d = ldct_jax.models.create("cnn10", jax.random.key(0))    # Denoiser(spec, params)
    y = d(x)                                   # x: [H, W] or [B, H, W] HU -> HU, same shape
    y = d.spec.apply(d.params, x)              # one compiled program per spec and shape
    jax.grad(lambda x: jnp.sum(d.spec.apply(d.params, x)))(x)

The spec is what a program depends on and the params are data, so one compiled function serves
every checkpoint of an architecture (as Flax's `TrainState.apply_fn` and `params`). Inside
traced code (losses, steps) use the spec's `apply_net` in network units.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import fastpath, parallel

Params = Any


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """What a denoiser computes, without its params: hashable, a static argument of `jax.jit`.

    Attributes:
      name: architecture name, a key of `ldct_jax.models.ARCHITECTURES`.
      module: the Flax module; it works in network units on `[B, H, W, 1]`.
      shift, scale: normalisation; network units are `(hu - shift) / scale`.
    """

    name: str
    module: nn.Module
    shift: float
    scale: float

    @property
    def config(self) -> dict[str, Any]:
        """The module's constructor arguments (every field, so that later changes of a default
        cannot alter a saved model)."""
        return {f.name: getattr(self.module, f.name) for f in dataclasses.fields(self.module)
                if f.init and f.name not in ("parent", "name")}

    def to_net(self, hu):
        """HU -> network units."""
        return (hu - self.shift) / self.scale

    def from_net(self, y):
        """Network units -> HU."""
        return y * self.scale + self.shift

    def apply_net(self, params: Params, x_net):
        """The network on `[..., H, W]` arrays in network units (no normalisation); not jitted,
        for use inside traced code."""
        lead = x_net.shape[:-2]
        flat = x_net.reshape((-1,) + x_net.shape[-2:])[..., None]
        y = self.module.apply({"params": params}, flat)[..., 0]
        return y.reshape(lead + y.shape[-2:])

    def apply(self, params: Params, x) -> jax.Array:
        """Denoises `x` (HU, `[H, W]` or `[B, H, W]`) with `params`; returns HU, same shape.

        Jitted once per spec and input shape; works under jit, vmap, grad, jvp and linearize.
        """
        x = jnp.asarray(x, jnp.float32)
        if x.ndim not in (2, 3):
            raise ValueError(f"{self.name}: expected an image [H, W] or a batch [B, H, W] in HU, "
                             f"got shape {x.shape}")
        # Inside `fastpath.convolutions` the program differs (reverse mode only): cached apart.
        return _apply(self, fastpath.active(), params, x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(spec: DenoiserSpec, fast: bool, params: Params, x: jax.Array) -> jax.Array:
    return spec.from_net(spec.apply_net(params, spec.to_net(x)))


@flax.struct.dataclass
class Denoiser:
    """A spec with its params; a pytree whose leaves are the params.

    `d(x)` denoises `[H, W]` or `[B, H, W]` HU images.
    """

    spec: DenoiserSpec = flax.struct.field(pytree_node=False)
    params: Params

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, x) -> jax.Array:
        return self.spec.apply(self.params, x)


def denoise(spec: DenoiserSpec, params: Params, images: Any, *, mesh: Optional[Any] = None,
            batch_size: int = 8) -> np.ndarray:
    """`spec.apply` over many whole slices, a batch at a time, sharded over `mesh`.

    Every batch is padded to the same size (a multiple of the device count), so one compiled
    program serves all of them. On several hosts every process passes all `images` and gets all
    outputs.

    Args:
      spec, params: the denoiser.
      images: `[N, H, W]` HU.
      mesh: device mesh (default: all devices).
      batch_size: slices per call, rounded up to a multiple of the device count.

    Returns:
      `[N, H, W]` float32 HU, numpy.
    """
    images = np.asarray(images, np.float32)
    mesh = parallel.make_mesh() if mesh is None else mesh
    size = parallel.padded_size(max(batch_size, 1), mesh)
    params = parallel.replicate(params, mesh)
    out = []
    for lo in range(0, len(images), size):
        x = images[lo:lo + size]
        y = spec.apply(params, parallel.shard_rows(parallel.pad_rows(x, size), mesh))
        out.append(parallel.gather_rows(y, len(x)))
    return np.concatenate(out) if out else np.zeros_like(images)
