"""Trainable bilateral filters (Wagner et al. 2022, "Ultralow-parameter denoising: trainable
bilateral filter layers in computed tomography"), as ldct-benchmark's `bilateral` method
builds them: three filters in a row, each with its own spatial sigmas and range sigma.

Each filter is the `BilateralFilter3d` layer of the `bilateral_filter_layer` package applied to
a slice as a volume of depth 1. For each pixel i and neighbour k in the window,

    w_ik = exp(-dx^2 / 2 sigma_x^2) exp(-dy^2 / 2 sigma_y^2) exp(-(x_i - x_k)^2 / 2 sigma_r^2)
    y_i = sum_k w_ik x_k / sum_k w_ik

with dx the offset along H and dy along W (PyTorch's `(N, 1, H, W, 1)` is the layer's
`[B, C, X, Y, Z]`), sigma_r its `color_sigma`. The window has the odd side
`max(ceil(5 sigma) | 1, 5)` per axis, so it changes with sigma; neighbours outside the image are
left out of both sums (no padding). The range kernel acts on the network units. Along the depth
only the centre lies inside a single slice, so sigma_z has no effect here; it is kept so that
ldct-benchmark's checkpoints import whole.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Each filter's parameters, named as in `BilateralFilter3d`'s state dict.
SIGMAS = ("sigma_x", "sigma_y", "sigma_z", "color_sigma")
# The groups of `param_groups`: ldct-benchmark trains the range sigmas with a learning rate of
# their own (its `lr_r`), the spatial ones with the common one.
SPATIAL, RANGE = "spatial", "range"


def window_radius(sigma: jax.Array) -> jax.Array:
    """Half the reference kernel's window side `max(ceil(5 sigma) | 1, 5)`, as int32.

    Computed in float32 as the kernel does, so that the sides agree at every sigma.
    """
    side = jnp.ceil(5.0 * jnp.asarray(sigma, jnp.float32)).astype(jnp.int32)
    return jnp.maximum(jnp.bitwise_or(side, 1), 5) // 2


def sigma_limit(max_radius: int) -> float:
    """The spatial sigma up to which windows fit in `max_radius`: `(2 max_radius + 1) / 5`
    (to float32 rounding)."""
    return (2 * max_radius + 1) / 5


def bilateral_filter(x: jax.Array, sigma_x: jax.Array, sigma_y: jax.Array,
                     color_sigma: jax.Array, max_radius: int) -> jax.Array:
    """One bilateral filter on `[B, H, W]` images (see the module docstring).

    The offsets run over a static `(2 max_radius + 1)^2` square; those outside the
    sigma-defined window get weight 0, which gives the reference kernel's sums exactly while
    the shapes stay static. Differentiable in `x` and the sigmas (the window side itself is
    piecewise constant in sigma).

    Args:
      x: `[B, H, W]` network units.
      sigma_x, sigma_y: spatial sigmas along H and W (pixels).
      color_sigma: the range sigma (network units).
      max_radius: the largest half window; a sigma above `sigma_limit(max_radius)` has its
        window clipped to this radius.

    Returns:
      The filtered `[B, H, W]`.
    """
    b, h, w = x.shape
    r = max_radius
    n = 2 * r + 1
    padded = jnp.pad(x, ((0, 0), (r, r), (r, r)))
    inside = jnp.pad(jnp.ones((h, w), x.dtype), r)
    d = jnp.arange(-r, r + 1)

    def spatial(sigma):
        reach = jnp.minimum(window_radius(sigma), r)
        return jnp.where(jnp.abs(d) <= reach, jnp.exp(d * d * (-1.0 / (2 * sigma * sigma))),
                         0.0).astype(x.dtype)

    kernel_x, kernel_y = spatial(sigma_x), spatial(sigma_y)
    color = -1.0 / (2 * color_sigma * color_sigma)

    # A scan over the offsets keeps the program small: unrolled, XLA's compile time grows
    # with the square of the window.
    def offset(sums, k):
        values, weights = sums
        i, j = k // n, k % n
        neighbour = lax.dynamic_slice(padded, (0, i, j), (b, h, w))
        weight = (kernel_x[i] * kernel_y[j] * lax.dynamic_slice(inside, (i, j), (h, w))
                  * jnp.exp((x - neighbour) ** 2 * color))
        return (values + weight * neighbour, weights + weight), None

    zeros = jnp.zeros_like(x)
    (values, weights), _ = lax.scan(offset, (zeros, zeros), jnp.arange(n * n))
    return values / weights  # >= the centre's weight, 1


def param_groups(params: Any) -> Any:
    """The tree of `params` with every leaf replaced by its group: `RANGE` for a filter's range
    sigma (`color_sigma`), `SPATIAL` for the others (ldct-benchmark's `bilateral` trainer
    splits them by whether "color" is in the name). An `optax.partition` label function."""
    def group(path, _):
        return RANGE if getattr(path[-1], "key", None) == "color_sigma" else SPATIAL
    return jax.tree_util.tree_map_with_path(group, params)


class BilateralFilter(nn.Module):
    """One trainable bilateral filter, `[B, H, W, 1]` -> `[B, H, W, 1]` in network units.

    Initialised as ldct-benchmark does: every spatial sigma `sigma_xyz_init`, the range sigma
    `sigma_r_init`.
    """

    max_radius: int = 7
    sigma_xyz_init: float = 0.5
    sigma_r_init: float = 0.01

    @nn.compact
    def __call__(self, x):
        def sigma(name, value):
            return self.param(name, nn.initializers.constant(value), (), jnp.float32)

        sigma_x = sigma("sigma_x", self.sigma_xyz_init)
        sigma_y = sigma("sigma_y", self.sigma_xyz_init)
        sigma("sigma_z", self.sigma_xyz_init)  # no effect on a single slice
        color_sigma = sigma("color_sigma", self.sigma_r_init)
        return bilateral_filter(x[..., 0], sigma_x, sigma_y, color_sigma,
                                self.max_radius)[..., None]


class Bilateral(nn.Module):
    """ldct-benchmark's `bilateral`: three `BilateralFilter`s in a row, `[B, H, W, 1]` ->
    `[B, H, W, 1]` in network units (12 parameters).

    `max_radius` bounds every window: it covers spatial sigmas up to `sigma_limit(max_radius)`
    (3.0 pixels for the default 7), beyond which a window is clipped and the filter no longer
    equals the reference kernel. `ldct_jax.models.ldctbench` sets it from a checkpoint's
    sigmas, so an imported model is exact; for training, choose it above the sigmas expected.

    The initial sigmas default to those ldct-benchmark's training starts from: its
    configs/bilateral.yaml names `sigma_xyz_init` 0.4865 and `sigma_r_init` 0.9527, but its
    `Model` only warns about them and builds its filters from its own defaults, 0.5 and 0.01.
    """

    max_radius: int = 7
    sigma_xyz_init: float = 0.5
    sigma_r_init: float = 0.01

    @nn.compact
    def __call__(self, x):
        for i in range(3):
            x = BilateralFilter(self.max_radius, self.sigma_xyz_init, self.sigma_r_init,
                                name=f"filter{i + 1}")(x)
        return x
