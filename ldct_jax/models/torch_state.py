"""The one reader of PyTorch state dicts: `.pt`/`.pth` files (torch, `weights_only=True`) and
`.safetensors` files (no torch needed), as name -> float32 numpy array."""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional

import numpy as np


def read(path: str, what: str = "a PyTorch state dict") -> dict[str, np.ndarray]:
    """The tensors of a checkpoint file (`read_with_args` without the args)."""
    return read_with_args(path, what)[0]


def read_with_args(path: str, what: str = "a PyTorch state dict"
                   ) -> tuple[dict[str, np.ndarray], Optional[argparse.Namespace]]:
    """The tensors of a checkpoint file, and the `args` saved beside them (ldct-benchmark's
    command-line Namespace; None if there are none).

    A `.pt`/`.pth` may hold a bare state dict or a dict with `model_state_dict` (as
    ldct-benchmark saves it, beside an `argparse.Namespace`, the only class unpickled); keys of
    a model saved from `nn.DataParallel` lose their `module.` prefix.

    Args:
      path: the file.
      what: what the file should hold, for error messages.

    Raises:
      FileNotFoundError, ImportError (a `.pt` without PyTorch, saying how to get it), or
      ValueError naming `path` when it holds anything else.
    """
    if path.endswith(".safetensors"):
        _check_exists(path, what)
        from safetensors.numpy import load_file
        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}, None
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
        args = args if isinstance(args, argparse.Namespace) else None
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected {what} (name -> tensor, bare or under "
                         f"'model_state_dict'), got {type(obj).__name__}")
    state = {k: v.detach().float().cpu().numpy() for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, args


def _check_exists(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
