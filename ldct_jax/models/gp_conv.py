"""A 2-D convolution whose second derivatives run fast on XLA:CPU, for the WGAN-GP critic.

The gradient penalty differentiates the critic's input gradient with respect to its weights.
Plain autodiff writes that second-order weight gradient as a convolution whose "kernel" (the
critic's input-sized cotangent) is larger than its "input"; XLA's algebraic simplifier then
swaps the operands and adds window reversal, and XLA:CPU runs window-reversed convolutions in a
naive loop instead of Eigen: 5-10x slower (1.7 s instead of 0.3 s per penalty gradient at
batch 8, 64x64 on 2 cores; `python benchmarks/bench_train.py` shows the whole step).

`conv` gives the same values with a custom VJP that writes every derivative, of any order, as
an ordinary convolution or a first-order weight gradient. The identity it uses: the input
gradient `J_w^T g` is linear in `(g, w)`, and `<c, J_w^T g> = <J_w c, g>`, so its cotangents are
`conv(c, w)` for `g` and the first-order weight gradient of `conv(c, .)` at `g` for `w`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
from jax import lax

from ldct_jax.models import conv_params



def conv(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
         padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """`lax.conv_general_dilated(x, w, strides, padding)` for NHWC `x` and HWIO `w`.

    Same values and derivatives as the lax call; only how the derivatives are written differs.
    Reverse mode only (`jax.jvp` through it raises).
    """
    linear = functools.partial(lax.conv_general_dilated, window_strides=tuple(strides),
                               padding=padding, dimension_numbers=conv_params.NHWC)
    x_spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    w_spec = jax.ShapeDtypeStruct(w.shape, w.dtype)

    def weight_grad(inputs, g):
        return jax.linear_transpose(lambda v: linear(inputs, v), w_spec)(g)[0]

    @jax.custom_vjp
    def input_grad(g, v):
        return jax.linear_transpose(lambda u: linear(u, v), x_spec)(g)[0]

    def input_grad_fwd(g, v):
        return input_grad(g, v), (g, v)

    def input_grad_bwd(res, c):
        g, v = res
        return apply(c, v), weight_grad(c, g)

    input_grad.defvjp(input_grad_fwd, input_grad_bwd)

    @jax.custom_vjp
    def apply(u, v):
        return linear(u, v)

    def apply_fwd(u, v):
        return linear(u, v), (u, v)

    def apply_bwd(res, g):
        u, v = res
        return input_grad(g, v), weight_grad(u, g)

    apply.defvjp(apply_fwd, apply_bwd)
    return apply(x, w)


class Conv(nn.Module):
    """`nn.Conv` for NHWC images through `conv`: same params (`kernel` HWIO, `bias`), same init,
    same dtype promotion."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel, bias = conv_params.declare(self, x, self.features, self.kernel_size)
        return conv(x, kernel, self.strides, self.padding) + bias
