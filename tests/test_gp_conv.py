"""gp_conv: lax.conv_general_dilated's values and derivatives (to third order), written so that
XLA:CPU keeps the gradient penalty's second derivatives off its slow window-reversal path."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ldct_jax import losses, parallel
from ldct_jax.models import gp_conv, wgan_vgg
from tests import nets


def lax_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def penalty(conv, x, w, r):
    """A gradient penalty: |d/dx sum(r * softplus(conv(x, w)))|^2, nonlinear in x and w."""
    gx = jax.grad(lambda u: jnp.sum(r * jax.nn.softplus(conv(u, w))))(x)
    return jnp.sum(jnp.square(gx))


@pytest.mark.parametrize("strides,padding", [((1, 1), "VALID"), ((2, 2), "VALID"),
                                             ((1, 1), "SAME"), ((2, 2), ((1, 2), (0, 1)))])
def test_values_and_derivatives_match_lax(strides, padding):
    kx, kw, kr = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 11, 12, 3))
    w = jax.random.normal(kw, (3, 3, 3, 4)) * 0.3
    ours = functools.partial(gp_conv.conv, strides=strides, padding=padding)
    ref = functools.partial(lax_conv, strides=strides, padding=padding)
    np.testing.assert_array_equal(ours(x, w), ref(x, w))
    r = jax.random.normal(kr, ref(x, w).shape)

    first = jax.grad(lambda a, b: jnp.sum(r * jnp.tanh(ours(a, b))), argnums=(0, 1))(x, w)
    first_ref = jax.grad(lambda a, b: jnp.sum(r * jnp.tanh(ref(a, b))), argnums=(0, 1))(x, w)
    second = jax.grad(functools.partial(penalty, ours, r=r), argnums=(0, 1))(x, w)
    second_ref = jax.grad(functools.partial(penalty, ref, r=r), argnums=(0, 1))(x, w)
    # Third order: the gradient of a penalty on the second-order weight gradient.
    third, third_ref = (
        jax.grad(lambda b: jnp.sum(jnp.square(jax.grad(functools.partial(penalty, c, x, r=r))(b))))(w)
        for c in (ours, ref))
    for got, want in [*zip(first, first_ref), *zip(second, second_ref), (third, third_ref)]:
        assert float(jnp.max(jnp.abs(want))) > 0
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(want))))


def test_module_has_nn_conv_params_and_values():
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 3))
    nets.assert_is_nn_conv(gp_conv.Conv(5, (3, 3), strides=(2, 2), padding="VALID"),
                           nn.Conv(5, (3, 3), strides=(2, 2), padding="VALID"), x)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU property")
def test_gradient_penalty_program_has_no_window_reversal():
    """The point of gp_conv: XLA:CPU runs window-reversed convolutions in a naive loop."""
    critic, params = wgan_vgg.init_critic(jax.random.key(0), 32)
    real = jax.random.normal(jax.random.key(1), (2, 32, 32))
    score = lambda p: (lambda z: critic.apply({"params": p}, z[..., None]))
    grad = jax.jit(jax.grad(lambda p: losses.gradient_penalty(score(p), real, 0.5 * real,
                                                              jax.random.key(2))))
    hlo = grad.lower(params).compile().as_text()
    assert " convolution(" in hlo
    assert "rhs_reversal" not in hlo


def test_unsupported_cpu_compiler_options_fall_back_to_none(caplog):
    assert parallel.supported_cpu_options({"xla_no_such_option": "1"}) == {}
    assert "xla_no_such_option" in caplog.text
    bad_value = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
    assert parallel.supported_cpu_options(bad_value) == {}


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU properties")
@pytest.mark.parametrize("patch", [48, 32])
def test_wgan_train_step_program_has_no_loop_and_no_window_reversal(patch):
    """The WGAN step as the trainer compiles it (1 critic update): no convolution in a loop
    body (XLA:CPU runs those with a slow generic kernel) and none window-reversed. At patch 32,
    VGG19's block 5 works on 2x2 maps, smaller than its kernels (`vgg.Conv3x3`)."""
    from ldct_jax import models
    from ldct_jax.models import vgg as vgg_lib
    from ldct_jax.train import supervised, wgan

    key, n_critic = jax.random.key(0), 1
    generator = models.create("wgan_vgg", key)
    critic, cparams = wgan_vgg.init_critic(key, patch)
    vgg = vgg_lib.random_init("vgg19", key, imagenet_norm=False)
    opt = supervised.adam(1e-4, 0.5, 0.9)
    mesh = parallel.make_mesh(1)
    step = parallel.data_parallel_step(
        wgan.make_step(generator, critic, vgg, opt, opt, wgan.WGANSettings(n_critic=n_critic)),
        mesh, extra_args=1)
    state = wgan.init_state(generator, cparams, opt, opt, seed=0)
    batch = {k: jnp.zeros((2, n_critic, patch, patch)) for k in ("low", "full")}
    hlo = step.lower(state, batch, vgg.params).compile().as_text()
    convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
    assert len(convolutions) > 20
    assert not [c for c in convolutions if "rhs_reversal" in c]
    assert not [c for c in convolutions if "/while/" in c]
