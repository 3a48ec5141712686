"""CT data: the embedded synthetic set, real DICOM (Mayo / any full-low pair), patch sampling.

Every source returns a list of `Scan`s (one per patient, paired low- and routine-dose series
in HU): `synthetic.build` + `synthetic.load`, `dicom.load_mayo`, `dicom.load_pairs`,
`dicom.load_dicom_pairs`. The jobs pick one from a config (`ldct_jax.jobs.data.load_scans`).
"""

from __future__ import annotations

import collections
from typing import Sequence

from ldct_jax.data.scan import Scan

__all__ = ["Scan", "split_scans"]

def split_scans(scans: Sequence[Scan], held_out_patients: int
                ) -> tuple[list[Scan], list[Scan]]:
    """Splits into (train, held out) by whole patients, per anatomy.

    Whole patients, not slices, are held out: neighbouring slices of one patient are nearly
    the same image, so held-out slices of a training patient would leak. Within each anatomy
    the last `held_out_patients` patients (by patient id) are held out.

    Raises:
      ValueError: an anatomy with no more than `held_out_patients` patients, which would
        leave it nothing to train on.
    """
    if held_out_patients < 0:
        raise ValueError(f"held_out_patients={held_out_patients} must be >= 0")
    groups = collections.defaultdict(list)
    for s in sorted(scans, key=lambda s: s.patient):
        groups[s.anatomy].append(s)
    train, held = [], []
    for anatomy, group in sorted(groups.items()):
        if held_out_patients and len(group) <= held_out_patients:
            raise ValueError(
                f"anatomy {anatomy!r} has {len(group)} patient(s); held_out_patients="
                f"{held_out_patients} would leave none to train on (set it to 0 for no "
                "held-out set, or add patients)")
        cut = len(group) - held_out_patients
        train += group[:cut]
        held += group[cut:]
    return train, held
