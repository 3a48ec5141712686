"""Saving and loading denoisers, and importing ldct-benchmark (PyTorch) checkpoints.

A saved denoiser is a directory that describes itself:

    <path>/model.json   format, version, name, module config, shift, scale, param shapes
    <path>/params/      the params, written by orbax (absent when the model has none)

`load(path)` needs nothing else. Writing is atomic: everything goes into a temporary directory
beside `path`, which is renamed to `path` at the end. Nothing is pickled.

ldct-benchmark (github.com/eeulig/ldct-benchmark) saves `torch.save({"args": Namespace,
"iteration": int, "model_state_dict": state_dict}, "best_SSIM.pt")`; its CNN-10 keys are
`layers.{0,2,4}.{weight,bias}`, its WGAN-VGG generator's `net.{0,2,...,14}.*` and its critic's
`net.{0,2,...,10}.*`, `fc1.*`, `fc2.*`. Conv weights are OIHW. Its inputs are normalised as
`ct.LDCTBENCH_SHIFT/SCALE`, which is what `cnn10` and `wgan_vgg` use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax.models import wgan_vgg
from ldct_jax.models.denoiser import Denoiser, Params
from ldct_jax.models.registry import ARCHITECTURES, architecture, build

FORMAT = "ldct_jax.denoiser"
FORMAT_VERSION = 1
META_FILE = "model.json"
PARAMS_DIR = "params"

# ldct-benchmark state-dict prefix of each of our conv layers, per architecture.
LDCTBENCH_LAYERS: dict[str, dict[str, str]] = {
    "cnn10": {"conv1": "layers.0", "conv2": "layers.2", "conv3": "layers.4"},
    "wgan_vgg": {f"conv{i + 1}": f"net.{2 * i}" for i in range(8)},
}
_CRITIC_LAYERS = {**{f"conv{i + 1}": f"net.{2 * i}" for i in range(6)}, "fc1": "fc1",
                  "fc2": "fc2"}


# ---------------------------------------------------------------------------------------------
# save / load


def _flat(params: Params) -> dict[str, Any]:
    if not params:
        return {}
    return flax.traverse_util.flatten_dict(params, sep="/")


def _host_array(x) -> np.ndarray:
    """A numpy copy of a (possibly sharded, replicated) array."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.sharding.is_fully_replicated:
            raise ValueError("save: params must be replicated (or local) to be saved by one "
                             f"process; got a sharded array of shape {x.shape}")
        x = x.addressable_data(0)
    return np.asarray(jax.device_get(x))


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(u) for u in v]
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            return v.item()
        return v

    out = {k: plain(v) for k, v in dict(config).items()}
    try:
        json.dumps(out)
    except TypeError as e:
        raise ValueError(f"save: the module config {out} is not JSON-serialisable: {e}") from e
    return out


def _full_config(d: Denoiser) -> dict[str, Any]:
    """Every constructor field of the module, so later changes of defaults cannot alter it."""
    return {**{f.name: getattr(d.module, f.name) for f in dataclasses.fields(d.module)
               if f.init and f.name not in ("parent", "name")}, **dict(d.config)}


def _module_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; Flax module fields must be hashable.
    def tup(v):
        return tuple(tup(u) for u in v) if isinstance(v, list) else v

    return {k: tup(v) for k, v in config.items()}


def _checkpointer():
    import orbax.checkpoint as ocp

    # Only the calling process takes part: job.py saves from process 0 alone, so a barrier
    # across all hosts would never be reached.
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def save(d: Denoiser, path: str, *, overwrite: bool = False) -> None:
    """Writes denoiser `d` as a self-describing directory at `path` (atomically).

    Args:
      d: the denoiser; its params may be jax or numpy arrays (replicated if sharded).
      path: the directory to create.
      overwrite: replace an existing directory at `path` (else FileExistsError).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; not overwriting a saved model (overwrite=True)")
    architecture(d.name)
    flat = {k: _host_array(v) for k, v in _flat(d.params).items()}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": d.name,
            "config": _json_config(_full_config(d)), "shift": float(d.shift),
            "scale": float(d.scale),
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in sorted(flat.items())}}
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a saved model is meant to be shared
    try:
        if flat:
            with _checkpointer() as ckpt:
                ckpt.save(os.path.join(tmp, PARAMS_DIR),
                          flax.traverse_util.unflatten_dict(flat, sep="/"))
                ckpt.wait_until_finished()
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.old-")
            os.rename(path, os.path.join(old, "model"))
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _expected_shapes(name: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Flat param shapes of architecture `name` with module `config` (nothing is computed)."""
    module = architecture(name).module(**config)
    shapes = jax.eval_shape(module.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
    return {k: tuple(v.shape) for k, v in _flat(shapes.get("params", {})).items()}


def check_params(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                 what: str) -> None:
    """Raises ValueError naming missing/unexpected keys or a key whose shape differs."""
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: params do not match the architecture: missing keys "
                         f"{missing}, unexpected keys {unexpected}")
    wrong = [f"{k!r} {tuple(flat[k].shape)}, expected {tuple(expected[k])}"
             for k in sorted(expected) if tuple(flat[k].shape) != tuple(expected[k])]
    if wrong:
        raise ValueError(f"{what}: param shapes differ from the architecture's: "
                         f"{'; '.join(wrong)}")


def load(path: str) -> Denoiser:
    """Loads a denoiser written by `save`. ValueError, naming `path`, if it is not one."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such model directory (expected a directory written "
                                "by ldct_jax.models.save)")
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        hint = (" (it holds VGG weights: use ldct_jax.models.vgg.load)"
                if os.path.isfile(os.path.join(path, "vgg.json")) else "")
        raise ValueError(f"{path}: not a saved denoiser: no {META_FILE} (expected a directory "
                         f"written by ldct_jax.models.save){hint}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: format {got!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format version {meta.get('version')!r}; this ldct-jax "
                         f"reads version {FORMAT_VERSION}")
    for key in ("name", "config", "shift", "scale"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    name = meta["name"]
    if name not in ARCHITECTURES:
        raise ValueError(f"{meta_path}: unknown architecture {name!r}; expected one of "
                         f"{sorted(ARCHITECTURES)}")
    config = _module_config(meta["config"])
    try:
        expected = _expected_shapes(name, config)
    except TypeError as e:
        raise ValueError(f"{meta_path}: config {meta['config']} does not fit {name}: {e}") from e
    params_dir = os.path.join(path, PARAMS_DIR)
    if expected:
        if not os.path.isdir(params_dir):
            raise ValueError(f"{path}: {name} has params but there is no {PARAMS_DIR}/ directory")
        try:
            with _checkpointer() as ckpt:
                restored = ckpt.restore(params_dir)
        except Exception as e:  # orbax raises many kinds; say where and what was expected
            raise ValueError(f"{params_dir}: could not restore the {name} params (expected an "
                             f"orbax checkpoint written by ldct_jax.models.save): {e}") from e
        flat = _flat(restored)
    else:
        flat = {}
    check_params(flat, expected, path)
    params = flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flat.items()}, sep="/") if flat else {}
    return build(name, params, **config).replace(shift=float(meta["shift"]),
                                                 scale=float(meta["scale"]))


# ---------------------------------------------------------------------------------------------
# ldct-benchmark import


def _read_torch_state(path: str) -> dict[str, np.ndarray]:
    """`model_state_dict` of an ldct-benchmark `.pt` (or a bare state dict) as numpy arrays."""
    import argparse

    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: importing an ldct-benchmark checkpoint needs PyTorch "
                          "(pip install 'ldct-jax[torch]')") from e
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    # ldct-benchmark stores its argparse.Namespace beside the weights; allow only that class.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError/RuntimeError, version-dependent
            raise ValueError(f"{path}: could not read as a PyTorch checkpoint with "
                             f"weights_only=True: {e}") from e
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected an ldct-benchmark checkpoint (a dict with "
                         "'model_state_dict': name -> tensor) or a bare state dict")
    state = {k: v.detach().float().cpu().numpy() for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _torch_shape(flax_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if flax_key.endswith("kernel") and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
    if flax_key.endswith("kernel") and len(shape) == 2:
        return (shape[1], shape[0])  # Dense (in, out) -> Linear (out, in)
    return shape


def _torch_key(layers: Mapping[str, str], flax_key: str) -> str:
    layer, kind = flax_key.split("/")
    return f"{layers[layer]}.{'weight' if kind == 'kernel' else 'bias'}"


def _convert(state: Mapping[str, np.ndarray], layers: Mapping[str, str],
             expected: Mapping[str, tuple[int, ...]], what: str, path: str,
             hint: str = "") -> dict[str, np.ndarray]:
    """Flat Flax params from a torch state dict, checking keys and shapes."""
    want = {_torch_key(layers, k): (k, _torch_shape(k, s)) for k, s in expected.items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{path}: not an ldct-benchmark {what} checkpoint: missing keys "
                         f"{missing}, unexpected keys {unexpected}{hint}")
    flat = {}
    for tkey, (fkey, shape) in want.items():
        value = state[tkey]
        if value.shape != shape:
            raise ValueError(f"{path}: key {tkey!r} ({what} {fkey}) has shape "
                             f"{tuple(value.shape)}, expected {shape}")
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            value = value.T
        flat[fkey] = np.ascontiguousarray(value, dtype=np.float32)
    return flat


def _which_architecture(state: Mapping[str, np.ndarray]) -> str:
    for name, layers in LDCTBENCH_LAYERS.items():
        keys = {f"{p}.{s}" for p in layers.values() for s in ("weight", "bias")}
        if keys == set(state):
            return f" (its keys are those of an ldct-benchmark {name})"
    return ""


def import_ldctbench(path: str, name: str) -> Denoiser:
    """A denoiser from an ldct-benchmark checkpoint (`.pt` with `model_state_dict`).

    Args:
      path: the `.pt` file (read with `torch.load(..., weights_only=True)`; needs PyTorch).
      name: 'cnn10' or 'wgan_vgg' (the generator).

    Returns:
      The denoiser, with ldct-benchmark's normalisation (`ct.LDCTBENCH_SHIFT/SCALE`), giving the
      same HU output as the PyTorch model.

    Raises:
      ValueError naming the missing/unexpected keys, or a key and both shapes, when the
      checkpoint is for another architecture.
    """
    if name not in LDCTBENCH_LAYERS:
        raise ValueError(f"import_ldctbench: no ldct-benchmark mapping for {name!r}; expected "
                         f"one of {sorted(LDCTBENCH_LAYERS)}")
    path = os.fspath(path)
    state = _read_torch_state(path)
    flat = _convert(state, LDCTBENCH_LAYERS[name], _expected_shapes(name, {}), name, path,
                    _which_architecture(state))
    params = flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return build(name, params)


def import_ldctbench_critic(path: str, patch_size: int) -> tuple[wgan_vgg.Critic, Params]:
    """The WGAN-VGG critic of an ldct-benchmark `Discriminator(input_size=patch_size)`.

    Args:
      path: a `.pt` holding the critic's state dict (bare, or under `model_state_dict`).
      patch_size: the side of the square patches it was built for (fixes fc1's size).

    Returns:
      `(critic, params)` as `wgan_vgg.init_critic` gives them; scores match PyTorch's.
    """
    path = os.fspath(path)
    critic = wgan_vgg.Critic()
    size = wgan_vgg.critic_output_size(patch_size, critic.strides)
    shapes = jax.eval_shape(critic.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, patch_size, patch_size, 1), jnp.float32))
    expected = {k: tuple(v.shape) for k, v in _flat(shapes["params"]).items()}
    state = dict(_read_torch_state(path))
    if "fc1.weight" in state and state["fc1.weight"].ndim == 2:
        # PyTorch flattens C, H, W; Flax flattens H, W, C.
        w = state["fc1.weight"]
        c = critic.features[-1]
        if w.shape[1] == c * size * size:
            state["fc1.weight"] = w.reshape(w.shape[0], c, size, size).transpose(
                0, 2, 3, 1).reshape(w.shape[0], -1)
    flat = _convert(state, _CRITIC_LAYERS, expected, f"WGAN-VGG critic (patch {patch_size})",
                    path)
    params = flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return critic, params
