"""Losses and metrics: mse/rmse/psnr, SSIM (dm-pix), the bounded input distances of the
invariance search, the WGAN-VGG perceptual loss, and WGAN-GP.

All take jax arrays and return jax arrays, are differentiable and work under jit/vmap.

Units. Metrics (`mse`, `rmse`, `psnr`, `ssim`, `dssim`) work in whatever units they are given
(HU for reporting) with an explicit `data_range` where one is needed. The input distances of the
search (`bounded_mse`, `vgg16_distance`, `input_distance`) work on images in
**network units** (`(hu - shift) / scale` of the denoiser under study) and reduce over the last
two axes `[..., H, W] -> [...]`. Their notion of the valid range is `net_range`: the network
units of HU_MIN and HU_MAX, by default those of ldct-benchmark's normalisation (cnn10,
wgan_vgg); for another denoiser pass `net_range=(d.to_net(ct.HU_MIN), d.to_net(ct.HU_MAX))`.

SSIM borders. dm-pix filters with VALID padding, so its SSIM map is `(H - filter_size + 1) x
(W - filter_size + 1)`. scikit-image (`gaussian_weights=True`) filters the whole image with
reflect padding and then crops `(win_size - 1) // 2` pixels from each side before averaging,
with `win_size = 2 * int(3.5 * sigma + 0.5) + 1`; the crop removes exactly the pixels whose
window touched the reflected border, so the two agree whenever `filter_size == win_size`
(11 for sigma 1.5, the defaults). The Gaussian taps are the same (unit sum, no truncation
re-weighting), and dm-pix clips variances to >= eps^2 and |cov| to sqrt(var_a var_b), which the
exact values satisfy anyway. Measured: agreement to ~1e-6 in float32 on HU images.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import dm_pix as pix
import jax
import jax.numpy as jnp
from absl import logging

from ldct_jax import ct

Array = jax.Array

# Network units of HU_MIN and HU_MAX under ldct-benchmark's normalisation (cnn10, wgan_vgg).
NET_RANGE: tuple[float, float] = (
    (ct.HU_MIN - ct.LDCTBENCH_SHIFT) / ct.LDCTBENCH_SCALE,
    (ct.HU_MAX - ct.LDCTBENCH_SHIFT) / ct.LDCTBENCH_SCALE,
)
# SSIM data range of the dssim input distance: the valid HU range in network units (~8.15).
NET_DATA_RANGE: float = NET_RANGE[1] - NET_RANGE[0]

# LPIPS taps of VGG16 used by the perceptual input distance.
VGG16_DISTANCE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def _check_same_shape(a: Array, b: Array, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: inputs must have the same shape, got {a.shape} and {b.shape}")


# ---------------------------------------------------------------------------------------------
# Metrics


def mse(a: Array, b: Array) -> Array:
    """Mean squared error over all elements."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_same_shape(a, b, "mse")
    return jnp.mean(jnp.square(a - b))


def rmse(a: Array, b: Array) -> Array:
    """Root mean squared error over all elements, in the units of the inputs (e.g. HU)."""
    return jnp.sqrt(mse(a, b))


def psnr(a: Array, b: Array, data_range: float) -> Array:
    """PSNR in dB, `10 log10(data_range^2 / mse)`, over all elements; inf for equal inputs.

    `data_range` is in the units of the inputs, e.g. 4095 for the full HU range.
    """
    return 10.0 * jnp.log10(jnp.square(data_range) / mse(a, b))


def ssim(a: Array, b: Array, data_range: float, *, filter_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Array:
    """Mean SSIM per image (Gaussian window, dm-pix), `[..., H, W] -> [...]`.

    Agrees with `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, data_range=data_range)` when `filter_size == 2 *
    int(3.5 * sigma + 0.5) + 1` (see the module docstring for the borders).

    Args:
      a, b: images `[..., H, W]`, H and W at least `filter_size`.
      data_range: dynamic range of the images in their units (e.g. 4095 HU, or 1 for windowed
        [0, 1] images).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_same_shape(a, b, "ssim")
    if a.ndim < 2 or min(a.shape[-2:]) < filter_size:
        raise ValueError(f"ssim: expected images [..., H, W] with H, W >= filter_size "
                         f"({filter_size}), got shape {a.shape}")
    lead, hw = a.shape[:-2], a.shape[-2:]
    dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    flat = lambda x: x.astype(dtype).reshape((-1,) + hw + (1,))
    value = pix.ssim(flat(a), flat(b), max_val=data_range, filter_size=filter_size,
                     filter_sigma=sigma, k1=k1, k2=k2)
    return value.reshape(lead)


def dssim(a: Array, b: Array, data_range: float, **ssim_kwargs) -> Array:
    """Structural dissimilarity `(1 - ssim) / 2` per image, in [0, 1]."""
    return (1.0 - ssim(a, b, data_range, **ssim_kwargs)) / 2.0


# ---------------------------------------------------------------------------------------------
# Bounded input distances (network units, per image)


def bounded_mse(a: Array, b: Array) -> Array:
    """`min(MSE, 1)` per image over the last two axes: "MSE bounded by +1" of the search."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_same_shape(a, b, "bounded_mse")
    return jnp.minimum(jnp.mean(jnp.square(a - b), axis=(-2, -1)), 1.0)


def _unit_normalise(f: Array, eps: float = 1e-10) -> Array:
    # rsqrt(|f|^2 + eps) instead of 1 / (|f| + eps): finite gradients at all-zero positions.
    return f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + eps)


def vgg16_distance(vgg, params, a: Array, b: Array,
                   net_range: tuple[float, float] = NET_RANGE,
                   taps: tuple[str, ...] = VGG16_DISTANCE_TAPS) -> Array:
    """LPIPS-style perceptual distance without learned weights, per image, in [0, 1].

    Network units are mapped to intensity `(x - lo) / (hi - lo)` (HU_MIN -> 0, HU_MAX -> 1; not
    clipped) and fed to the VGG (with ImageNet mean/std if `vgg.imagenet_norm`). At each tap the
    features are normalised to unit length over channels; the distance is the mean over
    positions of the squared difference (<= 4 for unit vectors) / 4, averaged over taps.

    Args:
      vgg: a `ldct_jax.models.vgg.VGG` with arch 'vgg16'.
      params: its params (`vgg.params`), an argument so jit does not bake them in as constants.
      a, b: `[..., H, W]` network units, H and W >= 16 (four pools before relu5_3).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_same_shape(a, b, "vgg16_distance")
    if a.ndim < 2 or min(a.shape[-2:]) < 16:
        raise ValueError(f"vgg16_distance: expected images [..., H, W] with H, W >= 16, got "
                         f"shape {a.shape}")
    lo, hi = net_range
    both = jnp.stack([a, b])
    feats = vgg.features(params, (both - lo) / (hi - lo), taps)
    per_tap = []
    for t in taps:
        f = _unit_normalise(feats[t])
        per_tap.append(jnp.mean(jnp.sum(jnp.square(f[0] - f[1]), axis=-1), axis=(-2, -1)) / 4.0)
    return jnp.mean(jnp.stack(per_tap), axis=0)


INPUT_DISTANCES = ("mse", "dssim", "vgg16")

InputDistance = Callable[..., Array]


def input_distance(name: str, vgg=None, *,
                   net_range: tuple[float, float] = NET_RANGE) -> InputDistance:
    """The bounded input distance `d_in` called `name`, as `d(a, b, vgg_params=None) -> [...]`.

    `a`, `b` are `[..., H, W]` in network units; the result is per image, in [0, 1].
    'mse': `bounded_mse`; 'dssim': `dssim` with data range `hi - lo` of `net_range`;
    'vgg16': `vgg16_distance` with `vgg` (required, arch 'vgg16'). `vgg_params` is ignored
    by 'mse' and 'dssim'; for 'vgg16' pass `vgg.params` through your jitted function's
    arguments: left as None, `vgg.params` is closed over and jit embeds 60 MB of constants.
    """
    if name not in INPUT_DISTANCES:
        raise ValueError(f"unknown input distance {name!r}; expected one of "
                         f"{', '.join(INPUT_DISTANCES)}")
    lo, hi = net_range
    if name == "mse":
        return lambda a, b, vgg_params=None: bounded_mse(a, b)
    if name == "dssim":
        return lambda a, b, vgg_params=None: dssim(a, b, hi - lo)
    if vgg is None:
        raise ValueError("input distance 'vgg16' needs VGG16 weights: pass "
                         "vgg=ldct_jax.models.vgg.from_config(path, 'vgg16', key)")
    if vgg.arch != "vgg16":
        raise ValueError(f"input distance 'vgg16' needs a VGG16, got {vgg.arch}")
    if not vgg.pretrained:
        logging.warning("input distance vgg16 uses %s", vgg.describe())

    def distance(a, b, vgg_params=None):
        return vgg16_distance(vgg, vgg.params if vgg_params is None else vgg_params, a, b,
                              net_range)

    return distance


# ---------------------------------------------------------------------------------------------
# WGAN-VGG


def perceptual_l1(vgg, a: Array, b: Array, tap: str = "conv5_4",
                  params: Optional[Any] = None) -> Array:
    """Mean absolute difference of VGG features at `tap` (WGAN-VGG: VGG19 conv5_4, pre-ReLU).

    `a`, `b` are `[..., H, W]` in the VGG's input units (ldct-benchmark: network units with
    `imagenet_norm=False`). Pass `params` under jit (defaults to `vgg.params`, closed over).
    `b` is the target: no gradient flows to it (its features are computed apart, which makes
    the backward pass through `a` alone cheaper).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_same_shape(a, b, "perceptual_l1")
    params = vgg.params if params is None else params
    # The target's features apart and without gradient: the backward pass then carries only
    # `a`'s VGG pass (no gradient flows to `b` either way when it is a constant target).
    fa = vgg.features(params, a, tap)[tap]
    fb = jax.lax.stop_gradient(vgg.features(params, b, tap)[tap])
    return jnp.mean(jnp.abs(fa - fb))


def critic_loss(real_scores: Array, fake_scores: Array) -> Array:
    """WGAN critic loss `mean(fake) - mean(real)` (minimised by the critic)."""
    return jnp.mean(fake_scores) - jnp.mean(real_scores)


def generator_adversarial_loss(fake_scores: Array) -> Array:
    """WGAN generator loss `-mean(fake)`."""
    return -jnp.mean(fake_scores)


def gradient_norm_penalty(critic_fn: Callable[[Array], Array], x: Array) -> Array:
    """`mean_i (||grad_x critic(x)_i||_2 - 1)^2` with the norm per sample over all other axes.

    `critic_fn` maps `[B, ...]` to scores `[B]`, each depending on its own sample only (no
    batch norm), so the gradient of the summed scores is the per-sample gradient.
    """
    grads = jax.grad(lambda y: jnp.sum(critic_fn(y)))(x)
    sq = jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1)
    return jnp.mean(jnp.square(jnp.sqrt(sq + 1e-12) - 1.0))  # +1e-12: finite 2nd derivative at 0


def gradient_penalty(critic_fn: Callable[[Array], Array], real: Array, fake: Array,
                     key: Array) -> Array:
    """WGAN-GP penalty (Gulrajani et al. 2017) at random interpolates, without the lambda.

    Each sample gets its own `alpha ~ U[0, 1)`; `x_hat = alpha real + (1 - alpha) fake`.

    Args:
      critic_fn: `[B, ...] -> [B]`, e.g. `lambda x: critic.apply({'params': p}, x)`.
      real, fake: `[B, ...]`, same shape.
      key: PRNG key for alpha.

    Returns:
      `gradient_norm_penalty(critic_fn, x_hat)`; multiply by lambda_gp (10) yourself.
    """
    real, fake = jnp.asarray(real), jnp.asarray(fake)
    _check_same_shape(real, fake, "gradient_penalty")
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    return gradient_norm_penalty(critic_fn, alpha * real + (1.0 - alpha) * fake)
