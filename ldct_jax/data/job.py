"""The data job: build (or read) the configured data set and write a preview figure.

`python launch/main.py --config=configs/data.py [--workdir=DIR]`; see configs/data.py.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from ldct_jax import ct, report
from ldct_jax.data import load_scans
from ldct_jax.data.scan import Scan


def preview_rows(scans: list[Scan], slice_index: int = -1) -> list[list[report.Panel]]:
    """Per anatomy (its first patient): low dose, routine dose and their difference."""
    rows, seen = [], set()
    for scan in sorted(scans, key=lambda s: s.patient):
        if scan.anatomy in seen:
            continue
        seen.add(scan.anatomy)
        i = scan.num_slices // 2 if slice_index < 0 else min(slice_index, scan.num_slices - 1)
        low, full = np.asarray(scan.low[i]), np.asarray(scan.full[i])
        window = ct.window_for(scan.anatomy)
        dose = f", {scan.dose_fraction:.0%} dose" if scan.dose_fraction else ""
        rows.append([report.Panel(f"{scan.patient} slice {i}: low{dose}", low, window),
                     report.Panel("routine dose", full, window),
                     report.Panel("low - routine", low - full, "diff")])
    return rows


def summary(scans: list[Scan]) -> str:
    """One line per patient: slices, size, dose fraction, std of low - routine (HU)."""
    rows = []
    for s in scans:
        diff = np.asarray(s.low[s.num_slices // 2], np.float64) - s.full[s.num_slices // 2]
        body = np.asarray(s.full[s.num_slices // 2]) > -500
        rows.append([s.patient, s.anatomy, s.num_slices, "x".join(map(str, s.low.shape[1:])),
                     s.dose_fraction if s.dose_fraction is not None else "?",
                     float(diff[body].std()) if body.any() else float("nan")])
    return report.format_table(["patient", "anatomy", "slices", "size", "dose", "std(low-full)"],
                               rows)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Builds/reads `config.data` and writes `<workdir>/preview.png` and `data_summary.txt`."""
    os.makedirs(workdir, exist_ok=True)
    scans = load_scans(config.data, workdir)
    text = summary(scans)
    logging.info("data set (%d patients):\n%s", len(scans), text)
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "preview.png")
    source = config.data.source
    report.save_panels(path, preview_rows(scans, int(config.get("preview_slice", -1))),
                       title=f"{source} data: low dose, routine dose, difference",
                       panel_size=4.0)
    tmp = report.atomic_path(os.path.join(workdir, "data_summary.txt"))
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, os.path.join(workdir, "data_summary.txt"))
    print(text)
    print(f"preview: {path}")
