"""Parallel-beam projector (Radon transform) and filtered back-projection in JAX.

Conventions are scikit-image's (`skimage.transform.radon` / `iradon` with `circle=True`), so the
two can be compared directly:

- an image is `[..., N, N]`, zero outside the inscribed circle; the rotation axis is the pixel
  `(N // 2, N // 2)`;
- a sinogram is `[..., N_det, A]`: detector bins along axis -2 (bin `N_det // 2` on the axis,
  one pixel apart), angles along axis -1;
- angles are in degrees; the detector coordinate of pixel (row, col) at angle theta is
  `(col - c) cos(theta) - (row - c) sin(theta)`;
- FBP: ramp-type filter as in `iradon` (zero padding to skimage's length, so the filtered
  projections are the same), linear interpolation, scale pi / (2 A), zero outside the circle.

Both transforms are O(N^2) per angle with no per-pixel gathers, which XLA executes slowly on
CPU. Each row of the image (or of its transpose, for angles nearer 90 degrees) meets the detector
at an affine position `u = a * (col + o_row)` with `|a| >= 1 / sqrt(2)`; `o_row` is split into an
integer shift and a phase, rounded to 1 / `phase_bins` pixel. Projection (Joseph's method)
scatter-adds every row as a contiguous window into one of `phase_bins` lines and resamples those
few lines onto the detector; back-projection does the transpose: resample the projection onto
the `phase_bins` lines once and gather each image row as a contiguous window. The rounding moves
each row by at most 1 / (2 phase_bins) pixel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", None)


def scanner_angles(num_angles: int) -> np.ndarray:
    """`num_angles` projection angles in degrees, evenly spaced over [0, 180)."""
    if num_angles < 1:
        raise ValueError(f"num_angles must be >= 1, got {num_angles}")
    return np.arange(num_angles, dtype=np.float64) * (180.0 / num_angles)


def circle_mask(size: int) -> np.ndarray:
    """Boolean `[size, size]`: the reconstruction circle of `iradon(..., circle=True)`."""
    c = size // 2
    rows, cols = np.mgrid[:size, :size] - c
    return rows ** 2 + cols ** 2 <= c ** 2


def _interp1d(line: jax.Array, pos: jax.Array) -> jax.Array:
    """Linear interpolation of `line [L, B]` at `pos [...]` -> `[..., B]`, zero outside [0, L-1]."""
    length = line.shape[0]
    padded = jnp.pad(line, ((1, 1), (0, 0)))
    x = jnp.clip(pos + 1.0, 0.0, length + 1.0)
    i0 = jnp.minimum(jnp.floor(x), length).astype(jnp.int32)
    w = (x - i0)[..., None]
    return padded[i0] * (1.0 - w) + padded[i0 + 1] * w


def _row_geometry(theta, size: int, centre: float, phase_bins: int):
    """Per-angle split of the image rows into window shifts and phases.

    Returns (mode, a, start, phase, m0): mode 0 walks image rows, mode 1 rows of the transpose;
    the detector coordinate (relative to `centre`) of element j of walked row i is
    `a * (j + m0 + start[i] + phase[i] / phase_bins)`.
    """
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    mode = (jnp.abs(sin) > jnp.abs(cos)).astype(jnp.int32)
    a = jnp.where(mode == 0, cos, -sin)
    b = jnp.where(mode == 0, -sin, cos)
    ii = jnp.arange(size, dtype=jnp.float32) - size // 2
    offset = (b * ii - a * (size // 2)) / a + centre / a
    steps = jnp.floor(offset * phase_bins + 0.5).astype(jnp.int32)
    shift = jnp.floor_divide(steps, phase_bins)
    phase = steps - shift * phase_bins
    m0 = jnp.min(shift)
    return mode, a, shift - m0, phase, m0


def _as_batch(x: jax.Array, core: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[:-core]
    return x.reshape((-1,) + x.shape[-core:]), lead


@functools.partial(jax.jit, static_argnames=("phase_bins",))
def radon(image: jax.Array, angles: jax.Array, *, phase_bins: int = 32) -> jax.Array:
    """Parallel-beam line integrals of `image` (skimage `radon(..., circle=True)` conventions).

    Args:
      image: `[..., N, N]`, in any unit per pixel; assumed zero outside the inscribed circle.
      angles: `[A]` projection angles in degrees.
      phase_bins: sub-pixel resolution of the row offsets (see the module docstring).

    Returns:
      `[..., N, A]` sinogram: sums along each ray with unit (one pixel) steps.
    """
    if image.ndim < 2 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"radon: image must be [..., N, N], got shape {image.shape}")
    images, lead = _as_batch(jnp.asarray(image, jnp.float32), 2)
    batch, size = images.shape[0], images.shape[-1]
    width = 2 * size + 4
    f = jnp.moveaxis(images, 0, -1)                     # [N, N, B]
    walked = jnp.stack([f, jnp.swapaxes(f, 0, 1)])      # rows of the image / of its transpose
    det = jnp.arange(size, dtype=jnp.float32) - size // 2
    phases = jnp.arange(phase_bins, dtype=jnp.float32) / phase_bins
    scatter_dims = lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1))

    def one_angle(_, theta):
        mode, a, start, phase, m0 = _row_geometry(theta, size, 0.0, phase_bins)
        lines = jnp.zeros((phase_bins, width, batch), jnp.float32)
        lines = lax.scatter_add(lines, jnp.stack([phase, start], -1), walked[mode], scatter_dims)
        # Joseph: each walked row contributes its linear interpolant, scaled by the path length
        # 1 / |a| per row.
        pos = det[None, :] / a - phases[:, None] - m0.astype(jnp.float32)
        return None, jax.vmap(_interp1d)(lines, pos).sum(0) / jnp.abs(a)

    thetas = jnp.deg2rad(jnp.asarray(angles, jnp.float32).reshape(-1))
    _, sino = lax.scan(one_angle, None, thetas)          # [A, N, B]
    return jnp.transpose(sino, (2, 1, 0)).reshape(lead + (size, thetas.shape[0]))


def _padded_length(num_det: int) -> int:
    """iradon's FFT length: the circle sinogram padded to the square's diagonal, then doubled."""
    diagonal = int(np.ceil(np.sqrt(2) * num_det))
    return max(64, int(2 ** np.ceil(np.log2(2 * diagonal))))


@functools.lru_cache(maxsize=32)
def fourier_filter(length: int, name: str | None) -> np.ndarray:
    """The frequency response iradon uses (Kak & Slaney eq. 61 ramp, times the window)."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; expected one of {FILTERS}")
    n = np.concatenate((np.arange(1, length / 2 + 1, 2, dtype=int),
                        np.arange(length / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(length)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    response = 2 * np.real(np.fft.fft(f))
    if name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(length)[1:]
        response[1:] *= np.sin(omega) / omega
    elif name == "cosine":
        response *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, length, endpoint=False)))
    elif name == "hamming":
        response *= np.fft.fftshift(np.hamming(length))
    elif name == "hann":
        response *= np.fft.fftshift(np.hanning(length))
    elif name is None:
        response[:] = 1
    return response


def filter_sinogram(sinogram: jax.Array, filter: str | None = "ramp", pad: int = 0) -> jax.Array:
    """Filters `[..., N_det, A]` projections along the detector as iradon does.

    Returns `[..., N_det + 2 pad, A]`: the filtered projections, extended by `pad` bins on each
    side (filtering spreads them beyond the detector).
    """
    num_det = sinogram.shape[-2]
    length = _padded_length(num_det)
    response = jnp.asarray(fourier_filter(length, filter)[: length // 2 + 1], jnp.float32)
    x = jnp.pad(sinogram, [(0, 0)] * (sinogram.ndim - 2) + [(pad, length - num_det - pad), (0, 0)])
    spectrum = jnp.fft.rfft(x, axis=-2) * response[:, None]
    return jnp.fft.irfft(spectrum, n=length, axis=-2)[..., : num_det + 2 * pad, :]


@functools.partial(jax.jit, static_argnames=("size", "phase_bins"))
def backproject(projections: jax.Array, angles: jax.Array, size: int, centre: float,
                *, phase_bins: int = 64) -> jax.Array:
    """Sum over angles of the projections smeared along their rays, on a `[size, size]` grid.

    Args:
      projections: `[..., L, A]`; bin `centre` lies on the rotation axis.
      angles: `[A]` degrees.
      size: output grid; its pixel `(size // 2, size // 2)` is on the axis.
      centre: detector index of the axis in `projections`.

    Returns:
      `[..., size, size]`, not scaled, nothing masked.
    """
    q, lead = _as_batch(jnp.asarray(projections, jnp.float32), 2)
    batch, length, num_angles = q.shape
    width = 2 * size + 4
    per_angle = jnp.transpose(q, (2, 1, 0))             # [A, L, B]
    phases = jnp.arange(phase_bins, dtype=jnp.float32) / phase_bins
    m_local = jnp.arange(width, dtype=jnp.float32)

    def one_angle(acc, xs):
        theta, line = xs
        mode, a, start, phase, m0 = _row_geometry(theta, size, centre, phase_bins)
        # The projection resampled at every sub-pixel phase of a walked row.
        table = _interp1d(line, a * (m_local[None, :] + m0 + phases[:, None]))  # [P, W, B]
        rows = jax.vmap(lambda p, s: lax.dynamic_slice(table, (p, s, 0), (1, size, batch))[0])(
            phase, start)
        return acc.at[mode].add(rows), None

    thetas = jnp.deg2rad(jnp.asarray(angles, jnp.float32).reshape(-1))
    acc, _ = lax.scan(one_angle, jnp.zeros((2, size, size, batch), jnp.float32),
                      (thetas, per_angle))
    image = acc[0] + jnp.swapaxes(acc[1], 0, 1)
    return jnp.moveaxis(image, -1, 0).reshape(lead + (size, size))


@functools.partial(jax.jit, static_argnames=("size", "filter", "phase_bins"))
def fbp(sinogram: jax.Array, angles, size: int | None = None, filter: str | None = "ramp",
        *, phase_bins: int = 64) -> jax.Array:
    """Filtered back-projection, as skimage `iradon(sinogram, angles, size, filter, circle=True)`.

    Args:
      sinogram: `[..., N_det, A]`.
      angles: `[A]` degrees.
      size: output `[size, size]`; default `N_det`.
      filter: 'ramp' (default), 'shepp-logan', 'cosine', 'hamming', 'hann' or None.
      phase_bins: sub-pixel resolution of the back-projection (see the module docstring).

    Returns:
      `[..., size, size]` float32, zero outside the reconstruction circle.
    """
    sinogram = jnp.asarray(sinogram, jnp.float32)
    if sinogram.ndim < 2:
        raise ValueError(f"fbp: sinogram must be [..., N_det, A], got shape {sinogram.shape}")
    num_det, num_angles = sinogram.shape[-2:]
    angles = jnp.asarray(angles, jnp.float32).reshape(-1)
    if angles.shape[0] != num_angles:
        raise ValueError(f"fbp: {angles.shape[0]} angles for a sinogram with {num_angles} "
                         "projections (axis -1)")
    if filter not in FILTERS:
        raise ValueError(f"fbp: unknown filter {filter!r}; expected one of {FILTERS}")
    size = num_det if size is None else int(size)
    half = size // 2
    # Bins the circle can reach beyond the detector: filtered values are not zero there.
    pad = max(2, half + 2 - min(num_det // 2, num_det - 1 - num_det // 2))
    filtered = filter_sinogram(sinogram, filter, pad)
    image = backproject(filtered, angles, size, float(num_det // 2 + pad), phase_bins=phase_bins)
    mask = jnp.asarray(circle_mask(size))
    return jnp.where(mask, image * (math.pi / (2 * num_angles)), 0.0)
