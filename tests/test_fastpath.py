"""The XLA:CPU fast paths: each form of a convolution has lax's values and derivatives, the
interceptor swaps exactly the convolutions it should, the compiled programs avoid what XLA:CPU
runs slowly, and the switch turns it all off."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ldct_jax import fastpath, gan_losses, models, parallel
from ldct_jax.fastpath import col2im_conv, gp_conv, small_map_conv
from ldct_jax.models import cnn10, vgg_weights, wgan_vgg

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w, padding, strides=(1, 1)):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def explicit(x, w, padding, strides=(1, 1)):
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(x.shape[1:3], w.shape[:2], strides, padding))
    return padding


def assert_close(got, want, tol=2e-5):
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------------------------------------
# col2im_conv: the input gradient as a matmul plus a shifted sum (CNN-10's conv1)

# Pads up to kernel - 1: lax's own transpose is wrong for larger ones on XLA:CPU.
CASES = [((9, 9), 1, 4, "SAME"), ((4, 3), 2, 3, "SAME"), ((3, 3), 2, 5, "VALID"),
         ((5, 2), 3, 2, ((1, 3), (0, 2))), ((3, 3), 1, 2, ((2, 0), (0, 2)))]
SLOW_FIRST = [pytest.param(*CASES[0], marks=pytest.mark.slow), *CASES[1:]]


@pytest.mark.parametrize("kernel,cin,cout,padding", CASES)
def test_col2im_input_grad_is_the_transposed_convolution(kernel, cin, cout, padding):
    x = jax.random.normal(jax.random.key(0), (2, 11, 13, cin))
    w = jax.random.normal(jax.random.key(1), (*kernel, cin, cout))
    g = jax.random.normal(jax.random.key(2), lax_conv(x, w, padding).shape)
    want = jax.linear_transpose(lambda u: lax_conv(u, w, padding), x)(g)[0]
    got = col2im_conv.col2im_input_grad(g, w, tuple(map(tuple, explicit(x, w, padding))))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("kernel,cin,cout,padding", SLOW_FIRST)  # 9x9 to second order: ~13 s
def test_col2im_values_and_derivatives_match_lax(kernel, cin, cout, padding):
    kx, kw, kr = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 10, 12, cin))
    w = jax.random.normal(kw, (*kernel, cin, cout)) * 0.3
    ours = lambda a, b: col2im_conv.conv(a, b, explicit(a, b, padding))  # noqa: E731
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
            assert_close(a, b)


def test_col2im_vmapped_input_gradient_matches_lax():
    """The search vmaps the per-perturbation gradient over the batch."""
    x = jax.random.normal(jax.random.key(4), (3, 1, 16, 16, 1))
    w = jax.random.normal(jax.random.key(5), (9, 9, 1, 6))
    same = ((4, 4), (4, 4))
    grads = [jax.vmap(jax.grad(lambda u: jnp.sum(jnp.sin(conv(u, w, same)))))(x)
             for conv in (col2im_conv.conv, lax_conv)]
    np.testing.assert_allclose(*grads, rtol=1e-5, atol=1e-5)


def test_col2im_input_gradient_inside_shard_map():
    """Under shard_map the cotangent's type carries the mapped axis; both platform branches
    are traced, so the non-CPU one must accept it too."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    x = jax.device_put(jax.random.normal(jax.random.key(9), (len(jax.devices()), 8, 8, 1)),
                       NamedSharding(mesh, P("data")))
    w = jax.random.normal(jax.random.key(10), (3, 3, 1, 4))

    def grad(conv):
        per_shard = jax.grad(lambda u: jnp.sum(jnp.sin(conv(u, w, ((1, 1), (1, 1))))))
        return jax.jit(jax.shard_map(per_shard, mesh=mesh, in_specs=P("data"),
                                     out_specs=P("data")))(x)

    np.testing.assert_allclose(grad(col2im_conv.conv), grad(lax_conv), rtol=1e-5, atol=1e-5)


def test_col2im_bfloat16_input_gradient_is_as_accurate_as_lax():
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


def test_col2im_negative_padding_is_refused():
    x, w = jnp.zeros((1, 8, 8, 1)), jnp.zeros((3, 3, 1, 2))
    with pytest.raises(ValueError, match=r"non-negative.*\(-1, 1\)"):
        col2im_conv.conv(x, w, ((-1, 1), (1, 1)))


# ---------------------------------------------------------------------------------------------
# gp_conv: every derivative as an ordinary convolution (the WGAN-GP critic)


def penalty(conv, x, w, r):
    """A gradient penalty: |d/dx sum(r * softplus(conv(x, w)))|^2, nonlinear in x and w."""
    gx = jax.grad(lambda u: jnp.sum(r * jax.nn.softplus(conv(u, w))))(x)
    return jnp.sum(jnp.square(gx))


@pytest.mark.parametrize("strides,padding", [((1, 1), "VALID"), ((2, 2), "VALID"),
                                             ((1, 1), "SAME"), ((2, 2), ((1, 2), (0, 1)))])
def test_gp_conv_values_and_derivatives_match_lax(strides, padding):
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
    def third_order(conv):
        penalty_w = jax.grad(functools.partial(penalty, conv, x, r=r))
        return jax.grad(lambda b: jnp.sum(jnp.square(penalty_w(b))))(w)

    third, third_ref = third_order(ours), third_order(ref)
    for got, want in [*zip(first, first_ref), *zip(second, second_ref), (third, third_ref)]:
        assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# The interceptor: nn.Conv in its fast form, same params, values and gradients


def _fast_and_plain(module, x, **kw):
    """`module`'s outputs and input gradients, plain and through `fastpath.convolutions`, and
    whether the fast program differs from the plain one (a fast form was taken)."""
    params = jax.tree.map(lambda a: a + 0.1, module.init(jax.random.key(2), x))  # bias != 0
    plain = module.apply
    fast = fastpath.convolutions(module.apply, enable=True, **kw)
    out = [f(params, x) for f in (plain, fast)]
    grads = [jax.grad(lambda u, f=f: jnp.sum(jnp.sin(f(params, u))))(x) for f in (plain, fast)]
    swapped = str(jax.make_jaxpr(fast)(params, x)) != str(jax.make_jaxpr(plain)(params, x))
    return out, grads, swapped, params


@pytest.mark.parametrize("module,shape,kw,tol", [
    (nn.Conv(5, (9, 9), padding="SAME"), (2, 12, 12, 1), {}, 1e-6),             # col2im
    (nn.Conv(5, (3, 3), padding=1), (2, 2, 3, 6), {}, 1e-5),                   # small map
    (nn.Conv(5, (3, 3), padding=1), (2, 1, 1, 6), {}, 1e-5),                   # small map
    (nn.Conv(5, (3, 3), strides=(2, 2), padding="VALID"), (2, 9, 9, 3),
     {"second_order": True}, 1e-6),                                            # gp_conv
], ids=["col2im", "small-map-2x3", "small-map-1x1", "gp"])
def test_fast_forms_of_nn_conv_have_its_values_and_gradients(module, shape, kw, tol):
    x = jax.random.normal(jax.random.key(1), shape)
    (y, y_fast), (g, g_fast), swapped, params = _fast_and_plain(module, x, **kw)
    assert swapped, "the fast form was not used"
    np.testing.assert_allclose(y_fast, y, rtol=tol, atol=tol)
    np.testing.assert_allclose(g_fast, g, rtol=1e-5, atol=1e-5)
    # nn.Conv's dtype promotion: bfloat16 input, float32 params -> float32.
    low = x.astype(jnp.bfloat16)
    fast = fastpath.convolutions(module.apply, enable=True, **kw)
    assert fast(params, low).dtype == module.apply(params, low).dtype == jnp.float32


@pytest.mark.parametrize("module,shape", [
    (nn.Conv(5, (3, 3), padding="SAME"), (2, 8, 8, 1)),       # small kernel: lax is as fast
    (nn.Conv(5, (9, 9), padding="SAME"), (2, 12, 12, 2)),     # two input channels
    (nn.Conv(6, (3, 3), padding=1, feature_group_count=2), (2, 2, 2, 4)),
    (nn.Conv(5, (3, 3), padding="CIRCULAR"), (2, 2, 2, 3)),
    (nn.Conv(5, (3, 3), strides=(2, 2), padding="VALID"), (2, 9, 9, 3)),
    (nn.Conv(5, (3, 3), padding=1), (2, 5, 4, 6)),            # a map as large as the kernel
    (nn.Conv(5, 3, padding=1), (2, 5, 4, 6)),                 # an int kernel: 1-D in Flax
    (nn.Conv(5, (3, 3), padding="VALID"), (2, 3, 3, 1)),      # the map is the kernel
], ids=["3x3", "2-channels", "groups", "circular", "strided", "5x4-map", "1-d", "valid"])
def test_other_convolutions_are_left_to_nn_conv(module, shape):
    x = jax.random.normal(jax.random.key(1), shape)
    (y, y_fast), _, swapped, _ = _fast_and_plain(module, x)
    assert not swapped
    np.testing.assert_array_equal(y_fast, y)


def test_switch_off_leaves_every_convolution_plain(monkeypatch):
    module, x = nn.Conv(5, (9, 9), padding="SAME"), jnp.zeros((1, 12, 12, 1))
    params = module.init(jax.random.key(0), x)
    monkeypatch.setenv(fastpath.ENV, "0")
    assert not fastpath.enabled()
    apply = module.apply
    assert fastpath.convolutions(apply) is apply
    mesh = parallel.make_mesh(1)
    assert not fastpath.python_loop(mesh) and fastpath.compiler_options(mesh) is None
    monkeypatch.setenv(fastpath.ENV, "1")
    assert fastpath.python_loop(mesh) == (jax.default_backend() == "cpu")
    fast = fastpath.convolutions(module.apply)
    assert "custom_vjp_call" in str(jax.make_jaxpr(fast)(params, x))


def test_unsupported_cpu_compiler_options_fall_back_to_none(caplog):
    assert fastpath.supported_cpu_options({"xla_no_such_option": "1"}) == {}
    assert "xla_no_such_option" in caplog.text
    bad_value = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
    assert fastpath.supported_cpu_options(bad_value) == {}


def test_small_map_conv_applies_only_below_the_kernel_size():
    assert small_map_conv.applies(2, 5, (3, 3)) and not small_map_conv.applies(3, 3, (3, 3))


# ---------------------------------------------------------------------------------------------
# The compiled programs: what XLA:CPU runs slowly is not there


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU property")
def test_cnn10_input_gradient_runs_conv1_transpose_as_a_matmul():
    """The point of col2im_conv: CNN-10's input gradient has no 64 -> 1 convolution on CPU."""
    model = cnn10.CNN10()
    x = jnp.zeros((1, 24, 24, 1))
    params = model.init(jax.random.key(8), x)
    apply = fastpath.convolutions(model.apply, enable=True)
    grad = jax.jit(jax.grad(lambda u: jnp.sum(jnp.square(apply(params, u)))))
    hlo = grad.lower(x).compile().as_text()
    convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
    # conv1, conv2, conv3 forward; conv3 and conv2 transposed. conv1's transpose is a dot.
    assert len(convolutions) == 5, "\n".join(convolutions)
    assert not any("f32[1,24,24,1]{3,2,1,0} convolution(" in line
                   and "size=9x9" in line for line in convolutions)
    assert re.search(r"f32\[\d+,81\]\S* dot\(", hlo), "no [pixels, 81] matmul in the program"


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU property")
def test_gradient_penalty_program_has_no_window_reversal():
    """The point of gp_conv: XLA:CPU runs window-reversed convolutions in a naive loop."""
    critic, params = wgan_vgg.init_critic(jax.random.key(0), 32)
    real = jax.random.normal(jax.random.key(1), (2, 32, 32))
    score = lambda p: (lambda z: critic.apply({"params": p}, z[..., None]))  # noqa: E731
    penalty_of = fastpath.convolutions(
        lambda p: gan_losses.gradient_penalty(score(p), real, 0.5 * real, jax.random.key(2)),
        second_order=True, enable=True)
    hlo = jax.jit(jax.grad(penalty_of)).lower(params).compile().as_text()
    assert " convolution(" in hlo
    assert "rhs_reversal" not in hlo


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU properties")
@pytest.mark.parametrize("patch", [48, 32])
def test_wgan_train_step_program_has_no_loop_and_no_window_reversal(patch):
    """The WGAN step as the trainer compiles it (1 critic update): no convolution in a loop
    body (XLA:CPU runs those with a slow generic kernel) and none window-reversed. At patch 32,
    VGG19's block 5 works on 2x2 maps, smaller than its kernels (`small_map_conv`)."""
    from ldct_jax.train import supervised, wgan

    key, n_critic = jax.random.key(0), 1
    generator = models.create("wgan_vgg", key)
    critic, cparams = wgan_vgg.init_critic(key, patch)
    vgg = vgg_weights.random_init("vgg19", key, imagenet_norm=False)
    opt = supervised.adam(1e-4, 0.5, 0.9)
    mesh = parallel.make_mesh(1)
    step = parallel.data_parallel_step(
        wgan.make_step(generator.spec, critic, vgg, opt, opt,
                       wgan.WGANSettings(n_critic=n_critic)), mesh, extra_args=1)
    state = wgan.init_state(generator, cparams, opt, opt, seed=0)
    batch = {k: jnp.zeros((2, n_critic, patch, patch)) for k in ("low", "full")}
    hlo = step.lower(state, batch, vgg.params).compile().as_text()
    convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
    assert len(convolutions) > 20
    assert not [c for c in convolutions if "rhs_reversal" in c]
    assert not [c for c in convolutions if "/while/" in c]
