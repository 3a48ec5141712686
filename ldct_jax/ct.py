"""CT units and display windows.

Every public function of ldct-jax takes and returns Hounsfield units (HU, float32). Models carry
their own normalisation; nothing here knows network units.
"""

from __future__ import annotations

from typing import Union

import numpy as np

HU_MIN = -1024.0
HU_MAX = 3071.0

# Display windows as (centre, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "abdomen": (50.0, 400.0),
    "head": (40.0, 80.0),
    "diff": (0.0, 100.0),
}

# The window each anatomy is read in.
ANATOMY_WINDOW: dict[str, str] = {"chest": "lung", "abdomen": "abdomen", "head": "head"}

# ldct-benchmark feeds raw DICOM values (HU + 1024) normalised as (raw - mean) / std. In HU that
# is (hu - LDCTBENCH_SHIFT) / LDCTBENCH_SCALE.
LDCTBENCH_MEAN_RAW = 481.45419786099086
LDCTBENCH_SHIFT = LDCTBENCH_MEAN_RAW - 1024.0
LDCTBENCH_SCALE = 502.18507379395044

Window = Union[str, tuple[float, float]]


def window_bounds(window: Window) -> tuple[float, float]:
    """Returns (low, high) in HU of a window given by name or as (centre, width)."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; expected one of {sorted(WINDOWS)} "
                             "or a (centre, width) pair in HU")
        window = WINDOWS[window]
    centre, width = window
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return centre - width / 2.0, centre + width / 2.0


def apply_window(image, window: Window):
    """Maps HU to [0, 1] for display: low end of the window -> 0, high end -> 1, clipped.

    Works on numpy and jax arrays alike.
    """
    low, high = window_bounds(window)
    scaled = (image - low) / (high - low)
    if isinstance(image, np.ndarray):
        return np.clip(scaled, 0.0, 1.0)
    return scaled.clip(0.0, 1.0)


def window_for(anatomy: str) -> str:
    """The display window of an anatomy ('chest', 'abdomen', 'head'); abdomen for unknown ones."""
    return ANATOMY_WINDOW.get(anatomy, "abdomen")
