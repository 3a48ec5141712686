"""Dispatch from a config's `job` field to the function that runs it.

Each job is `run(config: ConfigDict, workdir: str) -> None`, importable and callable from a
notebook as well as from `launch/main.py`.
"""

from __future__ import annotations

import importlib
import os
import re

import ml_collections

# job name -> "module:function"; imported lazily so that one job's dependencies do not slow the
# others' start.
JOBS: dict[str, str] = {
    "data": "ldct_jax.data.job:run",
    "train": "ldct_jax.train.job:run",
    "invariance": "ldct_jax.invariance.sweep:run",
    "attack": "ldct_jax.invariance.attack_sweep:run",
}


def default_workdir(config_arg: str) -> str:
    """`configs/wgan.py:paper` -> `runs/wgan_paper`; `configs/invariance.py:cnn10,paper` ->
    `runs/invariance_cnn10_paper` (a preset's separators become `_`, so the name is safe in
    shells and CSV files)."""
    path, _, preset = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    preset = re.sub(r"[^A-Za-z0-9.-]+", "_", preset).strip("_")
    return os.path.join("runs", f"{name}_{preset}" if preset else name)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    job = config.get("job")
    if job not in JOBS:
        raise ValueError(f"config.job={job!r} is not a job; expected one of {sorted(JOBS)}")
    module_name, function = JOBS[job].split(":")
    getattr(importlib.import_module(module_name), function)(config, workdir)
