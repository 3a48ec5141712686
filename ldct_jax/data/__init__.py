"""CT data: the embedded synthetic set, real DICOM (Mayo / any full-low pair), patch sampling.

Every source returns a list of `Scan`s (one per patient, paired low- and routine-dose series
in HU). `load_scans(config.data, workdir)` picks the source named by the config.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Sequence

from ldct_jax.data.scan import Scan

__all__ = ["Scan", "load_scans", "split_scans"]

SOURCES = ("synthetic", "mayo", "dicom")


def _dir_key(data_config: Any, key: str) -> str:
    value = data_config.get(key, "")
    if not value:
        raise ValueError(f"config.data.{key} is empty; source={data_config.source!r} needs it")
    if not os.path.isdir(value):
        raise ValueError(f"config.data.{key}={value!r} is not a directory")
    return value


def load_scans(data_config: Any, workdir: str) -> list[Scan]:
    """Loads the scans described by `config.data` (see `configs/common.py:data_config`).

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
    source = data_config.source
    anatomies = tuple(data_config.get("anatomies", ()) or ())
    if source == "synthetic":
        from ldct_jax.data import synthetic
        root = data_config.root or os.path.join(workdir, "data")
        synthetic.build(root, **dict(data_config.get("synthetic", {})))
        scans = synthetic.load(root)
        if anatomies:
            scans = [s for s in scans if s.anatomy in anatomies]
        if not scans:
            raise ValueError(f"synthetic data set {root} has no {list(anatomies)} patients "
                             "(config.data.anatomies)")
        return scans
    if source not in SOURCES:
        raise ValueError(f"config.data.source={source!r}; expected one of {SOURCES}")
    from ldct_jax.data import dicom
    cache_dir = data_config.get("cache_dir", "") or os.path.join(workdir, "cache")
    kw = dict(cache_dir=cache_dir, skip_bad=bool(data_config.get("skip_bad_slices", False)))
    if source == "mayo":
        return dicom.load_mayo(_dir_key(data_config, "root"), anatomies or None, **kw)
    info = dict(anatomy=data_config.get("anatomy", "unknown"),
                dose_fraction=data_config.get("dose_fraction", None))
    if data_config.get("full_dir") or data_config.get("low_dir"):
        return [dicom.load_pairs(_dir_key(data_config, "full_dir"),
                                 _dir_key(data_config, "low_dir"), **info, **kw)]
    if not data_config.get("root"):
        raise ValueError("source='dicom' needs config.data.full_dir and config.data.low_dir "
                         "(one series pair) or config.data.root (a folder of pairs)")
    return dicom.load_dicom_pairs(_dir_key(data_config, "root"), **info, **kw)


def split_scans(scans: Sequence[Scan], held_out_patients: int
                ) -> tuple[list[Scan], list[Scan]]:
    """Splits into (train, held out) by whole patients, per anatomy.

    Whole patients, not slices, are held out: neighbouring slices of one patient are nearly
    the same image, so held-out slices of a training patient would leak. Within each anatomy
    the last `held_out_patients` patients (by patient id) are held out.

    Raises:
      ValueError: an anatomy with no more than `held_out_patients` patients, which would
        leave it nothing to train on (naming config.data.held_out_patients).
    """
    if held_out_patients < 0:
        raise ValueError(f"config.data.held_out_patients={held_out_patients} must be >= 0")
    groups = collections.defaultdict(list)
    for s in sorted(scans, key=lambda s: s.patient):
        groups[s.anatomy].append(s)
    train, held = [], []
    for anatomy, group in sorted(groups.items()):
        if held_out_patients and len(group) <= held_out_patients:
            raise ValueError(
                f"anatomy {anatomy!r} has {len(group)} patient(s); config.data.held_out_patients"
                f"={held_out_patients} would leave none to train on (set it to 0 for no "
                "held-out set, or add patients)")
        cut = len(group) - held_out_patients
        train += group[:cut]
        held += group[cut:]
    return train, held
