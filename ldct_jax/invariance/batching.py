"""Input checks and the batch plumbing shared by the search and the attacks.

A batch is a flat list of independent problems (one perturbation each). It is padded to a
multiple of the device count (repeating its last row, dropped again afterwards) so that one
compiled program serves every batch of the same size, and sharded along the mesh's batch axis.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from ldct_jax import parallel


def check_images(images: Any, what: str = "images") -> np.ndarray:
    """`images` as float32 `[N, H, W]` HU; a ValueError naming `what` unless 2-D/3-D and finite."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"{what}: expected an image [H, W] or a stack [N, H, W] in HU, got shape "
                         f"{x.shape}")
    if x.ndim == 2:
        x = x[None]
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
    return np.ascontiguousarray(m)


def broadcast(name: str, value: Any, n: int, dtype=None) -> np.ndarray:
    """A scalar or a length-`n` sequence as an array of `n` rows; a ValueError otherwise."""
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        return np.full((n,), a, dtype=a.dtype)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or {n} values (one per perturbation), got "
                         f"shape {a.shape}")
    return a


def padded_size(n: int, mesh) -> int:
    """`n` rounded up to a multiple of the mesh size."""
    return -(-n // mesh.size) * mesh.size


def pad_rows(tree: Any, size: int) -> Any:
    """Pads every leaf (numpy, leading axis) to `size` rows by repeating its last row."""
    def pad(a):
        a = np.asarray(a)
        if a.shape[0] == size:
            return a
        return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])
    return jax.tree.map(pad, tree)


def shard(tree: Any, mesh) -> Any:
    """Places a pytree of numpy arrays (full batch, same on every process) along `batch`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, parallel.batch_sharding(mesh))
    # Every process holds the whole batch; each contributes its own rows.
    n = jax.tree.leaves(tree)[0].shape[0]
    per = n // jax.process_count()
    lo = jax.process_index() * per
    return parallel.global_batch(jax.tree.map(lambda a: a[lo:lo + per], tree), mesh)


def gather(tree: Any, rows: int) -> Any:
    """A sharded pytree back as numpy on every process, the first `rows` rows of each leaf."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda a: np.asarray(a)[:rows], tree)


def as_list(value: Any) -> Sequence:
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
