"""The one shape every data source delivers: a patient's paired low- and routine-dose series."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Scan:
    """One patient's paired series.

    Attributes:
      patient: patient id (e.g. 'L067', or 'synthetic-abdomen-003').
      anatomy: 'chest', 'abdomen', 'head' or 'unknown'; picks the display window.
      low: low-dose slices, `[S, H, W]` float32 HU (usually a read-only memory map).
      full: routine-dose slices at the same positions, same shape.
      dose_fraction: the low dose as a fraction of routine dose, when known.
      positions: slice positions along the patient axis in mm, `[S]`, when known.
    """

    patient: str
    anatomy: str
    low: np.ndarray
    full: np.ndarray
    dose_fraction: Optional[float] = None
    positions: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.low.shape != self.full.shape or self.low.ndim != 3:
            raise ValueError(f"patient {self.patient}: low {self.low.shape} and full "
                             f"{self.full.shape} must be the same [S, H, W] shape")

    @property
    def num_slices(self) -> int:
        return self.low.shape[0]
