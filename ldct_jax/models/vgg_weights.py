"""VGG weights: torchvision state dicts, the project's converted format, random init.

Weights: a torchvision state dict (`.pth`/`.pt`, read with torch if installed,
`weights_only=True`) or a `.safetensors` file (no torch needed) with keys `features.N.weight`
(OIHW) and `features.N.bias`; `classifier.*` keys are ignored; any other key is an error.
`convert(src, dst, arch)` writes the project's own format once: a directory with `params.npz`
(HWIO kernels) and `vgg.json` (arch, source, pretrained). `load` reads all three.

Without ImageNet weights, `random_init` gives a VGG for smoke runs; its `describe()` says so, and
callers must log it and write it into result files.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ldct_jax import files
from ldct_jax.models import saved, torch_state
from ldct_jax.models.vgg import VGG, Params, check_arch, conv_layers

FORMAT = "ldct_jax.vgg"
FORMAT_VERSION = 1
PARAMS_FILE = "params.npz"
META_FILE = "vgg.json"


def random_init(arch: str, key: jax.Array, *, imagenet_norm: bool = True) -> VGG:
    """A VGG with torchvision-style random weights (kaiming normal, fan out; zero biases)."""
    layers = conv_layers(check_arch(arch))
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
    """Arrays of a `.pth`/`.pt` or `.safetensors` file (`torch_state.read`)."""
    if not path.endswith((".pth", ".pt", ".safetensors")):
        raise ValueError(f"{path}: unknown VGG weight file; expected .pth/.pt, .safetensors or "
                         "a directory written by ldct_jax.models.vgg_weights.convert")
    return torch_state.read(path, "a torchvision VGG state dict")


def save(vgg: VGG, path: str) -> None:
    """Writes `vgg` in the project's format, atomically: a directory with params.npz, vgg.json."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; not overwriting VGG weights")
    arrays = {f"{layer}.{kind}": np.asarray(v) for layer, d in vgg.params.items()
              for kind, v in d.items()}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "arch": vgg.arch, "source": vgg.source,
            "pretrained": vgg.pretrained}
    with files.atomic_dir(path) as tmp:
        np.savez(os.path.join(tmp, PARAMS_FILE), **arrays)
        files.write_json(os.path.join(tmp, META_FILE), meta)


def _load_converted(path: str, arch: Optional[str], imagenet_norm: bool) -> VGG:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{path}: not a converted VGG directory (no {META_FILE})")
    meta = files.read_json(meta_path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if arch is not None and meta["arch"] != arch:
        raise ValueError(f"{path}: holds {meta['arch']} weights, but {arch} was asked for")
    params_path = os.path.join(path, PARAMS_FILE)
    try:
        with np.load(params_path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except Exception as e:  # missing, truncated (BadZipFile) or not an .npz
        raise ValueError(f"{params_path}: could not read the VGG weights: {e}") from e
    saved.check_finite(arrays, params_path)
    params: dict[str, dict[str, jax.Array]] = {}
    for key, v in arrays.items():
        layer, _, kind = key.partition(".")
        params.setdefault(layer, {})[kind] = jnp.asarray(v)
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
    params = params_from_state_dict(read_state_dict(path), check_arch(arch), source=path)
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
