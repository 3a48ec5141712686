"""Files that are either complete or absent, and the JSON records written into them.

Everything ldct-jax writes (models, data sets, caches, sweep chunks, reports) goes through
`atomic_file` or `atomic_dir`: the content is written beside its final path under a temporary
name `.<name>.tmp-<pid>-<random>` and renamed into place, so a killed process leaves either the
old content or the new one, never half of it. `remove_stale_temps` deletes the temporaries of
processes that are gone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import uuid
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np

_TMP = ".tmp-"


def temp_path(path: str) -> str:
    """A fresh temporary path beside `path` (its folder is created)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{name}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces `path`, on failure it is removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str, *, overwrite: bool = False, mode: int = 0o755) -> Iterator[str]:
    """Yields an empty temporary folder to fill; on success it becomes `path`.

    Args:
      path: the folder to create.
      overwrite: replace an existing `path`. The old folder is moved aside to
        `.<name>.old-<pid>-<random>` (never removed by `remove_stale_temps`) and deleted only
        once the new one is in place.
      mode: permissions of the new folder.

    Raises:
      FileExistsError: `path` exists (or, without `overwrite`, another process finished it
        while this one was writing: that copy is kept and this one dropped). An empty folder
        at `path` counts as absent.
    """
    path = os.path.abspath(path)
    if _occupied(path) and not overwrite:
        raise FileExistsError(f"{path} exists; not overwriting it")
    tmp = temp_path(path)
    os.makedirs(tmp, mode=mode)
    os.chmod(tmp, mode)  # makedirs honours the umask
    try:
        yield tmp
        if overwrite and os.path.exists(path):
            old = temp_path(path).replace(_TMP, ".old-", 1)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            try:  # rename(2) replaces an empty folder only
                os.rename(tmp, path)
            except OSError as e:
                if _occupied(path):
                    raise FileExistsError(f"{path} was written by another process meanwhile; "
                                          "keeping that copy") from e
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _occupied(path: str) -> bool:
    return os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path))


def remove_stale_temps(directory: str) -> None:
    """Removes the temporaries in `directory` left by processes that no longer run (killed
    writes)."""
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        if not entry.startswith(".") or _TMP not in entry:
            continue
        try:
            os.kill(int(entry.rsplit(_TMP, 1)[1].split("-")[0]), 0)
        except (ValueError, IndexError, OverflowError):
            continue
        except ProcessLookupError:
            stale = os.path.join(directory, entry)
            if os.path.isdir(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.remove(stale)
        except PermissionError:  # a live process of another user
            pass


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` atomically; returns `path`."""
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_json(path: str, obj: Any) -> str:
    """Writes `obj` (numpy values allowed) as indented, key-sorted JSON, atomically."""
    return write_text(path, json.dumps(plain(obj), indent=2, sort_keys=True) + "\n")


def write_csv(path: str, records: Sequence[Mapping[str, Any]]) -> str:
    """Writes dicts, one per row (columns in first-seen key order), as CSV, atomically."""
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([plain(dict(r)) for r in records])
    return write_text(path, buf.getvalue())


def write_npy(path: str, array: Any) -> str:
    """`np.save` to `path` atomically (no pickles)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array), allow_pickle=False)
    return path


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays, tuples and mappings made plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        a = np.asarray(value)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Change(NamedTuple):
    """One changed leaf of a JSON record: its dotted key and both values."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def diff(old: Any, new: Any, prefix: str = "") -> list[Change]:
    """The changed leaves of two JSON records (`str` of each reads `'a.b: old -> new'`)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [d for k in sorted(set(old) | set(new))
                for d in diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))]
    return [] if old == new else [Change(prefix or "(value)", old, new)]


def digest(*trees: Any) -> str:
    """sha256 of arrays (shape, dtype and bytes), or of pytrees of arrays (a model's params)."""
    h = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()
