"""VGG16 / VGG19 feature extractors in torchvision layout, with named taps.

    vgg = vgg_weights.load("vgg19.safetensors", "vgg19", imagenet_norm=False)  # .pth, dir too
    feats = vgg.features(vgg.params, x, ("conv5_4",))   # x: [..., H, W] -> {tap: [..., h, w, C]}

Layout (torchvision `vgg16` / `vgg19` `.features`): conv 3x3 padding 1, ReLU, and a 2x2 stride-2
max pool between blocks (floor, as torch); no pool after the last tap, no classifier. Taps are
`convB_I` (the conv output, before its ReLU) and `reluB_I` (after it). Only the layers up to the
deepest requested tap are computed.

Units: `features` takes single-channel images `[..., H, W]` in whatever units the caller chooses
and repeats the channel to three. With `imagenet_norm=True` the image is taken as an intensity in
about [0, 1] and normalised with the ImageNet mean/std per channel, as torchvision's pretrained
weights expect; with `imagenet_norm=False` it is fed as is (ldct-benchmark's WGAN-VGG feeds its
network units this way). Outputs are channels-last. Weights: `ldct_jax.models.vgg_weights`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any

# Convolutions per block and their channels.
BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_arch(arch: str) -> str:
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; expected one of {sorted(BLOCKS)}")
    return arch


def conv_layers(arch: str) -> list[tuple[str, int, int, int]]:
    """`(name, torchvision features index, in channels, out channels)` of every conv, in order."""
    layers, index, cin = [], 0, 3
    for b, n in enumerate(BLOCKS[check_arch(arch)]):
        for i in range(n):
            layers.append((f"conv{b + 1}_{i + 1}", index, cin, CHANNELS[b]))
            cin = CHANNELS[b]
            index += 2  # conv, ReLU
        index += 1  # max pool
    return layers


def tap_names(arch: str) -> tuple[str, ...]:
    """All taps of `arch` in network order: conv1_1, relu1_1, conv1_2, ..."""
    names = []
    for name, *_ in conv_layers(arch):
        names += [name, "relu" + name[4:]]
    return tuple(names)


def _normalise_taps(arch: str, taps: Union[str, Iterable[str]]) -> tuple[str, ...]:
    taps = (taps,) if isinstance(taps, str) else tuple(taps)
    valid = tap_names(arch)
    unknown = [t for t in taps if t not in valid]
    if unknown or not taps:
        raise ValueError(f"{arch}: unknown taps {unknown or '(none given)'}; valid taps are "
                         f"{', '.join(valid)}")
    return taps


class VGGFeatures(nn.Module):
    """torchvision VGG `.features` on `[B, H, W, 3]`, returning `{tap: [B, h, w, C]}` for `taps`.

    Stops after the deepest requested tap, so shallow taps do not pay for deep blocks.
    """

    arch: str = "vgg16"
    taps: tuple[str, ...] = ("relu5_3",)
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        order = tap_names(self.arch)
        wanted = set(_normalise_taps(self.arch, self.taps))
        deepest = max(order.index(t) for t in wanted)
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's init
        out, position = {}, 0
        for b, n in enumerate(BLOCKS[self.arch]):
            if b > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in range(n):
                name = f"conv{b + 1}_{i + 1}"
                x = nn.Conv(CHANNELS[b], (3, 3), padding=1, kernel_init=init,
                            precision=self.precision, name=name)(x)
                if name in wanted:
                    out[name] = x
                x = nn.relu(x)
                if "relu" + name[4:] in wanted:
                    out["relu" + name[4:]] = x
                position += 2
                if position > deepest:
                    return out
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class VGG:
    """A VGG feature extractor with its weights. A pytree: `params` are its only leaves.

    Attributes:
      arch: 'vgg16' or 'vgg19'.
      params: Flax params `{convB_I: {kernel: HWIO, bias}}`.
      imagenet_norm: normalise `[0, 1]` intensities with ImageNet mean/std before the network.
      pretrained: True when the weights were loaded from a file, False for `random_init`.
      source: where the weights came from (a path, or 'random_init(seed key)').
    """

    arch: str
    params: Params
    imagenet_norm: bool = True
    pretrained: bool = True
    source: str = ""

    def features(self, params: Params, x: jax.Array,
                 taps: Union[str, Iterable[str]]) -> dict[str, jax.Array]:
        """Feature maps of `x` at `taps`.

        Args:
          params: the VGG params (pass `vgg.params`; an argument so jit does not bake them in).
          x: `[..., H, W]` single-channel images (units: see the module docstring).
          taps: a tap name or names, e.g. 'conv5_4' or ('relu1_2', 'relu2_2').

        Returns:
          `{tap: [..., h, w, C]}`, channels last.
        """
        taps = _normalise_taps(self.arch, taps)
        x = jnp.asarray(x, jnp.float32)
        if x.ndim < 2:
            raise ValueError(f"VGG features: expected images [..., H, W], got shape {x.shape}")
        lead = x.shape[:-2]
        x = jnp.repeat(x.reshape((-1,) + x.shape[-2:])[..., None], 3, axis=-1)
        if self.imagenet_norm:
            x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        out = VGGFeatures(self.arch, taps).apply({"params": params}, x)
        return {t: f.reshape(lead + f.shape[1:]) for t, f in out.items()}

    def describe(self) -> str:
        """One line for logs and result files; says loudly when the weights are random."""
        name = self.arch.upper()
        if not self.pretrained:
            return (f"{name} features, RANDOM INIT (no ImageNet weights: perceptual results are "
                    "not meaningful)")
        norm = "ImageNet mean/std" if self.imagenet_norm else "no input normalisation"
        return f"{name} features, weights from {self.source}, {norm}"

    def replace(self, **changes) -> "VGG":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    VGG, data_fields=["params"], meta_fields=["arch", "imagenet_norm", "pretrained", "source"])
