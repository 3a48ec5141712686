"""A 2-D convolution whose second derivatives run fast on XLA:CPU, for the WGAN-GP critic.

The gradient penalty differentiates the critic's input gradient with respect to its weights.
Plain autodiff writes that second-order weight gradient as a convolution whose "kernel" (the
critic's input-sized cotangent) is larger than its "input"; XLA's algebraic simplifier then
swaps the operands and adds window reversal, and XLA:CPU runs window-reversed convolutions in a
naive loop instead of Eigen: 5-10x slower (1.7 s instead of 0.3 s per penalty gradient at
batch 8, 64x64 on 2 cores; `python -m benchmarks.bench_train` shows the whole step).

`conv` gives the same values with a custom VJP that writes every derivative, of any order, as
an ordinary convolution or a first-order weight gradient. The identity it uses: the input
gradient `J_w^T g` is linear in `(g, w)`, and `<c, J_w^T g> = <J_w c, g>`, so its cotangents are
`conv(c, w)` for `g` and the first-order weight gradient of `conv(c, .)` at `g` for `w`.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
from jax import lax

from ldct_jax.fastpath.col2im_conv import NHWC


def _bilinear(fn: Callable, first_grad: Callable, second_grad: Callable) -> Callable:
    """`fn(a, b)`, linear in each argument, with the VJP `(first_grad(c, b), second_grad(a, c))`
    for the cotangent `c`: the derivative rules of a bilinear map, each written as a
    function that can carry custom rules of its own."""
    f = jax.custom_vjp(fn)
    f.defvjp(lambda a, b: (fn(a, b), (a, b)),
             lambda res, c: (first_grad(c, res[1]), second_grad(res[0], c)))
    return f


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int] = (1, 1),
         padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """`lax.conv_general_dilated(x, w, strides, padding)` for NHWC `x` and HWIO `w`.

    Same values and derivatives as the lax call; only how the derivatives are written differs.
    Reverse mode only (`jax.jvp` through it raises).
    """
    linear = functools.partial(lax.conv_general_dilated, window_strides=tuple(strides),
                               padding=padding, dimension_numbers=NHWC)
    x_spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    w_spec = jax.ShapeDtypeStruct(w.shape, w.dtype)

    def weight_grad(inputs, g):
        return jax.linear_transpose(lambda v: linear(inputs, v), w_spec)(g)[0]

    def transposed(g, v):
        return jax.linear_transpose(lambda u: linear(u, v), x_spec)(g)[0]

    # The convolution (u, v) -> conv(u, v) and its input gradient (g, v) -> J_v^T g are both
    # bilinear; each one's derivatives are the other one and the first-order weight gradient.
    apply = _bilinear(linear, lambda g, v: input_grad(g, v), weight_grad)
    input_grad = _bilinear(transposed, lambda c, v: apply(c, v), lambda g, c: weight_grad(c, g))
    return apply(x, w)
