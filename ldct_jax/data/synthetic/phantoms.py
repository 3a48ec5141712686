"""Random anatomical phantoms in HU: chest, abdomen and head slices of random patients.

`phantom(anatomy, seed, patient, z_mm, size)` draws one axial slice. Each patient's organ sizes,
outlines, tissue values, vessels, ribs and lesions come from `PatientRandom(seed, anatomy,
patient)` and vary smoothly with the slice position z (mm from the top of the anatomy's range),
so neighbouring slices of one patient are similar; vessels, airways, bowel loops and lesions are
3D objects (tilted tubes, spheres) whose cross-sections move with z. Tissue values are those of
clinical CT at ~120 kVp (abdomen contrast-enhanced in the portal venous phase for most patients,
chest and head without contrast).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ldct_jax.data.synthetic import anatomy
from ldct_jax.data.synthetic.shapes import Canvas, PatientRandom

ANATOMIES = ("chest", "abdomen", "head")

# Display field of view (mm across the image) and the z range (mm) slices are drawn from.
FOV_MM = {"chest": 380.0, "abdomen": 380.0, "head": 250.0}
Z_RANGE_MM = {"chest": 300.0, "abdomen": 250.0, "head": 140.0}
# The part of the z range slices start in (head: above the skull base, below the vertex).
_Z_START = {"chest": (0.02, 0.9), "abdomen": (0.0, 0.9), "head": (0.3, 0.8)}

TISSUES = anatomy.TISSUES
SOFT_TISSUE = anatomy.SOFT_TISSUE

# The scanner's resolution (focal spot, detector aperture; a detector bin is one pixel wide): the
# object it sees is the drawn one blurred with a Gaussian of this std in pixels. Without it the
# pixel-sharp edges alias in the projections and leave streaks of several HU far from any edge.
BLUR_PX = 0.8

# Tissue texture (parenchyma, muscle fibres, fat septa): smooth random variation with this std in
# HU and a correlation length of TEXTURE_MM, different from slice to slice.
TEXTURE_MM = 1.2
_TEXTURE_HU = {"lung": 20.0, "fat": 6.0, "visceral": 6.0, "muscle": 5.0, "liver": 6.0,
               "spleen": 5.0, "kidney": 6.0, "heart": 4.0, "grey": 2.5, "white": 2.5,
               "marrow": 40.0}

_DRAW = {"chest": anatomy.chest, "abdomen": anatomy.abdomen, "head": anatomy.head}


def _check(anatomy_name: str) -> int:
    if anatomy_name not in ANATOMIES:
        raise ValueError(f"unknown anatomy {anatomy_name!r}; expected one of {ANATOMIES}")
    return ANATOMIES.index(anatomy_name)


def patient_random(anatomy_name: str, seed: int, patient: int) -> PatientRandom:
    return PatientRandom((int(seed), _check(anatomy_name), int(patient)))


def pixel_mm(anatomy_name: str, size: int) -> float:
    """Pixel size in mm: the anatomy's field of view over `size` pixels."""
    return FOV_MM[anatomy_name] / size


def slice_positions(anatomy_name: str, seed: int, patient: int, slices: int,
                    spacing_mm: float) -> np.ndarray:
    """`[slices]` positions in mm: a random start per patient, then `spacing_mm` apart."""
    r = patient_random(anatomy_name, seed, patient)
    span = Z_RANGE_MM[anatomy_name]
    lo, hi = _Z_START[anatomy_name]
    room = max(span * hi - (slices - 1) * spacing_mm, span * lo)
    start = r.uniform("z_start", span * lo, max(room, span * lo + 1e-3))
    return (start + spacing_mm * np.arange(slices)).astype(np.float64)


def phantom(anatomy_name: str, seed: int, patient: int, z_mm: float, size: int,
            blur_px: float = BLUR_PX) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice of a random patient.

    Args:
      anatomy_name: 'chest', 'abdomen' or 'head'.
      seed, patient: which random patient.
      z_mm: slice position (see `slice_positions`).
      size: image size in pixels; the field of view is fixed (`FOV_MM`), so the pixel size is
        `pixel_mm(anatomy_name, size)`.
      blur_px: std in pixels of the Gaussian blur that models the scanner's resolution (0: none).

    Returns:
      (hu, labels): `[size, size]` float32 HU (-1000 outside the body) and int16 tissue labels
      (`TISSUES`, of the sharp drawing).
    """
    r = patient_random(anatomy_name, seed, patient)
    canvas = Canvas(size, pixel_mm(anatomy_name, size))
    t = float(np.clip(z_mm / Z_RANGE_MM[anatomy_name], 0.0, 1.0))
    _DRAW[anatomy_name](canvas, r, float(z_mm), t)
    amplitude = np.zeros(64, np.float32)
    for name, value in _TEXTURE_HU.items():
        amplitude[TISSUES[name]] = value
    g = np.random.default_rng([int(seed), _check(anatomy_name), int(patient),
                               int(round(z_mm * 1000)) % 2 ** 32, 1])
    texture = ndimage.gaussian_filter(g.standard_normal((size, size), np.float32),
                                      TEXTURE_MM / canvas.pixel_mm, mode="wrap")
    texture *= 1.0 / max(float(texture.std()), 1e-6)
    hu = canvas.hu + amplitude[canvas.labels] * texture
    if blur_px > 0:
        hu = ndimage.gaussian_filter(hu, blur_px, mode="nearest", truncate=3.0)
    return hu.astype(np.float32), canvas.labels
