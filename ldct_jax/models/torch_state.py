"""The one reader of PyTorch state dicts: `.pt`/`.pth` files (torch, `weights_only=True`) and
`.safetensors` files (no torch needed), as name -> float32 numpy array."""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional

import numpy as np

from ldct_jax.models import saved


def read(path: str, what: str = "a PyTorch state dict") -> dict[str, np.ndarray]:
    """The tensors of a checkpoint file (`read_with_args` without the args)."""
    return read_with_args(path, what)[0]


def read_with_args(path: str, what: str = "a PyTorch state dict"
                   ) -> tuple[dict[str, np.ndarray], Optional[argparse.Namespace]]:
    """The tensors of a checkpoint file, and the `args` saved beside them (ldct-benchmark's
    command-line Namespace; None if there are none).

    A `.pt`/`.pth` may hold a bare state dict or a dict with `model_state_dict` (as
    ldct-benchmark saves it, beside `args`: an `argparse.Namespace`, the only class unpickled,
    or a dict of the same fields); keys of a model saved from `nn.DataParallel` lose their
    `module.` prefix. Weights must be finite.

    Args:
      path: the file.
      what: what the file should hold, for error messages.

    Raises:
      FileNotFoundError, ImportError (a `.pt` without PyTorch, saying how to get it), or
      ValueError naming `path` when it holds anything else or a NaN/inf weight.
    """
    if path.endswith(".safetensors"):
        _check_exists(path, what)
        from safetensors.numpy import load_file
        try:
            state = {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ValueError(f"{path}: could not read as a .safetensors file: {e}") from e
        saved.check_finite(state, path)
        return state, None
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading a PyTorch checkpoint needs PyTorch (pip install "
                          "'ldct-jax[torch]'), or convert it to .safetensors") from e
    _check_exists(path, what)
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError/RuntimeError, version-dependent
            raise ValueError(f"{path}: could not read as a PyTorch checkpoint with "
                             f"weights_only=True: {e}") from e
    args = None
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        args = obj.get("args")
        if isinstance(args, Mapping):
            args = argparse.Namespace(**args)
        elif args is not None and not isinstance(args, argparse.Namespace):
            raise ValueError(f"{path}: 'args' is a {type(args).__name__}; expected "
                             "ldct-benchmark's argparse.Namespace (or a dict of its fields)")
        obj = obj["model_state_dict"]
    if not _is_state_dict(obj, torch.Tensor):
        raise ValueError(f"{path}: expected {what} (name -> tensor, bare or under "
                         f"'model_state_dict'), got {_describe(obj, torch.Tensor)}")
    state = {k: v.detach().float().cpu().numpy() for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    saved.check_finite(state, path)
    return state, args


def _is_state_dict(obj, tensor: type) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, tensor) for v in obj.values())


def _describe(obj, tensor: type) -> str:
    """What a file holds instead of a state dict, e.g. "a dict with keys ['state_dict']
    ('state_dict' holds a state dict of 6 tensors)"."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    keys = list(obj)
    shown = keys[:8] + (["..."] if len(keys) > 8 else [])
    nested = [f"{k!r} holds a state dict of {len(v)} tensors" for k, v in obj.items()
              if _is_state_dict(v, tensor)]
    return f"a dict with keys {shown}" + (
        f" ({'; '.join(nested)}: save it alone or under 'model_state_dict')" if nested else "")


def _check_exists(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
