"""Losses and metrics against scikit-image, numpy formulas, PyTorch autograd and known cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from ldct_jax import ct, distances, gan_losses, metrics
from ldct_jax.models import vgg as vgg_lib
from ldct_jax.models import vgg_weights


def _skimage_ssim(a, b, data_range):
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range)


def _ct_like(seed, n=96):
    """A phantom in HU (air, body, fat, organ, bone, lung) and a copy with correlated noise."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[:n, :n] - n / 2.0
    img = np.full((n, n), -1000.0)
    img[(xx / 44) ** 2 + (yy / 34) ** 2 < 1] = -100.0  # fat
    img[(xx / 40) ** 2 + (yy / 30) ** 2 < 1] = 50.0  # soft tissue
    img[((xx - 12) / 10) ** 2 + ((yy + 4) / 8) ** 2 < 1] = 1200.0  # bone
    img[((xx + 18) / 12) ** 2 + ((yy - 6) / 12) ** 2 < 1] = -850.0  # lung
    img[((xx - 2) / 4) ** 2 + ((yy - 14) / 4) ** 2 < 1] = 90.0  # lesion
    noise = ndimage.gaussian_filter(rs.randn(n, n), 1.2)
    low = img + 25.0 * noise / noise.std()
    return img.astype(np.float32), low.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Metrics


def test_mse_rmse_psnr_match_the_formulas():
    rs = np.random.RandomState(0)
    a, b = rs.randn(2, 3, 20, 20).astype(np.float32) * 100
    m = np.mean((a.astype(np.float64) - b) ** 2)
    np.testing.assert_allclose(metrics.mse(a, b), m, rtol=1e-5)
    np.testing.assert_allclose(metrics.rmse(a, b), np.sqrt(m), rtol=1e-5)
    np.testing.assert_allclose(metrics.psnr(a, b, 4095.0), 10 * np.log10(4095.0 ** 2 / m),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"same shape.*\(3, 20, 20\) and \(20, 20\)"):
        metrics.mse(a, b[0])


@pytest.mark.parametrize("shape", [(64, 64), (2, 3, 40, 52)])
def test_ssim_matches_skimage_on_random_images(shape):
    rs = np.random.RandomState(1)
    a = rs.rand(*shape).astype(np.float32)
    b = np.clip(a + 0.2 * rs.randn(*shape), 0, 1).astype(np.float32)
    ours = np.asarray(metrics.ssim(a, b, 1.0))
    assert ours.shape == shape[:-2]
    ref = np.vectorize(lambda i: _skimage_ssim(a.reshape((-1,) + shape[-2:])[i],
                                               b.reshape((-1,) + shape[-2:])[i], 1.0))(
        np.arange(int(np.prod(shape[:-2], dtype=int)))).reshape(shape[:-2])
    np.testing.assert_allclose(ours, ref, atol=1e-3)


@pytest.mark.parametrize("window", [None, "abdomen", "lung"])
def test_ssim_matches_skimage_on_ct_like_images(window):
    full, low = _ct_like(2)
    if window is None:  # raw HU over the whole valid range
        a, b, data_range = full, low, ct.HU_MAX - ct.HU_MIN
    else:  # windowed to [0, 1]
        a, b, data_range = ct.apply_window(full, window), ct.apply_window(low, window), 1.0
    ref = _skimage_ssim(a, b, data_range)
    assert 0.05 < ref < 0.999  # a case where SSIM is informative
    np.testing.assert_allclose(float(metrics.ssim(a, b, data_range)), ref, atol=1e-3)


def test_dssim_range_and_extremes():
    rs = np.random.RandomState(3)
    a = (1.0 + 0.5 * rs.randn(4, 32, 32)).astype(np.float32)
    d_same = metrics.dssim(a, a, 8.0)
    # Same local means, anticorrelated detail: SSIM near -1 (b = -a would flip the luminance
    # term too, and the two negative factors would multiply to a positive SSIM).
    d_neg = metrics.dssim(a, 2.0 - a, 2.0)
    d_rand = metrics.dssim(a, rs.randn(4, 32, 32).astype(np.float32), 8.0)
    np.testing.assert_allclose(d_same, 0.0, atol=1e-6)
    for d in (d_neg, d_rand):
        assert bool(jnp.all((d >= 0) & (d <= 1)))
    assert bool(jnp.all(d_neg > 0.9))


def test_ssim_jit_vmap_and_finite_gradient_at_equal_inputs():
    full, low = _ct_like(4, n=48)
    x = jnp.stack([full, low]) / ct.LDCTBENCH_SCALE
    dssim = lambda u, v: metrics.dssim(u, v, distances.NET_DATA_RANGE)

    @jax.jit
    def run(x):
        grad = jax.grad(lambda e: dssim(x[0] + e, x[0]))(jnp.zeros_like(x[0]))
        return jax.vmap(dssim)(x, x[::-1]), dssim(x, x[::-1]), grad

    batched, leading, grad = run(x)
    np.testing.assert_allclose(batched, leading, rtol=1e-6)
    np.testing.assert_allclose(leading[0], (1 - _skimage_ssim(x[0], x[1], distances.NET_DATA_RANGE))
                               / 2, atol=1e-3)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_ssim_rejects_too_small_images():
    with pytest.raises(ValueError, match=r"H, W >= filter_size \(11\), got shape \(8, 8\)"):
        metrics.ssim(jnp.zeros((8, 8)), jnp.zeros((8, 8)), 1.0)


# ---------------------------------------------------------------------------------------------
# Bounded input distances


def test_bounded_mse_caps_at_one():
    rs = np.random.RandomState(5)
    a = rs.randn(3, 16, 16).astype(np.float32)
    small = a + 0.1 * rs.randn(3, 16, 16).astype(np.float32)
    np.testing.assert_allclose(distances.bounded_mse(a, small),
                               np.mean((a - small) ** 2, axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(distances.bounded_mse(a, a + 3.0), np.ones(3))
    g = jax.grad(lambda p: distances.bounded_mse(a[0] + p, a[0]))(jnp.full((16, 16), 3.0))
    assert float(jnp.abs(g).max()) == 0.0  # saturated: no push beyond the bound


def test_net_range_is_the_hu_range_in_ldctbench_units():
    to_net = lambda hu: (hu - ct.LDCTBENCH_SHIFT) / ct.LDCTBENCH_SCALE
    np.testing.assert_allclose(distances.NET_RANGE, (to_net(ct.HU_MIN), to_net(ct.HU_MAX)))
    np.testing.assert_allclose(distances.NET_DATA_RANGE, 4095.0 / ct.LDCTBENCH_SCALE)


@pytest.fixture(scope="module")
def vgg16():
    return vgg_weights.random_init("vgg16", jax.random.key(0))


@pytest.mark.slow
def test_vgg16_distance_zero_bounded_symmetric(vgg16):
    full, low = _ct_like(6, n=32)
    to_net = lambda hu: (hu - ct.LDCTBENCH_SHIFT) / ct.LDCTBENCH_SCALE
    a, b = to_net(jnp.asarray(full)), to_net(jnp.asarray(low))
    noise = jax.random.normal(jax.random.key(1), (32, 32)) * 3.0

    @jax.jit  # one compile for everything: the VGG (and its params) travel as an argument
    def run(vgg):
        dist = distances.input_distance("vgg16", vgg)
        first = jnp.stack([a, a, b, a])
        second = jnp.stack([a, b, a, noise])
        batched = jax.vmap(dist)(first, second)
        grad = jax.grad(lambda e: dist(a + e, a))(jnp.zeros_like(a))
        return batched, dist(first, second), grad

    batched, leading, grad = run(vgg16)
    d_aa, d_ab, d_ba, d_far = batched
    np.testing.assert_allclose(d_aa, 0.0, atol=1e-7)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-5)
    assert 0.0 < float(d_ab) < float(d_far) <= 1.0
    np.testing.assert_allclose(leading, batched, rtol=1e-5, atol=1e-7)  # leading axes == vmap
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_vgg16_distance_matches_its_formula(vgg16):
    # Direct numpy evaluation of the definition from the features.
    rs = np.random.RandomState(7)
    a, b = rs.randn(2, 32, 32).astype(np.float32)
    lo, hi = distances.NET_RANGE
    feats = vgg16.features(vgg16.params, (np.stack([a, b]) - lo) / (hi - lo),
                           distances.VGG16_DISTANCE_TAPS)
    ref = []
    for tap in distances.VGG16_DISTANCE_TAPS:
        fa, fb = np.asarray(feats[tap], np.float64)
        na = fa / np.sqrt((fa ** 2).sum(-1, keepdims=True) + 1e-10)
        nb = fb / np.sqrt((fb ** 2).sum(-1, keepdims=True) + 1e-10)
        ref.append(((na - nb) ** 2).sum(-1).mean() / 4)
    np.testing.assert_allclose(distances.vgg16_distance(vgg16, vgg16.params, a, b), np.mean(ref),
                               rtol=1e-4)


def test_input_distance_registry_and_errors(vgg16):
    rs = np.random.RandomState(8)
    a, b = rs.randn(2, 2, 24, 24).astype(np.float32)
    np.testing.assert_allclose(distances.input_distance("mse")(a, b), distances.bounded_mse(a, b))
    np.testing.assert_allclose(distances.input_distance("dssim")(a, b),
                               metrics.dssim(a, b, distances.NET_DATA_RANGE))
    assert set(distances.INPUT_DISTANCES) == {"mse", "dssim", "vgg16"}
    with pytest.raises(ValueError, match="unknown input distance 'ssim'.*mse, dssim, vgg16"):
        distances.input_distance("ssim")
    with pytest.raises(ValueError, match="'vgg16' needs VGG16 weights"):
        distances.input_distance("vgg16")
    vgg19 = vgg16.replace(arch="vgg19")
    with pytest.raises(ValueError, match="needs a VGG16, got vgg19"):
        distances.input_distance("vgg16", vgg19)


# ---------------------------------------------------------------------------------------------
# WGAN-VGG


def test_perceptual_l1_matches_pytorch_vgg19_conv5_4():
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twins import TorchVGG

    torch.manual_seed(0)
    model = TorchVGG("vgg19").eval()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    vgg = vgg_lib.VGG("vgg19", vgg_weights.params_from_state_dict(state, "vgg19"),
                      imagenet_norm=False)
    rs = np.random.RandomState(9)
    a, b = rs.randn(2, 2, 32, 32).astype(np.float32)
    with torch.no_grad():  # ldct-benchmark: repeat the channel, features[:35], L1 mean
        fa = model.features[:35](torch.from_numpy(a)[:, None].repeat(1, 3, 1, 1))
        fb = model.features[:35](torch.from_numpy(b)[:, None].repeat(1, 3, 1, 1))
        ref = torch.nn.functional.l1_loss(fa, fb).item()
    np.testing.assert_allclose(gan_losses.perceptual_l1(vgg, a, b), ref, rtol=1e-4)


def test_wasserstein_losses():
    real, fake = jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.5])
    np.testing.assert_allclose(gan_losses.critic_loss(real, fake), -0.25 - 2.0)
    np.testing.assert_allclose(gan_losses.generator_adversarial_loss(fake), 0.25)


def test_gradient_penalty_of_a_linear_critic():
    # critic(x) = <w, x> has gradient w everywhere: penalty (||w|| - 1)^2 whatever the inputs.
    w = jax.random.normal(jax.random.key(0), (8, 8))
    critic = lambda x: jnp.sum(x * w, axis=(1, 2))
    real, fake = jax.random.normal(jax.random.key(1), (2, 5, 8, 8))
    gp = jax.jit(gan_losses.gradient_penalty, static_argnums=0)(critic, real, fake,
                                                                 jax.random.key(2))
    np.testing.assert_allclose(gp, (np.linalg.norm(np.asarray(w)) - 1) ** 2, rtol=1e-5)


def test_gradient_penalty_draws_alpha_per_sample():
    # critic(x)_i = |x_i|^2 / 2 has gradient x_i: with fake = 0 and |real_i| = 3 the norm at the
    # interpolate is 3 alpha_i, so E[penalty] = E[(3 alpha - 1)^2] = 1 for alpha ~ U[0, 1).
    n = 4096
    u = jax.random.normal(jax.random.key(3), (n, 4, 4))
    real = 3.0 * u / jnp.linalg.norm(u.reshape(n, -1), axis=1)[:, None, None]
    critic = lambda x: 0.5 * jnp.sum(x ** 2, axis=(1, 2))
    gp = jax.jit(gan_losses.gradient_penalty, static_argnums=0)
    penalties = [float(gp(critic, real, jnp.zeros_like(real), jax.random.key(k)))
                 for k in range(2)]
    np.testing.assert_allclose(penalties, 1.0, atol=0.1)  # stderr ~0.02
    assert penalties[0] != penalties[1]


def test_gradient_penalty_and_its_param_gradient_match_torch_autograd():
    torch = pytest.importorskip("torch")
    rs = np.random.RandomState(10)
    w1, b1 = rs.randn(36, 16).astype(np.float32) * 0.3, rs.randn(16).astype(np.float32)
    w2 = rs.randn(16).astype(np.float32)
    x = rs.randn(5, 6, 6).astype(np.float32)

    def jax_gp(params):
        critic = lambda y: jnp.tanh(y.reshape(y.shape[0], -1) @ params[0] + params[1]) @ params[2]
        return gan_losses.gradient_norm_penalty(critic, jnp.asarray(x))

    gp, grads = jax.value_and_grad(jax_gp)((w1, b1, w2))

    tw = [torch.tensor(p, requires_grad=True) for p in (w1, b1, w2)]
    tx = torch.tensor(x, requires_grad=True)
    scores = torch.tanh(tx.reshape(5, -1) @ tw[0] + tw[1]) @ tw[2]
    (gx,) = torch.autograd.grad(scores, tx, grad_outputs=torch.ones(5), create_graph=True)
    tgp = ((gx.reshape(5, -1).norm(2, dim=1) - 1) ** 2).mean()
    tgrads = torch.autograd.grad(tgp, tw)
    np.testing.assert_allclose(gp, tgp.item(), rtol=1e-5)
    for ours, ref in zip(grads, tgrads):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-6)
