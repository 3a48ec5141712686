"""Gauss + RI: a Gaussian filter whose output is forced to 0 in the central square.

Its invariance is known exactly: any perturbation deeper than the kernel radius inside the
square leaves the output unchanged. This makes it the ground truth for the invariance search.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """Normalised 1-D Gaussian with radius round(truncate * sigma), as scipy.ndimage uses."""
    radius = int(truncate * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def separable_filter(x, k: np.ndarray, mode: str):
    """`[B, H, W, C]` filtered along H and W by the symmetric odd-length 1-D kernel `k`.

    Args:
      x: the images.
      k: the kernel, `[2r + 1]`.
      mode: `jnp.pad`'s mode for the r pixels added at each edge.

    Returns:
      `[B, H, W, C]`, the same size as `x`.
    """
    k = jnp.asarray(k, x.dtype)
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
    # Sums of shifted slices: exact, and cheap to differentiate.
    h, w = x.shape[1] - 2 * r, x.shape[2] - 2 * r
    x = sum(k[i] * x[:, i:i + h, :, :] for i in range(k.shape[0]))
    return sum(k[i] * x[:, :, i:i + w, :] for i in range(k.shape[0]))


def central_square(height: int, width: int, size: int) -> tuple[slice, slice]:
    """Row and column slices of the `size` x `size` square at the centre of an image."""
    top, left = (height - size) // 2, (width - size) // 2
    return slice(top, top + size), slice(left, left + size)


class GaussRI(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]`: separable Gaussian (reflect padding), square zeroed.

    No params. Pixels more than `radius = round(truncate * sigma)` inside the square have
    exactly zero influence on the output.
    """

    sigma: float = 1.0
    truncate: float = 4.0
    square: int = 30

    @nn.compact
    def __call__(self, x):
        # 'symmetric' repeats the edge pixel: scipy.ndimage's mode='reflect'.
        x = separable_filter(x, gaussian_kernel(self.sigma, self.truncate), "symmetric")
        rows, cols = central_square(x.shape[1], x.shape[2], self.square)
        return x.at[:, rows, cols, :].set(0.0)
