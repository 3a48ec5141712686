"""Resumable sweeps: a grid of rows cut into chunks, each computed once and written atomically.

A sweep's workdir holds `manifest.json` (what the sweep is: its settings and a fingerprint of
them, the images and the model) and one directory per finished chunk:

    chunks/00000/  arrays (.npy), metrics.csv, metrics.json

A chunk is written into a temporary directory and renamed into place (`files.atomic_dir`), so a
chunk directory exists only complete. A sweep started again computes only the chunks that are
missing; a sweep started with different settings in the same workdir is refused.
Only process 0 writes; every process computes (the computations are collective).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np

from ldct_jax import files

MANIFEST = "manifest.json"
CHUNKS = "chunks"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"


class ConfigChangedError(ValueError):
    """The workdir holds a sweep with other settings."""


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of `settings` as canonical JSON."""
    return hashlib.sha256(json.dumps(files.plain(settings), sort_keys=True).encode()).hexdigest()


def claim(workdir: str, settings: Mapping[str, Any]) -> dict:
    """Writes the manifest of a new sweep, or checks that `workdir`'s sweep has `settings`.

    Args:
      workdir: the sweep's directory.
      settings: everything the results depend on (JSON-serialisable; arrays as `digest`s).

    Returns:
      The manifest.

    Raises:
      ConfigChangedError: `workdir` holds a sweep with other settings (names what changed).
    """
    settings = files.plain(settings)
    manifest = {"fingerprint": fingerprint(settings), "settings": settings}
    path = os.path.join(workdir, MANIFEST)
    if os.path.exists(path):
        old = files.read_json(path)
        if old.get("fingerprint") != manifest["fingerprint"]:
            changed = files.diff(old.get("settings", {}), settings) or ["(fingerprint)"]
            raise ConfigChangedError(
                f"{workdir} holds a sweep with other settings ({path}); changed: "
                f"{'; '.join(map(str, changed))}. Finished chunks would not match: "
                "use a new --workdir, or delete this one to start over.")
        return old
    if jax.process_index() == 0:
        files.write_json(path, manifest)
    return manifest


def chunk_dir(workdir: str, index: int) -> str:
    return os.path.join(workdir, CHUNKS, f"{index:05d}")


def is_done(workdir: str, index: int) -> bool:
    return os.path.isfile(os.path.join(chunk_dir(workdir, index), METRICS_JSON))


def write_chunk(workdir: str, index: int, arrays: Mapping[str, np.ndarray],
                records: Sequence[Mapping[str, Any]], info: Optional[Mapping[str, Any]] = None
                ) -> str:
    """Writes one finished chunk atomically: `<name>.npy` per array, metrics.csv and .json.

    Args:
      workdir: the sweep's directory.
      index: chunk number.
      arrays: e.g. {'perturbation': [B, H, W]}.
      records: one dict per row (settings and metrics, plain values).
      info: extra fields for metrics.json (e.g. seconds).

    Returns:
      The chunk's directory.
    """
    final = chunk_dir(workdir, index)
    if jax.process_index() != 0 or os.path.exists(final):  # an earlier copy is complete
        return final
    try:
        with files.atomic_dir(final) as tmp:
            for name, a in arrays.items():
                files.write_npy(os.path.join(tmp, f"{name}.npy"), a)
            files.write_csv(os.path.join(tmp, METRICS_CSV), [dict(r) for r in records])
            files.write_json(os.path.join(tmp, METRICS_JSON),
                             {"chunk": index, "rows": list(records), **dict(info or {})})
    except FileExistsError:  # another run of the same sweep finished it first: keep that
        pass
    return final


def read_chunk(workdir: str, index: int, arrays: Iterable[str] = ()
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A finished chunk: ({name: array}, the metrics.json dict)."""
    d = chunk_dir(workdir, index)
    meta = files.read_json(os.path.join(d, METRICS_JSON))
    return {name: np.load(os.path.join(d, f"{name}.npy")) for name in arrays}, meta


@dataclasses.dataclass(frozen=True)
class FiniteCheck:
    """Which rows of a chunk are bad: any array row or metric that is not finite (`allow_inf`
    metrics may be +-inf, not NaN). Rows are named by `keys`; `hint` says what to do."""

    keys: tuple[str, ...]
    hint: str
    allow_inf: tuple[str, ...] = ()

    def __call__(self, index: int, arrays: Mapping[str, np.ndarray],
                 records: Sequence[Mapping[str, Any]], where: str) -> None:
        """Raises FloatingPointError naming chunk `index`'s bad rows; `where` says what was
        (not) done with the chunk."""
        bad = []
        for j, r in enumerate(records):
            fields = [name for name, a in arrays.items() if not np.all(np.isfinite(a[j]))]
            fields += [k for k, v in r.items() if isinstance(v, float) and not np.isfinite(v)
                       and not (k in self.allow_inf and np.isinf(v))]
            if fields:
                bad.append(", ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else
                                     f"{k}={r[k]}" for k in self.keys)
                           + f" ({', '.join(fields)})")
        if bad:
            raise FloatingPointError(
                f"chunk {index}: non-finite results in {len(bad)} row(s): {'; '.join(bad[:8])}"
                f"{'; ...' if len(bad) > 8 else ''}. {where} {self.hint}")


def split(n: int, per_chunk: int) -> list[slice]:
    """Consecutive slices of at most `per_chunk` rows covering `range(n)`."""
    if per_chunk < 1:
        raise ValueError(f"rows per chunk must be >= 1, got {per_chunk}")
    return [slice(lo, min(lo + per_chunk, n)) for lo in range(0, n, per_chunk)]


class Progress:
    """A tqdm bar over the iterations of the chunks still to do (iterations/s, time left).

    `update_to(done)` is the progress callback of one chunk (iterations done within it, of
    `iterations` per chunk).
    """

    def __init__(self, total_chunks: int, todo: int, iterations: int, desc: str,
                 enabled: bool = True, unit: str = "it"):
        self.iterations = iterations
        self.total_chunks = total_chunks
        self.bar = None
        self._base = 0
        self._chunk = 0
        if enabled and todo and jax.process_index() == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=todo * iterations, desc=desc, unit=unit, dynamic_ncols=True,
                            smoothing=0.1)

    def start_chunk(self, index: int, rows: int) -> None:
        self._chunk = 0
        if self.bar is not None:
            self.bar.set_postfix_str(f"chunk {index + 1}/{self.total_chunks}, {rows} rows")

    def update_to(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self._chunk)
        self._chunk = done

    def end_chunk(self) -> None:
        if self.bar is not None and self._chunk < self.iterations:
            self.bar.update(self.iterations - self._chunk)
        self._chunk = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_chunks(workdir: str, slices: Sequence[slice],
               compute: Callable[[int, slice, Callable[[int], None]],
                                 tuple[Mapping[str, np.ndarray], Sequence[Mapping[str, Any]],
                                       Mapping[str, Any]]],
               progress: Progress, check: FiniteCheck) -> list[int]:
    """Computes and writes every chunk not yet finished, in order.

    Args:
      workdir: the sweep's directory (its manifest already claimed).
      slices: the rows of each chunk.
      compute: `(index, rows, progress_callback) -> (arrays, records, info)` for one chunk.
      progress: the bar.
      check: applied to the records of the chunks finished earlier (before anything is
        computed) and to every computed chunk (before it is written).

    Returns:
      The indices computed by this call (the others were finished before).
    """
    if jax.process_index() == 0:
        files.remove_stale_temps(os.path.join(workdir, CHUNKS))  # chunks of a killed run
    os.makedirs(os.path.join(workdir, CHUNKS), exist_ok=True)
    for i in range(len(slices)):
        if is_done(workdir, i):  # e.g. written by an older ldct-jax that let NaN rows through
            check(i, {}, read_chunk(workdir, i)[1]["rows"],
                  f"It was finished earlier ({chunk_dir(workdir, i)}): delete that folder to "
                  "compute it again.")
    computed = []
    try:
        for i, rows in enumerate(slices):
            if is_done(workdir, i):
                continue
            progress.start_chunk(i, rows.stop - rows.start)
            arrays, records, info = compute(i, rows, progress.update_to)
            progress.end_chunk()
            check(i, arrays, records, "Nothing of this chunk was written.")
            write_chunk(workdir, i, arrays, records, info)
            computed.append(i)
    finally:
        progress.close()
    return computed
