"""The input checks the analyses share: images, masks and per-row values.

A batch of an analysis is a flat list of independent problems (rows: one perturbation each),
padded and sharded by `ldct_jax.parallel` (`pad_rows`, `shard_rows`, `gather_rows`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ldct_jax import ct


def check_images(images: Any, what: str = "images") -> np.ndarray:
    """`images` as float32 `[N, H, W]` HU; a ValueError naming `what` unless 2-D/3-D and finite."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"{what}: expected an image [H, W] or a stack [N, H, W] in HU, got shape "
                         f"{x.shape}")
    if x.ndim == 2:
        x = x[None]
    if x.size == 0:
        raise ValueError(f"{what}: no pixels (shape {x.shape}); expected at least one image")
    bad = ~np.isfinite(x)
    if bad.any():
        i, r, c = np.argwhere(bad)[0]
        raise ValueError(f"{what}: {int(bad.sum())} NaN/inf value(s), first in image {i} at "
                         f"row {r}, column {c}; expected finite HU")
    return x


def check_mask(mask: Any, shape: tuple[int, ...], what: str = "mask") -> Optional[np.ndarray]:
    """`mask` as float32 `[N, H, W]` for images of `shape` `[N, H, W]`, or None.

    Accepts `[H, W]` (one mask for every image) or `[N, H, W]` (one per image), boolean or with
    values 0 and 1 only: the search projects x_inv onto the mask after every step, which would
    shrink a fractional value geometrically instead of weighting it.
    """
    if mask is None:
        return None
    m = np.asarray(mask, dtype=np.float32)
    n, h, w = shape
    if m.shape == (h, w):
        m = np.broadcast_to(m, shape)
    elif m.shape != shape:
        raise ValueError(f"{what}: shape {m.shape} does not fit the images {shape}; expected "
                         f"[H, W] = {(h, w)} or [N, H, W] = {shape}")
    if not np.all((m == 0) | (m == 1)):
        raise ValueError(f"{what}: values must be 0 or 1 (1 where the perturbation may live), "
                         f"got values in [{np.nanmin(m)}, {np.nanmax(m)}]")
    empty = np.flatnonzero(~m.any(axis=(-2, -1)))
    if empty.size:
        raise ValueError(f"{what}: no pixel is 1 for image(s) {empty.tolist()}; expected at "
                         "least one pixel where the perturbation may live")
    return np.ascontiguousarray(m)


def check_hu_range(x: np.ndarray, what: str = "images") -> None:
    """A ValueError unless `x` lies inside [HU_MIN, HU_MAX]: outside it, 'x + delta in range'
    cannot hold for a small delta (e.g. -2048 HU padding outside a scanner's field of view)."""
    outside = (x < ct.HU_MIN) | (x > ct.HU_MAX)
    if outside.any():
        raise ValueError(f"{what}: {int(outside.sum())} pixel(s) outside the valid HU range "
                         f"[{ct.HU_MIN:g}, {ct.HU_MAX:g}] (min {x.min():g}, max {x.max():g}); "
                         "clip them first (np.clip(images, ct.HU_MIN, ct.HU_MAX))")


def broadcast(name: str, value: Any, n: int, dtype=None) -> np.ndarray:
    """A scalar or a length-`n` sequence as an array of `n` rows; a ValueError otherwise."""
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        return np.full((n,), a, dtype=a.dtype)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or {n} values (one per perturbation), got "
                         f"shape {a.shape}")
    return a


def as_list(value: Any) -> Sequence:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
