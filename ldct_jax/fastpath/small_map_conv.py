"""A stride-1 2-D convolution on feature maps smaller than its kernel, as one matmul.

On such maps (VGG's block 5 on patches under 48 px: 2x2 maps under a 3x3 kernel) XLA swaps the
convolution's operands and adds window reversal, which XLA:CPU runs in a naive loop; padding
explicitly does not help, since XLA folds the pad back into the convolution. A WGAN-VGG step at
patch 32 took twice PyTorch's time. Here the convolution is the matmul of the kernel with the
kh kw shifted copies of the padded input instead: the same values, and ordinary derivatives
(forward and reverse mode).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp


def applies(height: int, width: int, kernel_size: Sequence[int]) -> bool:
    """Whether a `height` x `width` map is smaller than the kernel (where this form is used)."""
    return min(height, width) < max(kernel_size)


def conv(x: jax.Array, w: jax.Array, pads: Sequence[tuple[int, int]],
         precision: Any = None) -> jax.Array:
    """`lax.conv_general_dilated(x, w, (1, 1), pads)` for NHWC `x` and HWIO `w`.

    Args:
      x: `[B, H, W, Cin]`.
      w: `[kh, kw, Cin, Cout]`.
      pads: `((top, bottom), (left, right))`, non-negative.
      precision: of the matmul.
    """
    kh, kw, cin, cout = w.shape
    (top, bottom), (left, right) = pads
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    height = padded.shape[1] - kh + 1
    width = padded.shape[2] - kw + 1
    columns = jnp.concatenate([padded[:, i:i + height, j:j + width]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.matmul(columns, w.reshape(kh * kw * cin, cout), precision=precision)
