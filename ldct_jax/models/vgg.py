"""VGG16 / VGG19 feature extractors in torchvision layout, with named taps and weight import.

    vgg = vgg_lib.load("vgg19.safetensors", "vgg19", imagenet_norm=False)  # .pth, dir too
    feats = vgg.features(vgg.params, x, ("conv5_4",))   # x: [..., H, W] -> {tap: [..., h, w, C]}

Layout (torchvision `vgg16` / `vgg19` `.features`): conv 3x3 padding 1, ReLU, and a 2x2 stride-2
max pool between blocks (floor, as torch); no pool after the last tap, no classifier. Taps are
`convB_I` (the conv output, before its ReLU) and `reluB_I` (after it). Only the layers up to the
deepest requested tap are computed.

Units: `features` takes single-channel images `[..., H, W]` in whatever units the caller chooses
and repeats the channel to three. With `imagenet_norm=True` the image is taken as an intensity in
about [0, 1] and normalised with the ImageNet mean/std per channel, as torchvision's pretrained
weights expect; with `imagenet_norm=False` it is fed as is (ldct-benchmark's WGAN-VGG feeds its
network units this way). Outputs are channels-last.

Weights: a torchvision state dict (`.pth`/`.pt`, read with torch if installed,
`weights_only=True`) or a `.safetensors` file (no torch needed) with keys `features.N.weight`
(OIHW) and `features.N.bias`; `classifier.*` keys are ignored; any other key is an error.
`convert(src, dst, arch)` writes the project's own format once: a directory with `params.npz`
(HWIO kernels) and `vgg.json` (arch, source, pretrained). `load` reads all three.

Without ImageNet weights, `random_init` gives a VGG for smoke runs; its `describe()` says so, and
callers must log it and write it into result files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Iterable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ldct_jax.models import conv_params

Params = Any

# Convolutions per block and their channels.
BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT = "ldct_jax.vgg"
FORMAT_VERSION = 1
_PARAMS_FILE = "params.npz"
_META_FILE = "vgg.json"


def _check_arch(arch: str) -> str:
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; expected one of {sorted(BLOCKS)}")
    return arch


def conv_layers(arch: str) -> list[tuple[str, int, int, int]]:
    """`(name, torchvision features index, in channels, out channels)` of every conv, in order."""
    layers, index, cin = [], 0, 3
    for b, n in enumerate(BLOCKS[_check_arch(arch)]):
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


class Conv3x3(nn.Module):
    """`nn.Conv(features, (3, 3), padding=1)` on `[B, H, W, C]`: the same params, init, values
    and dtype promotion.

    On maps smaller than the kernel (VGG's block 5 on patches under 48 px) XLA swaps the
    convolution's operands and adds window reversal, which XLA:CPU runs in a naive loop (a
    WGAN-VGG step at patch 32 took 2x PyTorch's time); there the convolution is a matmul of the
    nine shifted copies instead.
    """

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        x, kernel, bias = conv_params.declare(self, x, self.features, (3, 3), self.kernel_init)
        height, width = x.shape[1:3]
        if min(height, width) >= 3:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                             dimension_numbers=conv_params.NHWC,
                                             precision=self.precision)
        else:
            padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            columns = jnp.concatenate([padded[:, i:i + height, j:j + width]
                                       for i in range(3) for j in range(3)], axis=-1)
            y = jnp.matmul(columns, kernel.reshape(-1, self.features), precision=self.precision)
        return y + bias


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
                x = Conv3x3(CHANNELS[b], kernel_init=init, precision=self.precision,
                            name=name)(x)
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


def random_init(arch: str, key: jax.Array, *, imagenet_norm: bool = True) -> VGG:
    """A VGG with torchvision-style random weights (kaiming normal, fan out; zero biases)."""
    layers = conv_layers(_check_arch(arch))
    # One draw for all kernels (one compiled kernel instead of one per shape), then sliced.
    normal = np.asarray(jax.random.normal(key, (sum(9 * ci * co for _, _, ci, co in layers),)))
    params, start = {}, 0
    for name, _, cin, cout in layers:
        size = 9 * cin * cout
        std = np.sqrt(2.0 / (cout * 9), dtype=np.float32)  # kaiming normal, fan_out, ReLU gain
        params[name] = {"kernel": jnp.asarray(std * normal[start:start + size].reshape(
            3, 3, cin, cout)), "bias": jnp.zeros((cout,), jnp.float32)}
        start += size
    return VGG(arch, params, imagenet_norm=imagenet_norm, pretrained=False, source="random_init")


def params_from_state_dict(state: Mapping[str, Any], arch: str, source: str = "state dict"
                           ) -> Params:
    """Flax params from a torchvision VGG state dict (`features.N.weight` OIHW, `.bias`).

    `classifier.*` is ignored; a missing key, a wrong shape or any other key is a ValueError
    that names the key (and both shapes).
    """
    expected = {}
    for name, index, cin, cout in conv_layers(arch):
        expected[f"features.{index}.weight"] = (name, "kernel", (cout, cin, 3, 3))
        expected[f"features.{index}.bias"] = (name, "bias", (cout,))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith("classifier."))
    if unexpected:
        raise ValueError(
            f"{source}: unexpected keys for {arch.upper()}: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}; expected torchvision keys "
            f"features.N.weight/bias at N in {[i for _, i, _, _ in conv_layers(arch)]} "
            "(classifier.* is ignored). Wrong architecture, or a batch-norm VGG?")
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, (name, kind, shape) in expected.items():
        if key not in state:
            raise ValueError(f"{source}: missing key {key!r} ({arch.upper()} {name} {kind}, "
                             f"expected shape {shape})")
        value = np.asarray(state[key], dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"{source}: key {key!r} ({arch.upper()} {name} {kind}) has shape "
                             f"{tuple(value.shape)}, expected {shape}")
        if kind == "kernel":
            value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        params.setdefault(name, {})[kind] = value
    return jax.tree.map(jnp.asarray, params)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Arrays of a `.pth`/`.pt` (torch, `weights_only=True`) or `.safetensors` file."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    if path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{path}: reading .pth needs PyTorch (pip install "
                              "'ldct-jax[torch]'), or convert it to .safetensors") from e
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: expected a torchvision state dict (name -> tensor), got "
                             f"{type(state).__name__}")
        return {k: v.detach().float().numpy() for k, v in state.items()}
    raise ValueError(f"{path}: unknown VGG weight file; expected .pth/.pt, .safetensors or a "
                     f"directory written by ldct_jax.models.vgg.convert")


def save(vgg: VGG, path: str) -> None:
    """Writes `vgg` in the project's format: directory with params.npz and vgg.json."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; not overwriting VGG weights")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".vgg-tmp-")
    flat = {f"{layer}.{kind}": np.asarray(v) for layer, d in vgg.params.items()
            for kind, v in d.items()}
    np.savez(os.path.join(tmp, _PARAMS_FILE), **flat)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "arch": vgg.arch, "source": vgg.source,
            "pretrained": vgg.pretrained}
    with open(os.path.join(tmp, _META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    os.rename(tmp, path)


def _load_converted(path: str, arch: Optional[str], imagenet_norm: bool) -> VGG:
    meta_path = os.path.join(path, _META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{path}: not a converted VGG directory (no {_META_FILE})")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if arch is not None and meta["arch"] != arch:
        raise ValueError(f"{path}: holds {meta['arch']} weights, but {arch} was asked for")
    with np.load(os.path.join(path, _PARAMS_FILE), allow_pickle=False) as z:
        params: dict[str, dict[str, jax.Array]] = {}
        for key in z.files:
            layer, kind = key.split(".")
            params.setdefault(layer, {})[kind] = jnp.asarray(z[key])
    want = {name: {"kernel": (3, 3, cin, cout), "bias": (cout,)}
            for name, _, cin, cout in conv_layers(meta["arch"])}
    got = {layer: {kind: tuple(v.shape) for kind, v in d.items()} for layer, d in params.items()}
    if want != got:
        raise ValueError(f"{path}: params do not match {meta['arch']}: got {got}, expected {want}")
    return VGG(meta["arch"], params, imagenet_norm=imagenet_norm,
               pretrained=bool(meta["pretrained"]), source=meta["source"])


def load(path: str, arch: Optional[str] = None, *, imagenet_norm: bool = True) -> VGG:
    """Loads a converted directory, a torchvision `.pth`/`.pt` or a `.safetensors` file.

    Args:
      path: the weights.
      arch: 'vgg16' or 'vgg19'; required for `.pth`/`.safetensors`, checked for a directory.
      imagenet_norm: see the module docstring (not stored with the weights: it is how they are
        used).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"VGG weights not found: {path}")
    if os.path.isdir(path):
        return _load_converted(path, arch, imagenet_norm)
    if arch is None:
        raise ValueError(f"{path}: say which architecture it holds (arch='vgg16' or 'vgg19')")
    params = params_from_state_dict(read_state_dict(path), _check_arch(arch), source=path)
    return VGG(arch, params, imagenet_norm=imagenet_norm, pretrained=True,
               source=os.path.abspath(path))


def convert(src: str, dst: str, arch: str) -> VGG:
    """Converts torchvision weights (`.pth` or `.safetensors`) to the project's format at `dst`."""
    vgg = load(src, arch)
    save(vgg, dst)
    return vgg


def from_config(path_or_empty: Optional[str], arch: str, key: jax.Array, *,
                imagenet_norm: bool = True) -> VGG:
    """The VGG a config asks for: weights from `path_or_empty`, or random init if it is empty.

    Random init is logged as a warning; callers also write `vgg.describe()` into results.
    """
    if path_or_empty:
        if not os.path.exists(path_or_empty):
            raise FileNotFoundError(f"VGG weights not found: {path_or_empty!r} (leave the path "
                                    "empty for a random-init VGG in smoke runs)")
        return load(path_or_empty, arch, imagenet_norm=imagenet_norm)
    vgg = random_init(arch, key, imagenet_norm=imagenet_norm)
    logging.warning("no VGG weights given: %s", vgg.describe())
    return vgg
