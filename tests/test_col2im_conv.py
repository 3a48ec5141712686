"""col2im_conv: lax.conv_general_dilated's values and derivatives, with the input gradient
written as a matmul plus a shifted sum, which XLA:CPU runs faster for CNN-10's conv1."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ldct_jax.models import cnn10, col2im_conv
from tests import nets


def lax_conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Pads up to kernel - 1: lax's own transpose is wrong for larger ones on XLA:CPU.
CASES = [((9, 9), 1, 4, "SAME"), ((4, 3), 2, 3, "SAME"), ((3, 3), 2, 5, "VALID"),
         ((5, 2), 3, 2, ((1, 3), (0, 2))), ((3, 3), 1, 2, ((2, 0), (0, 2)))]
SLOW_FIRST = [pytest.param(*CASES[0], marks=pytest.mark.slow), *CASES[1:]]


@pytest.mark.parametrize("kernel,cin,cout,padding", CASES)
def test_col2im_input_grad_is_the_transposed_convolution(kernel, cin, cout, padding):
    x = jax.random.normal(jax.random.key(0), (2, 11, 13, cin))
    w = jax.random.normal(jax.random.key(1), (*kernel, cin, cout))
    pads = lax.padtype_to_pads(x.shape[1:3], kernel, (1, 1), padding) \
        if isinstance(padding, str) else padding
    g = jax.random.normal(jax.random.key(2), lax_conv(x, w, padding).shape)
    want = jax.linear_transpose(lambda u: lax_conv(u, w, padding), x)(g)[0]
    got = col2im_conv.col2im_input_grad(g, w, tuple(map(tuple, pads)))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("kernel,cin,cout,padding", SLOW_FIRST)  # 9x9 to second order: ~13 s
def test_values_and_derivatives_match_lax(kernel, cin, cout, padding):
    kx, kw, kr = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 10, 12, cin))
    w = jax.random.normal(kw, (*kernel, cin, cout)) * 0.3
    ours = functools.partial(col2im_conv.conv, padding=padding)
    ref = functools.partial(lax_conv, padding=padding)
    np.testing.assert_array_equal(ours(x, w), ref(x, w))
    r = jax.random.normal(kr, ref(x, w).shape)

    def loss(conv, a, b):
        return jnp.sum(r * jnp.tanh(conv(a, b)))

    def input_grad_norm(conv, a, b):  # a second derivative through the custom VJP
        return jnp.sum(jnp.square(jax.grad(loss, argnums=1)(conv, a, b)))

    for fn in (loss, input_grad_norm):
        got = jax.jit(jax.grad(functools.partial(fn, ours), argnums=(0, 1)))(x, w)
        want = jax.jit(jax.grad(functools.partial(fn, ref), argnums=(0, 1)))(x, w)
        for a, b in zip(got, want):
            assert float(jnp.max(jnp.abs(b))) > 0
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_vmapped_input_gradient_matches_lax():
    """The search vmaps the per-perturbation gradient over the batch."""
    x = jax.random.normal(jax.random.key(4), (3, 1, 16, 16, 1))
    w = jax.random.normal(jax.random.key(5), (9, 9, 1, 6))
    grads = [jax.vmap(jax.grad(lambda u: jnp.sum(jnp.sin(conv(u, w, "SAME")))))(x)
             for conv in (col2im_conv.conv, lax_conv)]
    np.testing.assert_allclose(*grads, rtol=1e-5, atol=1e-5)


def test_input_gradient_inside_shard_map():
    """Under shard_map the cotangent's type carries the mapped axis; both platform branches
    are traced, so the non-CPU one must accept it too."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    x = jax.device_put(jax.random.normal(jax.random.key(9), (len(jax.devices()), 8, 8, 1)),
                       NamedSharding(mesh, P("data")))
    w = jax.random.normal(jax.random.key(10), (3, 3, 1, 4))

    def grad(conv):
        per_shard = jax.grad(lambda u: jnp.sum(jnp.sin(conv(u, w, "SAME"))))
        return jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=P("data"),
                                     out_specs=P("data")))(x)

    np.testing.assert_allclose(grad(col2im_conv.conv), grad(lax_conv), rtol=1e-5, atol=1e-5)


def test_bfloat16_input_gradient_is_as_accurate_as_lax():
    x = jax.random.normal(jax.random.key(11), (1, 32, 32, 1))
    w = jax.random.normal(jax.random.key(12), (9, 9, 1, 64)) * 0.1
    g = jax.random.normal(jax.random.key(13), (1, 32, 32, 64))
    exact = jax.linear_transpose(lambda u: lax_conv(u, w, "SAME"), x)(g)[0]
    bf = jnp.bfloat16
    ours = col2im_conv.col2im_input_grad(g.astype(bf), w.astype(bf), ((4, 4), (4, 4)))
    ref = jax.linear_transpose(lambda u: lax_conv(u, w.astype(bf), "SAME"), x.astype(bf))(
        g.astype(bf))[0]
    assert ours.dtype == bf
    err = [float(jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32) - exact))
                          / jnp.mean(jnp.square(exact)))) for a in (ours, ref)]
    assert err[0] < 2 * err[1] + 1e-3, err


def test_negative_padding_is_refused():
    x, w = jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 2))
    with pytest.raises(ValueError, match=r"non-negative.*\(-1, 1\)"):
        col2im_conv.conv(x, w, ((-1, 1), (1, 1)))


def test_module_has_nn_conv_params_and_values():
    x = jax.random.normal(jax.random.key(6), (2, 12, 12, 1))
    nets.assert_is_nn_conv(col2im_conv.Conv(5, (9, 9), padding="SAME"),
                           nn.Conv(5, (9, 9), padding="SAME"), x)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU property")
def test_cnn10_input_gradient_runs_conv1_transpose_as_a_matmul():
    """The point of col2im_conv: CNN-10's input gradient has no 64 -> 1 convolution on CPU."""
    model = cnn10.CNN10()
    x = jnp.zeros((1, 24, 24, 1))
    params = model.init(jax.random.key(8), x)
    grad = jax.jit(jax.grad(lambda u: jnp.sum(jnp.square(model.apply(params, u)))))
    hlo = grad.lower(x).compile().as_text()
    convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
    # conv1, conv2, conv3 forward; conv3 and conv2 transposed. conv1's transpose is a dot.
    assert len(convolutions) == 5, "\n".join(convolutions)
    assert not any("f32[1,24,24,1]{3,2,1,0} convolution(" in line
                   and "size=9x9" in line for line in convolutions)
    assert re.search(r"f32\[\d+,81\]\S* dot\(", hlo), "no [pixels, 81] matmul in the program"
