"""Metrics as JSON lines (`<workdir>/metrics.jsonl`) and TensorBoard events (tensorboardX).

Only process 0 writes; on every other process a `MetricsLog` is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging

from ldct_jax import files


class MetricsLog:
    """Appends `{"step", "split", "time", **metrics}` records; scalars also go to TensorBoard.

    Args:
      workdir: the run's directory; writes `metrics.jsonl` and `tensorboard/` there.
      enabled: whether to write (default: only on process 0).
      resumed_at: the step a run starts from (its checkpoint's). The metrics of later steps,
        logged before the run was stopped and about to be logged again, are removed from
        `metrics.jsonl` (events stay) and purged from TensorBoard.
      final_step: the run's last step, whose 'eval' records (the final evaluation, done again
        by every call that ends the run) are removed too.
    """

    def __init__(self, workdir: str, enabled: Optional[bool] = None,
                 resumed_at: Optional[int] = None, final_step: Optional[int] = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resumed_at is not None and os.path.exists(self.path):
                self._drop_after(resumed_at, final_step)
            self._file = open(self.path, "a")
            from tensorboardX import SummaryWriter  # no TensorFlow needed
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30,
                                     purge_step=None if resumed_at is None else resumed_at + 1)

    def _drop_after(self, step: int, final_step: Optional[int]) -> None:
        """Rewrites metrics.jsonl (atomically) without the metrics of steps after `step`, the
        'eval' records of `final_step`, and lines that are not JSON (cut short by a kill:
        earlier versions appended to them; each named in a warning); it ends with a newline."""
        with open(self.path) as f:
            text = f.read()
        kept = []
        for i, line in enumerate(text.splitlines()):
            try:
                record = json.loads(line)
            except ValueError:
                logging.warning("%s, line %d: not JSON (cut short by a kill?), dropped: %r",
                                self.path, i + 1, line[:200])
                continue
            redone = "split" in record and (record.get("step", 0) > step or (
                record["split"] == "eval" and record.get("step") == final_step))
            if not redone:
                kept.append(line)
        new = "".join(k + "\n" for k in kept)
        if new != text:
            files.write_text(self.path, new)

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update(files.plain(dict(metrics)))
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        for k, v in record.items():
            if k in ("step", "split", "time") or isinstance(v, (bool, str)):
                continue
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, global_step=int(step))

    def image(self, step: int, tag: str, image: Any) -> None:
        """A grey image `[H, W]` with values in [0, 1] (e.g. `ct.apply_window`) to TensorBoard."""
        if self.enabled:
            self._tb.add_image(tag, np.clip(np.asarray(image, np.float32), 0.0, 1.0),
                               global_step=int(step), dataformats="HW")

    def event(self, step: int, what: str, **info: Any) -> None:
        """A non-metric record (resumed, stopped, ...) in the JSON lines only."""
        if not self.enabled:
            return
        record = {"step": int(step), "event": what, "time": round(time.time(), 3)}
        record.update(files.plain(info))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

