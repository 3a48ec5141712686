"""Held-out evaluation on whole slices: RMSE and PSNR in HU, SSIM in each anatomy's window.

The network and the low-dose input (the baseline) are both scored against routine dose, per
slice; the report gives means over all slices and per anatomy, and the RMSE reduction
`1 - rmse(network) / rmse(low dose)`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import ct, losses, parallel, report
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


def make_denoise_fn(apply_fn: Callable[[Any, jax.Array], jax.Array], mesh
                    ) -> Callable[[Any, jax.Array], jax.Array]:
    """Jits `apply_fn(params, x_hu) -> y_hu` with params replicated and images sharded.

    Make it once per run: each call of this function compiles anew.
    """
    return jax.jit(apply_fn, in_shardings=(parallel.replicated(mesh),
                                           parallel.batch_sharding(mesh)),
                   out_shardings=parallel.batch_sharding(mesh))


def denoise_all(denoise_fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                images: np.ndarray, mesh, batch_size: int) -> np.ndarray:
    """`denoise_fn` (from `make_denoise_fn`) over `images` `[N, H, W]` HU in chunks.

    Chunks are padded to a multiple of the mesh size; returns numpy `[N, H, W]` HU.
    """
    n_dev = mesh.size
    chunk = max(n_dev, -(-batch_size // n_dev) * n_dev)
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk]
        pad = -x.shape[0] % n_dev
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        rows = x.shape[0] // jax.process_count()
        local = x[jax.process_index() * rows:(jax.process_index() + 1) * rows]
        y = denoise_fn(params, parallel.global_batch(local, mesh))
        out.append(_to_host(y)[:x.shape[0] - pad])
    return np.concatenate(out)


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.partial(jax.jit, static_argnames="window")
def _slice_metrics(x: jax.Array, ref: jax.Array, window: str) -> dict[str, jax.Array]:
    per_slice_rmse = jnp.sqrt(jnp.mean(jnp.square(x - ref), axis=(-2, -1)))
    psnr = 20.0 * jnp.log10(PSNR_DATA_RANGE / per_slice_rmse)
    ssim = losses.ssim(ct.apply_window(x, window), ct.apply_window(ref, window), 1.0)
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


def format_result(result: dict[str, Any]) -> str:
    """A table: one row per anatomy and one for all slices, network vs low dose."""
    rows = []
    for name, r in list(result["per_anatomy"].items()) + [("all", result)]:
        n, lo = r["network"], r["low_dose"]
        rows.append([name, r.get("num_slices", result["num_slices"]), lo["rmse_hu"], n["rmse_hu"],
                     f"{100 * r['rmse_reduction']:.1f} %", lo["psnr_db"], n["psnr_db"],
                     lo["ssim"], n["ssim"]])
    return report.format_table(
        ["anatomy", "slices", "RMSE low (HU)", "RMSE net (HU)", "RMSE reduction",
         "PSNR low (dB)", "PSNR net (dB)", "SSIM low", "SSIM net"], rows)


def save_figure(path: str, evals: EvalSet, output: np.ndarray,
                title: Optional[str] = None) -> str:
    """One row per anatomy (its first held-out slice): low dose, network, routine dose, and
    network - routine dose, the images in the anatomy's window and the difference in 'diff'."""
    rows, seen = [], set()
    for i, a in enumerate(evals.anatomy):
        if a in seen:
            continue
        seen.add(a)
        w = ct.window_for(a)
        where = f"{evals.patient[i]} slice {evals.slice_index[i]}"
        rows.append([report.Panel(f"low dose ({where})", evals.low[i], w),
                     report.Panel("network", output[i], w),
                     report.Panel("routine dose", evals.full[i], w),
                     report.Panel("network - routine", output[i] - evals.full[i], "diff")])
    return report.save_panels(path, rows, title=title)
