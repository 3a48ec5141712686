"""Saving and loading denoisers as self-describing directories.

    <path>/model.json   format, version, name, module config, shift, scale, param shapes,
                        and the sha256 of name, config, shift, scale and params
    <path>/params/      the params, written by orbax (absent when the model has none)

`load(path)` needs nothing else, and refuses params that do not match their checksum or are not
finite. Writing is atomic (`files.atomic_dir`). Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import files, parallel
from ldct_jax.models.denoiser import Denoiser, Params
from ldct_jax.models.registry import ARCHITECTURES, param_shapes, spec

FORMAT = "ldct_jax.denoiser"
FORMAT_VERSION = 2   # 2: sha256; version 1 (without it) is still read
META_FILE = "model.json"
PARAMS_DIR = "params"


def flat(params: Params) -> dict[str, Any]:
    """`{'layer/kind': array}` of a params tree."""
    return flax.traverse_util.flatten_dict(params, sep="/") if params else {}


def unflat(flat_params: Mapping[str, Any]) -> Params:
    """The params tree of `{'layer/kind': array}` (as jax arrays)."""
    if not flat_params:
        return {}
    return flax.traverse_util.unflatten_dict(
        {k: jnp.asarray(v) for k, v in flat_params.items()}, sep="/")


def check_params(flat_params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                 what: str) -> None:
    """Raises ValueError naming missing/unexpected keys or a key whose shape differs."""
    missing = sorted(set(expected) - set(flat_params))
    unexpected = sorted(set(flat_params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: params do not match the architecture: missing keys "
                         f"{missing}, unexpected keys {unexpected}")
    wrong = [f"{k!r} {tuple(flat_params[k].shape)}, expected {tuple(expected[k])}"
             for k in sorted(expected) if tuple(flat_params[k].shape) != tuple(expected[k])]
    if wrong:
        raise ValueError(f"{what}: param shapes differ from the architecture's: "
                         f"{'; '.join(wrong)}")


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = files.plain(config)
    try:
        json.dumps(out)
    except TypeError as e:
        raise ValueError(f"save: the module config {out} is not JSON-serialisable: {e}") from e
    return out


def _module_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; Flax module fields must be hashable.
    def tup(v):
        return tuple(tup(u) for u in v) if isinstance(v, list) else v

    return {k: tup(v) for k, v in config.items()}


def check_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    """Raises ValueError naming `what` and the NaN/inf count per key if an array is not
    finite."""
    bad = {k: int(np.size(v) - np.isfinite(v).sum()) for k, v in sorted(arrays.items())
           if not np.all(np.isfinite(v))}
    if bad:
        raise ValueError(f"{what}: non-finite params (NaN/inf count per key: {bad}); a model "
                         "must be finite")


def _checkpointer():
    import orbax.checkpoint as ocp

    # Only the calling process takes part: the jobs save from process 0 alone, so a barrier
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
    if d.spec.name not in ARCHITECTURES:
        raise ValueError(f"save: unknown architecture {d.spec.name!r}")
    arrays = parallel.to_host(flat(d.params))
    check_finite(arrays, f"save {path}")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "name": d.spec.name,
            "config": _json_config(d.spec.config), "shift": float(d.spec.shift),
            "scale": float(d.spec.scale),
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in sorted(arrays.items())}}
    meta["sha256"] = _checksum(meta, arrays)
    with files.atomic_dir(path, overwrite=overwrite) as tmp:
        if arrays:
            with _checkpointer() as ckpt:
                ckpt.save(os.path.join(tmp, PARAMS_DIR),
                          flax.traverse_util.unflatten_dict(arrays, sep="/"))
                ckpt.wait_until_finished()
        files.write_json(os.path.join(tmp, META_FILE), meta)


def _checksum(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 of what the model computes: its name, config, normalisation and params."""
    described = json.dumps({k: meta[k] for k in ("name", "config", "shift", "scale")},
                           sort_keys=True)
    return hashlib.sha256((described + files.digest([arrays[k] for k in sorted(arrays)])
                           ).encode()).hexdigest()


def _read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        hint = (" (it holds VGG weights: use ldct_jax.models.vgg_weights.load)"
                if os.path.isfile(os.path.join(path, "vgg.json")) else "")
        raise ValueError(f"{path}: not a saved denoiser: no {META_FILE} (expected a directory "
                         f"written by ldct_jax.models.save){hint}")
    try:
        meta = files.read_json(meta_path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: format {got!r}, expected {FORMAT!r}")
    if meta.get("version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{meta_path}: format version {meta.get('version')!r}; this ldct-jax "
                         f"reads versions 1 to {FORMAT_VERSION}")
    required = ("name", "config", "shift", "scale") + (
        ("sha256",) if meta["version"] >= 2 else ())
    for key in required:
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    if meta["name"] not in ARCHITECTURES:
        raise ValueError(f"{meta_path}: unknown architecture {meta['name']!r}; expected one of "
                         f"{sorted(ARCHITECTURES)}")
    return meta


def load(path: str) -> Denoiser:
    """Loads a denoiser written by `save`. ValueError, naming `path`, if it is not one."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such model directory (expected a directory written "
                                "by ldct_jax.models.save)")
    meta = _read_meta(path)
    name = meta["name"]
    try:
        s = spec(name, **_module_config(meta["config"]))
        expected = param_shapes(s)
    except TypeError as e:
        raise ValueError(f"{os.path.join(path, META_FILE)}: config {meta['config']} does not "
                         f"fit {name}: {e}") from e
    params_dir = os.path.join(path, PARAMS_DIR)
    arrays: dict[str, Any] = {}
    if expected:
        if not os.path.isdir(params_dir):
            raise ValueError(f"{path}: {name} has params but there is no {PARAMS_DIR}/ directory")
        try:
            with _checkpointer() as ckpt:
                arrays = flat(ckpt.restore(params_dir))
        except Exception as e:  # orbax raises many kinds; say where and what was expected
            raise ValueError(f"{params_dir}: could not restore the {name} params (expected an "
                             f"orbax checkpoint written by ldct_jax.models.save): {e}") from e
    check_params(arrays, expected, path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if "sha256" in meta and _checksum(meta, arrays) != meta["sha256"]:
        raise ValueError(f"{path}: the params or the model's description do not match the "
                         f"checksum in {META_FILE} (changed or corrupted since they were "
                         "saved); not loading them")
    check_finite(arrays, params_dir)
    s = dataclasses.replace(s, shift=float(meta["shift"]), scale=float(meta["scale"]))
    return Denoiser(s, unflat(arrays))
