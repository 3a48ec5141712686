"""The networks of natural invariances: a conditional generator g(x, z) and a patch critic.

Both work in ldct-benchmark's network units (`(hu - LDCTBENCH_SHIFT) / LDCTBENCH_SCALE`,
`to_units`), whatever the denoiser under study, and are fully convolutional: trained on patches,
applied to whole slices. Neither has normalisation layers (the critic's gradient penalty is per
sample).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldct_jax import ct


def to_units(hu):
    """HU -> the units the generator and the critics see."""
    return (hu - ct.LDCTBENCH_SHIFT) / ct.LDCTBENCH_SCALE


def _conv(features: int, x, strides: int = 1):
    return nn.leaky_relu(nn.Conv(features, (3, 3), strides=strides)(x), 0.2)


class InvarianceGenerator(nn.Module):
    """`g(c, z)`: conditions `[B, H, W, C]` and noise `[B, H, W, noise_channels]` -> x_inv
    `[B, H, W]` in HU. The conditions are the image x and, with `condition_on_output`, the
    denoiser's output f(x) (both `to_units`; `ldct_jax.train.natural.conditions`): f(x) is a
    function of x, so this is still g(x, z), but the generator need not learn what f keeps
    and removes from scratch (x - f(x) is the noise f takes out).

    A U-Net with `levels` 2x downsamplings (two 3x3 convolutions per level, skip connections).
    Upsampling repeats pixels and then convolves: transposed convolutions leave checkerboard
    patterns, the very artefact of the image-domain search that natural invariances avoid. The
    last convolution's output is scaled by `out_scale` (network units; 0.1 ~ 50 HU) so that
    early samples are of the size of CT noise. Sides that are not multiples of 2^levels are
    padded (edge values) and the output cropped back.
    """

    features: int = 32
    levels: int = 2
    noise_channels: int = 4
    out_scale: float = 0.1
    condition_on_output: bool = True

    @nn.compact
    def __call__(self, x, z):
        h, w = x.shape[1:3]
        m = 2 ** self.levels
        pad = ((0, 0), (0, -h % m), (0, -w % m), (0, 0))
        a = jnp.concatenate([jnp.pad(x, pad, mode="edge"), jnp.pad(z, pad)], axis=-1)
        skips = []
        for level in range(self.levels):
            f = self.features * 2 ** level
            a = _conv(f, _conv(f, a))
            skips.append(a)
            a = nn.avg_pool(a, (2, 2), strides=(2, 2))
        f = self.features * 2 ** self.levels
        a = _conv(f, _conv(f, a))
        for level in reversed(range(self.levels)):
            a = jnp.repeat(jnp.repeat(a, 2, axis=1), 2, axis=2)
            f = self.features * 2 ** level
            a = _conv(f, jnp.concatenate([_conv(f, a), skips[level]], axis=-1))
        out = nn.Conv(1, (3, 3))(a)[:, :h, :w, 0] * self.out_scale
        return out * ct.LDCTBENCH_SCALE


# The smallest side a PatchCritic takes: two stride-2 convolutions leave at least 2 x 2.
CRITIC_MIN_SIZE = 8


class PatchCritic(nn.Module):
    """A Wasserstein critic: `[B, H, W, 1]` -> `[B]`, the mean of a map of patch scores.

    Four 3x3 convolutions (features, 2x with stride 2, 2x, 4x with stride 2), LeakyReLU 0.2, and
    a 1x1 convolution to one score per position. Fully convolutional, so the same critic scores
    patches and whole slices, and its receptive field (23 px) sees noise texture rather than
    whole organs.
    """

    features: int = 32

    @nn.compact
    def __call__(self, x):
        f = self.features
        a = _conv(4 * f, _conv(2 * f, _conv(2 * f, _conv(f, x), strides=2)), strides=2)
        return jnp.mean(nn.Conv(1, (1, 1))(a), axis=(1, 2, 3))


def downsample(x, stage: int):
    """`[B, H, W]` averaged over 2^stage x 2^stage blocks (stage 0: unchanged); sides that are
    not multiples of 2^stage lose their last rows and columns."""
    f = 2 ** stage
    if f == 1:
        return x
    b, h, w = x.shape
    x = x[:, :h // f * f, :w // f * f]
    return x.reshape(b, h // f, f, w // f, f).mean(axis=(2, 4))


def check_scales(scales: int, patch_size: int, key: str = "critic.scales") -> None:
    """`scales` critics fit patches of `patch_size` px (the coarsest sees at least
    CRITIC_MIN_SIZE px), or a ValueError naming `key`."""
    if scales < 1:
        raise ValueError(f"config.{key}={scales}; expected >= 1")
    coarsest = patch_size // 2 ** (scales - 1)
    if coarsest < CRITIC_MIN_SIZE:
        most = (patch_size // CRITIC_MIN_SIZE).bit_length()
        fix = f"use at most {most} scales or larger patches" if most else \
            f"use patches of at least {CRITIC_MIN_SIZE} px"
        raise ValueError(
            f"config.{key}={scales} is too large for patches of {patch_size} px: the coarsest "
            f"critic would see {coarsest} px, fewer than the {CRITIC_MIN_SIZE} it needs; {fix}")


def critic_scores(critic: PatchCritic, params: dict, x_units) -> jax.Array:
    """Every stage's score of `x_units` `[B, H, W]`: `[B, K]`, critic i on `downsample(x, i)`.

    `params` is `{'stage<i>': params of critic i}` for i = 0..K-1.
    """
    return jnp.stack([critic.apply({"params": params[f"stage{i}"]},
                                   downsample(x_units, i)[..., None])
                      for i in range(len(params))], axis=-1)
