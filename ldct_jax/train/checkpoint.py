"""Checkpoints (orbax) that survive preemption and corruption, and the stop-signal flag.

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    state, step = ckpt.restore_latest(state)    # falls back past corrupt checkpoints
    ckpt.save(state)                            # synchronous and atomic (orbax)

Each checkpoint holds the train state and a JSON record with the step and a fingerprint per
leaf (sum of |x| of a float leaf, the sum modulo 2**32 of an integer one), and the one sum
over the state that earlier versions check. A checkpoint that fails to restore or whose
restored state does not match its record is moved to `<directory>_corrupt/` once an older one
restored; if none restores, nothing is moved and the restore fails (the data may be fine and
the storage failing: a Drive mount after a reset). An OSError raised in Python while reading
(but a missing file) stops the restore at once too; tensorstore reports its read errors as
ValueErrors, which count as a checkpoint that does not restore.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

_FINGERPRINT_RTOL = 1e-5


@jax.jit
def _sums(leaves: list) -> tuple[list[jax.Array], jax.Array]:
    def one(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.sum(jnp.abs(x.astype(jnp.float32)))
        return jnp.sum(x.astype(jnp.uint32))  # exact: wraps modulo 2**32
    total = [jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves]
    return [one(x) for x in leaves], jnp.sum(jnp.stack(total)) if total else jnp.zeros(())


def _record(tree: Any) -> dict[str, Any]:
    """A train state's record, from one pass over it: `fingerprints`, per leaf (named by its
    path) the sum of |x| of a float leaf and the sum modulo 2**32 of an integer one, so that a
    leaf restored wrongly (zeroed, scaled, another leaf's data) shows in its own sum, however
    small beside the others; and `fingerprint`, the one float32 sum of |leaf| over the state
    that earlier versions wrote and check."""
    leaves = _leaves(tree)
    sums, total = jax.device_get(_sums(list(leaves.values())))
    return {"fingerprints": {name: (float(v) if np.issubdtype(v.dtype, np.floating) else int(v))
                             for name, v in zip(leaves, sums)},
            "fingerprint": float(total)}


def _record_mismatch(state: Any, meta: dict, step: int) -> str:
    """How the restored `state` differs from the saved record ('' if it does not)."""
    if int(state.step) != step:
        return f"restored step {int(state.step)}, the record says {step}"
    record = _record(state)
    if "fingerprints" not in meta:  # written by an earlier version
        got, want = record["fingerprint"], float(meta["fingerprint"])
        return "" if np.isclose(got, want, rtol=_FINGERPRINT_RTOL) else (
            f"fingerprint {got:.9g}, the record says {want:.9g}")
    got, want = record["fingerprints"], meta["fingerprints"]
    if set(got) != set(want):
        return f"leaves {sorted(set(got) ^ set(want))[:4]} differ from the record's"
    bad = [k for k in got if not (got[k] == want[k] if isinstance(want[k], int) else
                                  np.isclose(got[k], want[k], rtol=_FINGERPRINT_RTOL, atol=0))]
    return "; ".join(f"{k}: sum {got[k]:.9g}, the record says {want[k]:.9g}"
                     for k in bad[:4]) + ("; ..." if len(bad) > 4 else "")


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run of other settings (another tree of shapes)."""


class CheckpointReadError(RuntimeError):
    """No checkpoint could be used, or the storage failed while reading one."""


def _leaves(tree: Any) -> dict[str, Any]:
    """`{'params/conv1/kernel': leaf, ...}` of a train state, or of orbax's metadata tree of
    one (they name the leaves alike), in `jax.tree.leaves` order."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: hasattr(v, "shape"))[0]
    return {"/".join(name(k) for k in path): v for path, v in leaves if hasattr(v, "shape")}


def _shapes(tree: Any) -> dict[str, str]:
    """`{'params/conv1/kernel': 'float32(9, 9, 1, 64)', ...}` (`_leaves`)."""
    return {k: f"{np.dtype(v.dtype).name}{tuple(v.shape)}" for k, v in _leaves(tree).items()}


class Checkpointer:
    """Saves and restores a train state under `directory`, one orbax step directory per save.

    Args:
      directory: where the step directories go (created if needed).
      keep: how many of the newest checkpoints to keep (at least 2 leaves a fallback).
    """

    def __init__(self, directory: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least 1 checkpoint")
        self.directory = os.path.abspath(directory)
        self.corrupt_directory = self.directory + "_corrupt"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # Checkpoints `restore_latest` could not use: {'step', 'error', 'moved_to'} each.
        self.skipped: list[dict[str, Any]] = []

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state: Any) -> bool:
        """Saves `state` at `int(state.step)` unless that step is already saved.

        Returns:
          Whether it wrote a checkpoint.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            return False
        record = _record(state)
        bad = [k for k, v in record["fingerprints"].items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(f"refusing to save the state of step {step}: it holds "
                                     f"non-finite values (in {bad[:4]})")
        meta = {"step": step, "time": time.time(), **record}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
        return True

    def restore_latest(self, target: Any) -> tuple[Optional[Any], Optional[int]]:
        """The newest checkpoint that restores cleanly, placed like `target`; the newer ones,
        which did not, are then moved to `corrupt_directory` (and listed in `skipped`).

        Args:
          target: a state with the structure, shapes, dtypes and shardings to restore into
            (e.g. the freshly initialised state).

        Returns:
          `(state, step)`, or `(None, None)` when there is no checkpoint.

        Raises:
          CheckpointMismatchError: a checkpoint of another tree (other settings).
          CheckpointReadError: an OSError while reading, or no checkpoint restored; nothing
            was moved.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        failed = []  # (step, error) of the newer checkpoints that did not restore
        for step in reversed(self.all_steps()):
            mismatch = self._mismatch(step, abstract)
            if mismatch:  # not corrupt: written by a run with other settings
                raise CheckpointMismatchError(
                    f"{os.path.join(self.directory, str(step))}: the checkpoint holds a train "
                    f"state of another structure than this run's ({mismatch}); it was written "
                    "with other settings, and is left where it is.")
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                state = restored.state
                mismatch = _record_mismatch(state, restored.meta, step)
                if mismatch:
                    raise ValueError(f"the restored state does not match the saved record "
                                     f"({mismatch})")
            except Exception as e:  # noqa: BLE001 - a checkpoint that does not decode
                if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
                    # The storage, not the checkpoint (a missing file is the checkpoint's).
                    raise CheckpointReadError(
                        f"{os.path.join(self.directory, str(step))}: reading the checkpoint "
                        f"failed ({type(e).__name__}: {e}); nothing was moved: run again once "
                        "the storage reads") from e
                failed.append((step, f"{type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:300] if str(e) else ''}"))
                continue
            for bad, error in failed:
                moved = self._quarantine(bad)
                self.skipped.append({"step": bad, "error": error, "moved_to": moved})
                logging.warning("checkpoint at step %d is corrupt or unreadable (%s); moved it "
                                "to %s and using the previous checkpoint", bad, error, moved)
            return state, step
        if failed:
            raise CheckpointReadError(
                f"{self.directory}: no checkpoint restored; nothing was moved. "
                + "; ".join(f"step {s}: {e}" for s, e in failed)
                + f". To start over, move {self.directory} away.")
        return None, None

    def _mismatch(self, step: int, abstract: Any) -> str:
        """What differs between the tree saved at `step` (leaf paths, shapes, dtypes) and
        `abstract`'s ('' if nothing does, or if the saved metadata cannot be read: then the
        restore decides whether the checkpoint is corrupt)."""
        from etils import epath
        handler = ocp.StandardCheckpointHandler()
        try:
            saved = _shapes(handler.metadata(
                epath.Path(os.path.join(self.directory, str(step), "state"))))
        except Exception:  # noqa: BLE001 - unreadable metadata: a corrupt checkpoint
            return ""
        finally:
            handler.close()
        want = _shapes(abstract)
        if not saved:
            return ""
        diffs = [f"{k}: missing" for k in sorted(set(want) - set(saved))]
        diffs += [f"{k}: unexpected" for k in sorted(set(saved) - set(want))]
        diffs += [f"{k}: saved {saved[k]}, expected {want[k]}"
                  for k in sorted(set(want) & set(saved)) if saved[k] != want[k]]
        return "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")

    def _quarantine(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dst = os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}")
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(self.corrupt_directory, exist_ok=True)
            shutil.move(src, dst)
        _sync("ldct_jax.checkpoint.quarantine")
        self._manager.reload()
        return dst

    def close(self) -> None:
        self._manager.close()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class StopSignals:
    """Context manager: SIGTERM and SIGINT set `.requested` instead of killing the process.

    The training loop checks the flag after each step, saves a checkpoint and returns. A second
    SIGINT raises KeyboardInterrupt, for a user who really wants out. Outside the main thread
    (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[str] = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = name
        logging.warning("%s received: saving a checkpoint after this step, then stopping", name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def any_process_requested(self) -> bool:
        """Whether any process got a stop signal (all processes must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))
