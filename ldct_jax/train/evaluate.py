"""Held-out evaluation on whole slices: RMSE and PSNR in HU, SSIM in each anatomy's window.

The network and the low-dose input (the baseline) are both scored against routine dose, per
slice; the report gives means over all slices and per anatomy, and the RMSE reduction
`1 - rmse(network) / rmse(low dose)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import ct, metrics
from ldct_jax.data import sampling
from ldct_jax.data.scan import Scan

# PSNR over the whole valid HU range.
PSNR_DATA_RANGE = ct.HU_MAX - ct.HU_MIN
METRICS = ("rmse_hu", "psnr_db", "ssim")


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Whole held-out slices: `low`, `full` `[N, H, W]` HU; `anatomy`, `patient` per slice."""

    low: np.ndarray
    full: np.ndarray
    anatomy: tuple[str, ...]
    patient: tuple[str, ...]
    slice_index: tuple[int, ...]

    def __len__(self) -> int:
        return self.low.shape[0]


def eval_set(scans: Sequence[Scan], slices_per_patient: int, seed: int) -> EvalSet:
    """`slices_per_patient` slices of every scan (fewer if a scan has fewer), deterministic."""
    if not scans:
        raise ValueError("no held-out scans to evaluate on")
    n = len(scans) * min([slices_per_patient] + [s.num_slices for s in scans])
    picked = sampling.sample_slices(scans, n, seed)
    idx = picked["patient"]
    return EvalSet(low=picked["low"], full=picked["full"],
                   anatomy=tuple(scans[i].anatomy for i in idx),
                   patient=tuple(scans[i].patient for i in idx),
                   slice_index=tuple(int(s) for s in picked["slice"]))


@functools.partial(jax.jit, static_argnames="window")
def _slice_metrics(x: jax.Array, ref: jax.Array, window: str) -> dict[str, jax.Array]:
    per_slice_rmse = jnp.sqrt(jnp.mean(jnp.square(x - ref), axis=(-2, -1)))
    psnr = 20.0 * jnp.log10(PSNR_DATA_RANGE / per_slice_rmse)
    ssim = metrics.ssim(ct.apply_window(x, window), ct.apply_window(ref, window), 1.0)
    return {"rmse_hu": per_slice_rmse, "psnr_db": psnr, "ssim": ssim}


def slice_metrics(x: np.ndarray, ref: np.ndarray, anatomy: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-slice RMSE (HU), PSNR (dB, data range 4095 HU) and SSIM in each slice's window."""
    out = {m: np.zeros(len(anatomy), np.float64) for m in METRICS}
    anatomy = np.asarray(anatomy)
    for a in sorted(set(anatomy)):
        rows = np.flatnonzero(anatomy == a)
        values = _slice_metrics(jnp.asarray(x[rows]), jnp.asarray(ref[rows]), ct.window_for(a))
        for m in METRICS:
            out[m][rows] = np.asarray(values[m])
    return out


def _summary(per_slice: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    return {m: float(np.mean(per_slice[m][rows])) for m in METRICS}


def summarise(evals: EvalSet, output: np.ndarray) -> dict[str, Any]:
    """Means over all slices and per anatomy, for the network and for the low-dose input.

    Returns:
      `{'network': {rmse_hu, psnr_db, ssim}, 'low_dose': {...}, 'rmse_reduction': float,
      'per_anatomy': {anatomy: {'network', 'low_dose', 'rmse_reduction', 'num_slices'}},
      'num_slices': N, 'patients': [...]}`; metrics are means of per-slice values.
    """
    net = slice_metrics(output, evals.full, evals.anatomy)
    low = slice_metrics(evals.low, evals.full, evals.anatomy)
    everything = np.arange(len(evals))
    result: dict[str, Any] = {"network": _summary(net, everything),
                              "low_dose": _summary(low, everything)}
    result["rmse_reduction"] = 1.0 - result["network"]["rmse_hu"] / result["low_dose"]["rmse_hu"]
    per = {}
    anatomy = np.asarray(evals.anatomy)
    for a in sorted(set(evals.anatomy)):
        rows = np.flatnonzero(anatomy == a)
        n, lo = _summary(net, rows), _summary(low, rows)
        per[a] = {"network": n, "low_dose": lo, "rmse_reduction": 1.0 - n["rmse_hu"] /
                  lo["rmse_hu"], "num_slices": int(rows.size)}
    result["per_anatomy"] = per
    result["num_slices"] = len(evals)
    result["patients"] = sorted(set(evals.patient))
    return result


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """`summarise`'s result as flat scalars for the metrics log (`network/rmse_hu`, ...)."""
    flat = {"rmse_reduction": result["rmse_reduction"]}
    for who in ("network", "low_dose"):
        flat.update({f"{who}/{m}": v for m, v in result[who].items()})
    for a, r in result["per_anatomy"].items():
        flat[f"{a}/network/rmse_hu"] = r["network"]["rmse_hu"]
        flat[f"{a}/rmse_reduction"] = r["rmse_reduction"]
    return flat
