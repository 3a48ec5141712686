"""The jobs: what `launch/main.py` runs, from a config and a workdir.

Each job is `run(config: ConfigDict, workdir: str)`, importable and callable from a notebook as
well as from `launch/main.py`; `run` here dispatches on the config's `job` field. The jobs own
everything the library leaves out: configs and their keys, workdirs, resumable sweeps, logs and
reports.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
from typing import Any

import ml_collections

# job name -> "module:function"; imported lazily so that one job's dependencies do not slow the
# others' start.
JOBS: dict[str, str] = {
    "data": "ldct_jax.jobs.data:run",
    "train": "ldct_jax.jobs.train:run",
    "invariance": "ldct_jax.jobs.invariance:run",
    "attack": "ldct_jax.jobs.attack:run",
    "jacobian": "ldct_jax.jobs.jacobian:run",
    "zoo": "ldct_jax.jobs.zoo:run",
    "natural": "ldct_jax.jobs.natural:run",
}


def default_workdir(config_arg: str) -> str:
    """`configs/wgan.py:paper` -> `runs/wgan_paper`; `configs/invariance.py:cnn10,paper` ->
    `runs/invariance_cnn10_paper` (a preset's separators become `_`, so the name is safe in
    shells and CSV files)."""
    path, _, preset = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    preset = re.sub(r"[^A-Za-z0-9.-]+", "_", preset).strip("_")
    return os.path.join("runs", f"{name}_{preset}" if preset else name)


def run(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """Runs the job `config.job` names; returns what it returns (e.g. the training job's
    `{'step', 'stopped', ...}`)."""
    job = config.get("job")
    if job not in JOBS:
        raise ValueError(f"config.job={job!r} is not a job; expected one of {sorted(JOBS)}")
    module_name, function = JOBS[job].split(":")
    return getattr(importlib.import_module(module_name), function)(config, workdir)


def exit_code(result: Any) -> int:
    """The process exit status for a job's result: 128 + the signal number when a stop signal
    ended it early (143 for SIGTERM, 130 for Ctrl-C), so that `train && sweep` chains stop
    there; 0 otherwise."""
    stopped = result.get("stopped") if isinstance(result, dict) else None
    if not stopped:
        return 0
    # Another host's signal stops this one too; it reports SIGTERM.
    return 128 + signal.Signals.__members__.get(stopped, signal.SIGTERM).value
