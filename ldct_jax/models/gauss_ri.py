"""Gauss + RI: a Gaussian filter whose output is forced to 0 in the central square.

Its invariance is known exactly: any perturbation deeper than the kernel radius inside the
square leaves the output unchanged. This makes it the ground truth for the invariance search.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def kernel_radius(sigma: float, truncate: float) -> int:
    """round(truncate * sigma), as scipy.ndimage rounds it."""
    return int(truncate * sigma + 0.5)


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian with radius `kernel_radius(sigma, truncate)`, as scipy.ndimage
    uses."""
    radius = kernel_radius(sigma, truncate)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


_EDGE_OFFSET = {"symmetric": 0, "reflect": 1}  # jnp.pad modes: does the mirror skip the edge?


def _pad_axis(x, axis: int, before: int, after: int, mode: str = "constant"):
    """`x` padded along `axis` only, by `jnp.pad`'s `mode` (zeros by default)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return jnp.pad(x, widths, mode=mode)


def _correlate_valid(x, k: jax.Array, axis: int):
    """`x` correlated with `k` along `axis` where every tap lands inside `x` (len(k) - 1 shorter):
    a sum of shifted slices (exact, and as fast as XLA:CPU runs anything on 1 channel)."""
    n = x.shape[axis] - k.shape[0] + 1
    return sum(k[i] * lax.slice_in_dim(x, i, i + n, axis=axis) for i in range(k.shape[0]))


def _filter_axis(x, k: jax.Array, axis: int, mode: str):
    """`x` filtered along `axis` by the odd-length kernel `k`, with `mode` padding."""
    r = (k.shape[0] - 1) // 2
    return _correlate_valid(_pad_axis(x, axis, r, r, mode), k, axis)


def _filter_axis_adjoint(g, k: jax.Array, axis: int, mode: str):
    """The adjoint of `_filter_axis` for a symmetric `k`: the filter of `g` padded with zeros,
    then the padding's mirrored edge rows folded back onto the rows they copied."""
    r, n, s = (k.shape[0] - 1) // 2, g.shape[axis], _EDGE_OFFSET[mode]
    g = _correlate_valid(_pad_axis(g, axis, 2 * r, 2 * r), k, axis)  # n + 2r: output and padding
    low, high = (jnp.flip(lax.slice_in_dim(g, a, a + r, axis=axis), axis) for a in (0, n + r))
    return (lax.slice_in_dim(g, r, r + n, axis=axis) + _pad_axis(low, axis, s, n - r - s)
            + _pad_axis(high, axis, n - r - s, s))


def separable_filter(x, k: np.ndarray, mode: str):
    """`[B, H, W, C]` filtered along H and W by the symmetric odd-length 1-D kernel `k`.

    Args:
      x: the images.
      k: the kernel, `[2r + 1]`, symmetric.
      mode: `jnp.pad`'s mode for the r pixels added at each edge: 'symmetric' or 'reflect'.

    Returns:
      `[B, H, W, C]`, the same size as `x`.
    """
    if mode not in _EDGE_OFFSET or not np.array_equal(k, k[::-1]) or k.shape[0] % 2 == 0:
        raise ValueError(f"separable_filter: mode {mode!r} (expected one of "
                         f"{tuple(_EDGE_OFFSET)}) with a symmetric odd-length kernel, "
                         f"got {k.shape[0]} taps")
    r, s = (k.shape[0] - 1) // 2, _EDGE_OFFSET[mode]
    if min(x.shape[1:3]) < r + s:  # the padding would mirror more than once
        raise ValueError(f"separable_filter: images of {x.shape[1]}x{x.shape[2]} px are "
                         f"smaller than the {k.shape[0]}-tap kernel's {mode!r} padding "
                         f"needs ({r + s} px)")
    k = jnp.asarray(k, x.dtype)

    def forward(x):
        return _filter_axis(_filter_axis(x, k, 1, mode), k, 2, mode)

    def adjoint(g):
        return _filter_axis_adjoint(_filter_axis_adjoint(g, k, 2, mode), k, 1, mode)

    # `custom_linear_solve` is JAX's way to give a linear map its own transpose. Transposing
    # the slices by autodiff gives one zero-padded array per tap, which XLA:CPU sums 9x slower
    # than this adjoint (`benchmarks/bench_blur.py`: 3 x 512 x 512, value and gradient).
    # `solve` is the map; `matvec` is only differentiated when it closes over traced values,
    # and the identity does not.
    return lax.custom_linear_solve(lambda v: v, x, lambda _, b: forward(b),
                                   lambda _, g: adjoint(g))


def central_square(height: int, width: int, size: int) -> tuple[slice, slice]:
    """Row and column slices of the `size` x `size` square at the centre of an image."""
    top, left = (height - size) // 2, (width - size) // 2
    return slice(top, top + size), slice(left, left + size)


class GaussRI(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]`: separable Gaussian (reflect padding), square zeroed.

    No params. Pixels more than `radius` (`kernel_radius`) inside the square have exactly zero
    influence on the output.
    """

    sigma: float = 1.0
    truncate: float = 4.0
    square: int = 30

    @property
    def radius(self) -> int:
        return kernel_radius(self.sigma, self.truncate)

    @nn.compact
    def __call__(self, x):
        # 'symmetric' repeats the edge pixel: scipy.ndimage's mode='reflect'.
        x = separable_filter(x, gaussian_kernel(self.sigma, self.truncate), "symmetric")
        rows, cols = central_square(x.shape[1], x.shape[2], self.square)
        return x.at[:, rows, cols, :].set(0.0)
