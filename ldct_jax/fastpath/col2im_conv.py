"""A stride-1 2-D convolution whose input gradient runs as one matmul on XLA:CPU.

CNN-10's first layer maps one channel to 64 through a 9x9 kernel. XLA:CPU runs the transpose
of that convolution (the input gradient, 64 channels -> 1) at about 14 GFLOP/s, a fifth of
the machine's matmul rate, and the invariance search, which differentiates the denoiser with
respect to its input, spends over a quarter of its time there.

`conv` gives the same values as `lax.conv_general_dilated` with a custom VJP whose input
gradient, on CPU, is written the col2im way: the matmul `g [.., Cout] @ W^T [Cout, kh kw Cin]`
followed by the sum of the kh kw shifted `[.., Cin]` slices of its output. One CNN-10 search
step at 512x512 takes 0.59 s instead of 0.70 s (batch 1, 2 cores; `python -m
benchmarks.bench_search`). On other platforms the input gradient stays lax's; the weight
gradient is lax's everywhere, and whichever one a program does not use is compiled away.

The matmul output has kh kw Cin channels per pixel (81 for conv1: about the memory of one of
CNN-10's 64-channel activations), so this pays off only for a small Cin; for CNN-10's conv3
(32 -> 1, 5x5) it is no faster than lax.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x: jax.Array, w: jax.Array, pads: Pads) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC)


def col2im_input_grad(g: jax.Array, w: jax.Array, pads: Pads) -> jax.Array:
    """The input gradient of `_lax_conv(x, w, pads)` for the output cotangent `g`.

    Args:
      g: `[B, Ho, Wo, Cout]`.
      w: `[kh, kw, Cin, Cout]`.
      pads: `((top, bottom), (left, right))`, non-negative.

    Returns:
      `[B, Ho + kh - 1 - top - bottom, Wo + kw - 1 - left - right, Cin]`.
    """
    kh, kw, cin, cout = w.shape
    (top, bottom), (left, right) = pads
    _, ho, wo, _ = g.shape
    height, width = ho + kh - 1 - top - bottom, wo + kw - 1 - left - right
    # x[h, w] receives (g @ W^T)[h + top - i, w + left - j, (i, j)] for every tap (i, j).
    # Padding g rather than the columns keeps the slices in bounds, so that XLA sums them in
    # one loop fusion straight from the matmul's output.
    g = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (kh - 1 - top, kh - 1 - bottom, 0),
                                            (kw - 1 - left, kw - 1 - right, 0), (0, 0, 0)))
    # Summed in float32 (81 terms for conv1), so that bfloat16 keeps lax's accuracy.
    columns = jnp.matmul(g, w.reshape(kh * kw * cin, cout).T, preferred_element_type=jnp.float32)
    columns = columns.reshape(*g.shape[:3], kh, kw, cin)
    x_grad = sum(columns[:, kh - 1 - i:kh - 1 - i + height, kw - 1 - j:kw - 1 - j + width, i, j]
                 for i in range(kh) for j in range(kw))
    return x_grad.astype(g.dtype)


def _lax_input_grad(g: jax.Array, w: jax.Array, x: jax.Array, pads: Pads):
    # x itself, not a ShapeDtypeStruct: inside shard_map its type carries the mapped axes.
    return jax.linear_transpose(lambda u: _lax_conv(u, w, pads), x)(g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, w: jax.Array, pads: Pads) -> jax.Array:
    return _lax_conv(x, w, pads)


def _conv_fwd(x, w, pads):
    return _lax_conv(x, w, pads), (x, w)


def _conv_bwd(pads, residuals, g):
    x, w = residuals
    dx = lax.platform_dependent(
        g, w, x, cpu=lambda g, w, x: col2im_input_grad(g, w, pads),
        default=functools.partial(_lax_input_grad, pads=pads))
    dw = jax.linear_transpose(lambda v: _lax_conv(x, v, pads), w)(g)[0]
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x: jax.Array, w: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """`lax.conv_general_dilated(x, w, (1, 1), pads)` for NHWC `x` and HWIO `w`.

    Same values and reverse-mode derivatives as the lax call (`jax.jvp` through it raises).

    Raises:
      ValueError: for a negative padding.
    """
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        raise ValueError(f"col2im_conv.conv needs two non-negative (low, high) pads, got {pads!r}")
    return _conv(x, w, pads)
