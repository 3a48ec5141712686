"""The data a config asks for (`load_scans`), and the data job: build (or read) it and write a
preview figure, `python launch/main.py --config=configs/data.py [--workdir=DIR]`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from ldct_jax import ct, data, files
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import configs, report

SOURCES = ("synthetic", "mayo", "dicom")


def _dir_key(data_config: Any, key: str) -> str:
    value = data_config.get(key, "")
    if not value:
        raise ValueError(f"config.data.{key} is empty; source={data_config.source!r} needs it")
    if not os.path.isdir(value):
        raise ValueError(f"config.data.{key}={value!r} is not a directory")
    return value


def check_anatomy(key: str, value: str) -> None:
    """`config.<key>` names an anatomy of the synthetic set, or 'unknown'."""
    from ldct_jax.data import synthetic
    known = synthetic.ANATOMIES + ("unknown",)
    if value not in known:
        raise ValueError(f"config.{key}={value!r}; expected one of {known}")


def check_data_config(data_config: Any) -> None:
    """The values of `config.data` that name things, before any data is built or read."""
    from ldct_jax.data import synthetic
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r}; expected one of {SOURCES}")
    anatomies = tuple(data_config.get("anatomies", ()) or ())
    known = synthetic.ANATOMIES
    if set(anatomies) - set(known):
        raise ValueError(f"config.data.anatomies={anatomies}: unknown "
                         f"{sorted(set(anatomies) - set(known))}; expected some of {known}")
    if data_config.source == "synthetic" and anatomies:
        built = tuple(data_config.get("synthetic", {}).get("anatomies", known))
        if not set(anatomies) & set(built):
            raise ValueError(f"config.data.anatomies={anatomies}: none of them is in the "
                             f"synthetic set (config.data.synthetic.anatomies={built})")
    if data_config.source == "dicom":
        check_anatomy("data.anatomy", data_config.get("anatomy", "unknown"))
        if not 0 <= (data_config.get("dose_fraction") or 0.0) <= 1:
            raise ValueError(f"config.data.dose_fraction={data_config.dose_fraction}; expected "
                             "the low dose's fraction of the routine dose, in (0, 1] (0: unknown)")


def load_scans(data_config: Any, workdir: str) -> list[Scan]:
    """Loads the scans described by `config.data` (see `ldct_jax.jobs.configs.data_config`).

    Args:
      data_config: ConfigDict with source ('synthetic', 'mayo' or 'dicom'), root, full_dir,
        low_dir, anatomies, cache_dir, skip_bad_slices, synthetic (kwargs of
        `synthetic.build`), and for 'dicom' optionally anatomy / dose_fraction.
      workdir: the run's directory; the synthetic set is built in `<workdir>/data` when
        root is '' and DICOM caches go to `<workdir>/cache` when cache_dir is ''.

    Returns:
      Scans sorted by patient, restricted to `anatomies` (not for 'dicom', whose anatomy is
      whatever the config says).
    """
    check_data_config(data_config)
    source = data_config.source
    anatomies = tuple(data_config.get("anatomies", ()) or ())
    if source == "synthetic":
        from ldct_jax.data import synthetic
        root = data_config.root or os.path.join(workdir, "data")
        try:
            synthetic.build(root, **dict(data_config.get("synthetic", {})))
        except ValueError as e:
            raise ValueError(f"config.data.synthetic: {e} (config.data.root={data_config.root!r} "
                             "picks the folder)") from None
        scans = synthetic.load(root)
        if anatomies:
            scans = [s for s in scans if s.anatomy in anatomies]
        if not scans:
            raise ValueError(f"synthetic data set {root} has no {list(anatomies)} patients "
                             "(config.data.anatomies)")
        return scans
    from ldct_jax.data import dicom
    cache_dir = data_config.get("cache_dir", "") or os.path.join(workdir, "cache")
    kw = dict(cache_dir=cache_dir, skip_bad=bool(data_config.get("skip_bad_slices", False)))
    if source == "mayo":
        return dicom.load_mayo(_dir_key(data_config, "root"), anatomies or None, **kw)
    info = dict(anatomy=data_config.get("anatomy", "unknown"),
                dose_fraction=data_config.get("dose_fraction") or None)
    if data_config.get("full_dir") or data_config.get("low_dir"):
        return [dicom.load_pairs(_dir_key(data_config, "full_dir"),
                                 _dir_key(data_config, "low_dir"), **info, **kw)]
    if not data_config.get("root"):
        raise ValueError("source='dicom' needs config.data.full_dir and config.data.low_dir "
                         "(one series pair) or config.data.root (a folder of pairs)")
    return dicom.load_dicom_pairs(_dir_key(data_config, "root"), **info, **kw)


def split_scans(data_config: Any, scans: Sequence[Scan]) -> tuple[list[Scan], list[Scan]]:
    """`data.split_scans` with `config.data.held_out_patients`."""
    with configs.naming("data.held_out_patients", data_config.held_out_patients):
        return data.split_scans(scans, data_config.held_out_patients)


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
    files.write_text(os.path.join(workdir, "data_summary.txt"), text + "\n")
    print(text)
    print(f"preview: {path}")
