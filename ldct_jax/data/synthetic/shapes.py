"""Drawing primitives for the phantoms: anti-aliased, smoothly deformed ellipses on a mm grid.

A `Canvas` holds an HU image and a tissue label image on a square grid centred on the rotation
axis (pixel `size // 2`), x to the right (columns), y down (rows; posterior at the bottom, as
CT is displayed). Every shape is painted only over its bounding box, so hundreds of small
vessels cost little. Edges are partial-volume ramps one pixel wide.

Per-patient randomness is `PatientRandom`: a value per (patient, name), independent of the
order of calls, plus smooth functions of the slice position so that neighbouring slices of a
patient differ a little and distant ones more.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional, Sequence

import numpy as np


class Canvas:
    """An HU image being painted, with a label per pixel (the tissue painted last)."""

    def __init__(self, size: int, pixel_mm: float, background: float = -1000.0):
        self.size = size
        self.pixel_mm = pixel_mm
        self.hu = np.full((size, size), background, np.float32)
        self.labels = np.zeros((size, size), np.int16)
        self.axis = ((np.arange(size) - size // 2) * pixel_mm).astype(np.float32)  # mm

    def _box(self, cx: float, cy: float, radius: float):
        c = self.size // 2
        lo_x = max(int(np.floor((cx - radius) / self.pixel_mm)) + c - 1, 0)
        hi_x = min(int(np.ceil((cx + radius) / self.pixel_mm)) + c + 2, self.size)
        lo_y = max(int(np.floor((cy - radius) / self.pixel_mm)) + c - 1, 0)
        hi_y = min(int(np.ceil((cy + radius) / self.pixel_mm)) + c + 2, self.size)
        if lo_x >= hi_x or lo_y >= hi_y:
            return None
        return slice(lo_y, hi_y), slice(lo_x, hi_x)

    def ellipse_alpha(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0,
                      harmonics: Optional[np.ndarray] = None):
        """Coverage in [0, 1] of a (deformed) ellipse over its bounding box.

        Args:
          cx, cy: centre in mm; a, b: semi-axes in mm along the rotated x and y.
          angle: rotation in radians.
          harmonics: `[K, 2]` cos/sin amplitudes of radial deformations of order 2..K+1
            (relative to the radius); smooth random outlines.

        Returns:
          (box, alpha) or None when the shape misses the canvas.
        """
        grow = 1.0 + (np.abs(harmonics).sum() if harmonics is not None else 0.0)
        box = self._box(cx, cy, max(a, b) * grow + self.pixel_mm)
        if box is None:
            return None
        x = self.axis[box[1]][None, :] - np.float32(cx)
        y = self.axis[box[0]][:, None] - np.float32(cy)
        cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = (x * cos + y * sin) * np.float32(1.0 / a)
        v = (y * cos - x * sin) * np.float32(1.0 / b)
        rho = np.sqrt(u * u + v * v) + np.float32(1e-6)
        cu, sv = u / rho, v / rho                         # cos and sin of the polar angle
        radius = np.float32(1.0)
        if harmonics is not None and len(harmonics):
            radius = np.ones_like(rho)
            ck, sk = cu, sv
            for ca, sa in harmonics:                      # orders 2, 3, ... by recurrence
                ck, sk = ck * cu - sk * sv, sk * cu + ck * sv
                radius += np.float32(ca) * ck + np.float32(sa) * sk
        local = np.sqrt(np.float32(a * a) * cu * cu + np.float32(b * b) * sv * sv)
        alpha = np.clip((radius - rho) * local * np.float32(1.0 / self.pixel_mm) + np.float32(0.5),
                        np.float32(0.0), np.float32(1.0))
        return box, alpha.astype(np.float32)

    def paint(self, shape, value: float, label: int, *, inside: Sequence[int] = (),
              add: bool = False, keep_label: bool = False) -> None:
        """Paints `shape` (from `ellipse_alpha`) with HU `value`.

        Args:
          inside: only where the current label is one of these (e.g. vessels inside lung).
          add: add `value` (a contrast) instead of replacing.
          keep_label: leave the labels alone (for textures and subtle contrasts).
        """
        if shape is None:
            return
        box, alpha = shape
        labels = self.labels[box]
        if inside:
            allowed = np.zeros(64, bool)
            allowed[list(inside)] = True
            alpha = alpha * allowed[labels]
        hu = self.hu[box]
        if add:
            hu += alpha * value
        else:
            hu += alpha * (value - hu)
        if not keep_label:
            labels[alpha > 0.5] = label

    def ellipse(self, cx, cy, a, b, value, label, angle=0.0, harmonics=None, **kw) -> None:
        self.paint(self.ellipse_alpha(cx, cy, a, b, angle, harmonics), value, label, **kw)


def _name_seed(name: str) -> int:
    return zlib.crc32(name.encode())


@dataclasses.dataclass(frozen=True)
class PatientRandom:
    """Deterministic random numbers of one patient, looked up by name.

    `key` is e.g. (seed, anatomy index, patient index). Each name gets its own generator, so
    adding a structure to a phantom does not change the others.
    """

    key: tuple[int, ...]

    def rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng(list(self.key) + [_name_seed(name)])

    def uniform(self, name: str, low: float, high: float, n: Optional[int] = None):
        return self.rng(name).uniform(low, high, n)

    def harmonics(self, name: str, amplitude: float, orders: int = 4) -> np.ndarray:
        """`[orders, 2]` deformation amplitudes decaying as 1/k (smooth outlines)."""
        k = np.arange(2, orders + 2)[:, None]
        return self.rng(name).normal(0.0, 1.0, (orders, 2)) * amplitude / k

    def smooth(self, name: str, z: float, amplitude: float, length_mm: float = 60.0) -> float:
        """A smooth random function of the slice position z (mm): sum of 3 random sinusoids with
        wavelengths around `length_mm`, standard deviation about `amplitude`."""
        r = self.rng(name + "/smooth")
        wavelengths = length_mm * r.uniform(0.7, 1.6, 3)
        phases = r.uniform(0, 2 * np.pi, 3)
        weights = r.normal(0.0, 1.0, 3)
        return float(amplitude * np.sqrt(2 / 3) * np.sum(
            weights * np.sin(2 * np.pi * z / wavelengths + phases)))

    def wobble(self, name: str, z: float, amplitude: float, orders: int = 4,
               length_mm: float = 80.0) -> np.ndarray:
        """Deformation harmonics that drift smoothly with z around a per-patient outline."""
        base = self.harmonics(name, amplitude, orders)
        drift = np.array([[self.smooth(f"{name}/{k}/{j}", z, amplitude * 0.3 / (k + 2), length_mm)
                           for j in range(2)] for k in range(orders)])
        return base + drift
