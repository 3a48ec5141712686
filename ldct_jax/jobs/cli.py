"""The command line: `ldct-jax --config=configs/<job>.py[:preset] [--workdir=DIR]` (installed by
`pip install -e .`), the same as `python launch/main.py ...`.

Every config field can be overridden as `--config.a.b=value`. The config's `job` field picks the
job; all logic lives in `ldct_jax.jobs` and the modules it names. A `--config=configs/...` path
that does not exist in the working directory is looked up in the repository ldct-jax was
installed from, so the command finds its configs from any directory (default workdirs and
checkpoints, like runs/cnn10/model, stay relative to the working directory).
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ldct_jax import jobs
from ldct_jax.jobs import configs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Job config: configs/<job>.py[:preset].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the job writes (and resumes from). Default: runs/<config>[_<preset>].")
flags.mark_flags_as_required(["config"])

# The repository an editable install points to (holds configs/).
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _OrbaxInfoFilter(std_logging.Filter):
    """Drops orbax's INFO lines (a dozen per checkpoint) so the progress bar stays readable."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _main(argv: list[str]) -> int:
    logging.get_absl_handler().addFilter(_OrbaxInfoFilter())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = _WORKDIR.value or jobs.default_workdir(flags.FLAGS["config"].config_filename)
    # A run stopped by a signal (its checkpoint saved) exits 143 / 130, not 0.
    return jobs.exit_code(jobs.run(_CONFIG.value, workdir))


def _in_repository(arg: str) -> str:
    """`configs/x.py[:preset]`, its path made the repository's when it is missing here."""
    path, sep, preset = arg.partition(":")
    there = os.path.join(REPOSITORY, path)
    if not os.path.isabs(path) and not os.path.exists(path) and os.path.isfile(there):
        return f"{there}{sep}{preset}"
    return arg


def resolve_config(argv: list[str]) -> list[str]:
    """`argv` with a relative `--config=` (or `--config `) path that is missing here but
    present in the repository replaced by the repository's file."""
    out = list(argv)
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            out[i] = "--config=" + _in_repository(a[len("--config="):])
        elif a == "--config" and i + 1 < len(argv):
            out[i + 1] = _in_repository(argv[i + 1])
    return out


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error for `--config.<key>` overrides of fields the
    config does not have (ml_collections would raise a long traceback); every other error as
    absl reports it."""
    argv = resolve_config(argv)
    config = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    lines = []
    if config:
        try:
            lines = configs.unknown_overrides(configs.load(config), argv)
        except Exception:  # noqa: BLE001 - a bad --config itself: absl says what is wrong
            lines = []
    if lines:
        sys.exit("error: " + "\n       ".join(lines))
    return app.parse_flags_with_usage(argv)


def main() -> None:
    """The `ldct-jax` console command."""
    app.run(_main, flags_parser=_parse_flags)
