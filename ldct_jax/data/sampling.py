"""Patient-balanced patch sampling, deterministic from (seed, step) and split across hosts.

Every row of a global batch draws a patient with equal probability, then a slice uniformly
within that patient, then a patch location uniformly within the image; the low- and
routine-dose patches are cut at the same place. All indices of the global batch come from one
numpy Generator keyed by (seed, step), so every host computes the same global batch plan and
reads only the pixels of its own contiguous share of rows. A resumed run sees the same batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np

from ldct_jax.data.scan import Scan

T = TypeVar("T")


class BatchPlan(NamedTuple):
    """Where each row of a global batch comes from; all `[global_batch]` int64."""
    patient: np.ndarray
    slice: np.ndarray
    y: np.ndarray
    x: np.ndarray


def _check(scans: Sequence[Scan], global_batch: int, patch_size: int,
           process_index: int, process_count: int) -> None:
    if not scans:
        raise ValueError("no scans to sample from")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count="
                         f"{process_count})")
    if global_batch < 1 or global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} is not divisible by "
                         f"process_count={process_count}")
    smallest = min(scans, key=lambda s: min(s.full.shape[1:]))
    if patch_size < 1 or patch_size > min(smallest.full.shape[1:]):
        raise ValueError(f"patch_size={patch_size} does not fit the {smallest.full.shape[1]}x"
                         f"{smallest.full.shape[2]} images of patient {smallest.patient}")


def batch_plan(scans: Sequence[Scan], step: int, *, global_batch: int, patch_size: int,
               seed: int) -> BatchPlan:
    """The (patient, slice, y, x) of every row of the global batch at `step`."""
    _check(scans, global_batch, patch_size, 0, 1)
    rng = np.random.default_rng([seed, step])
    shapes = np.asarray([s.full.shape for s in scans], np.int64)  # [P, 3]
    patient = rng.integers(0, len(scans), global_batch)
    u = rng.random((3, global_batch))
    num, height, width = shapes[patient].T
    # floor(u * n) is uniform on 0..n-1; min() guards the u -> 1 rounding edge.
    pick = lambda u_, n: np.minimum((u_ * n).astype(np.int64), n - 1)  # noqa: E731
    return BatchPlan(patient, pick(u[0], num), pick(u[1], height - patch_size + 1),
                     pick(u[2], width - patch_size + 1))


def sample_batch(scans: Sequence[Scan], step: int, *, global_batch: int, patch_size: int,
                 seed: int, process_index: int = 0, process_count: int = 1
                 ) -> dict[str, np.ndarray]:
    """This process's share of the global patch batch at `step`.

    Args:
      scans: the training scans (the same list, in the same order, on every host).
      step: training step; with `seed` it fixes the batch.
      global_batch: rows of the global batch, divisible by `process_count`.
      patch_size: side p of the square patches, at most the smallest image side.
      process_index, process_count: this host's rows are `[i * b, (i + 1) * b)` with
        b = global_batch / process_count; only their pixels are read.

    Returns:
      dict(low=[b, p, p] float32 HU, full=[b, p, p] float32 HU).
    """
    _check(scans, global_batch, patch_size, process_index, process_count)
    plan = batch_plan(scans, step, global_batch=global_batch, patch_size=patch_size, seed=seed)
    b = global_batch // process_count
    rows = range(process_index * b, (process_index + 1) * b)
    p = patch_size
    low = np.empty((b, p, p), np.float32)
    full = np.empty((b, p, p), np.float32)
    for out, r in enumerate(rows):
        scan = scans[plan.patient[r]]
        s, y, x = plan.slice[r], plan.y[r], plan.x[r]
        low[out] = scan.low[s, y:y + p, x:x + p]
        full[out] = scan.full[s, y:y + p, x:x + p]
    return dict(low=low, full=full)


def prefetch(batch: Callable[[int], T], steps: Iterable[int], depth: int = 1,
             workers: int = 1) -> Iterator[tuple[int, T]]:
    """Yields `(step, batch(step))` for `steps`, preparing up to `depth` later batches on
    `workers` background threads (numpy releases the GIL while copying patches), in step order.

    Used by the training loop so that sampling overlaps the jitted step; `depth=0` prepares
    nothing ahead.
    """
    if depth <= 0:
        for step in steps:
            yield step, batch(step)
        return
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for step in steps:
            pending.append((step, pool.submit(batch, step)))
            if len(pending) > depth:
                s, fut = pending.popleft()
                yield s, fut.result()
        while pending:
            s, fut = pending.popleft()
            yield s, fut.result()


def sample_slices(scans: Sequence[Scan], n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` whole slices for evaluation, spread evenly over patients (round robin), slices drawn
    without replacement within each patient; deterministic from `seed`.

    Returns:
      dict(low=[n, H, W], full=[n, H, W] float32 HU, patient=[n] indices into `scans`,
      slice=[n] slice indices). All chosen scans must share H, W.
    """
    if not scans:
        raise ValueError("no scans to sample from")
    rng = np.random.default_rng([seed, 0x511CE])
    counts = [n // len(scans) + (i < n % len(scans)) for i in range(len(scans))]
    patient, slices = [], []
    for i, (scan, c) in enumerate(zip(scans, counts)):
        if c > scan.num_slices:
            raise ValueError(f"{c} slices requested from patient {scan.patient}, which has "
                             f"{scan.num_slices}; ask for at most "
                             f"{len(scans) * min(s.num_slices for s in scans)}")
        chosen = np.sort(rng.choice(scan.num_slices, c, replace=False))
        patient += [i] * c
        slices += chosen.tolist()
    shapes = {scans[i].full.shape[1:] for i in set(patient)}
    if len(shapes) > 1:
        raise ValueError(f"whole slices of different sizes {sorted(shapes)} cannot be stacked")
    low = np.stack([scans[i].low[s] for i, s in zip(patient, slices)]).astype(np.float32)
    full = np.stack([scans[i].full[s] for i, s in zip(patient, slices)]).astype(np.float32)
    return dict(low=low, full=full, patient=np.asarray(patient), slice=np.asarray(slices))
