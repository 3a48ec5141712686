"""The bounded input distances of the invariance search: d_in in "MSE bounded by +1", DSSIM
and a VGG16 perceptual distance.

They work on images in **network units** (`(hu - shift) / scale` of the denoiser under study)
and reduce over the last two axes `[..., H, W] -> [...]`, each in [0, 1]. Their notion of the
valid range is `net_range`: the network units of HU_MIN and HU_MAX, by default those of
ldct-benchmark's normalisation (cnn10, wgan_vgg); for another denoiser pass
`net_range=(spec.to_net(ct.HU_MIN), spec.to_net(ct.HU_MAX))`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ldct_jax import ct
from ldct_jax.metrics import check_same_shape, dssim

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
# The smallest image side it takes: four 2x2 pools before relu5_3.
VGG16_MIN_SIZE = 16


def bounded_mse(a: Array, b: Array) -> Array:
    """`min(MSE, 1)` per image over the last two axes: "MSE bounded by +1" of the search."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    check_same_shape(a, b, "bounded_mse")
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
    check_same_shape(a, b, "vgg16_distance")
    if a.ndim < 2 or min(a.shape[-2:]) < VGG16_MIN_SIZE:
        raise ValueError(f"vgg16_distance: expected images [..., H, W] with H, W >= "
                         f"{VGG16_MIN_SIZE}, got shape {a.shape}")
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
    """The bounded input distance `d_in` called `name`, as `d(a, b) -> [...]`.

    `a`, `b` are `[..., H, W]` in network units; the result is per image, in [0, 1].
    'mse': `bounded_mse`; 'dssim': `dssim` with data range `hi - lo` of `net_range`;
    'vgg16': `vgg16_distance` with `vgg` (required, arch 'vgg16'). Build it inside a jitted
    function that takes `vgg` as an argument (a pytree), so that its params are not embedded
    in the program as 60 MB of constants.
    """
    if name not in INPUT_DISTANCES:
        raise ValueError(f"unknown input distance {name!r}; expected one of "
                         f"{', '.join(INPUT_DISTANCES)}")
    lo, hi = net_range
    if name == "mse":
        return bounded_mse
    if name == "dssim":
        return lambda a, b: dssim(a, b, hi - lo)
    if vgg is None:
        raise ValueError("input distance 'vgg16' needs VGG16 weights: pass "
                         "vgg=ldct_jax.models.vgg_weights.from_config(path, 'vgg16', key)")
    if vgg.arch != "vgg16":
        raise ValueError(f"input distance 'vgg16' needs a VGG16, got {vgg.arch}")
    return lambda a, b: vgg16_distance(vgg, vgg.params, a, b, net_range)
