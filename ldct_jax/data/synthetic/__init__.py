"""The embedded synthetic low-dose CT data set: built once from a seed, then read from disk.

`build(root, ...)` draws random chest, abdomen and head patients (`phantoms`), simulates a
routine- and a low-dose scan of every slice (`dose`: projection, Poisson + electronic noise, log,
FBP) and writes

    root/manifest.json                      build parameters and the patient list
    root/synthetic-<anatomy>-<nnn>/low.npy  [S, N, N] float32 HU, low dose
                                  /full.npy routine dose, same slices
                                  /meta.json dose fraction, positions (mm), pixel size, I0, ...

The same parameters give the same bytes. A second `build` with the same parameters reuses the
set; with different parameters it raises (naming root and every differing parameter) instead of
silently using data other than what was asked for: delete the folder or pick another root.
Writing is atomic: everything goes to a temporary folder beside root, renamed onto root at the
end, so an interrupted build leaves nothing at root (its temporary folder is removed, or, after a
kill, removed by the next build).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from ldct_jax import files
from ldct_jax.data import sampling
from ldct_jax.data.scan import Scan
from ldct_jax.data.synthetic import dose, phantoms

__all__ = ["build", "load", "build_params", "ANATOMIES"]

ANATOMIES = phantoms.ANATOMIES
FORMAT = "ldct_jax.synthetic/3"   # bump when the generator changes what a seed produces
MANIFEST = "manifest.json"
_BATCH = 8                         # slices simulated per jit call (fixed: one compile)


def build_params(*, patients_per_anatomy: int = 2, slices: int = 8, size: int = 512,
                 seed: int = 0, anatomies: Sequence[str] = ANATOMIES,
                 num_angles: int = dose.NUM_ANGLES, spacing_mm: float = 5.0,
                 dose_fractions: Optional[dict] = None) -> dict:
    """The parameters that define a data set (checked, with defaults filled in)."""
    anatomies = tuple(anatomies)
    for a in anatomies:
        if a not in ANATOMIES:
            raise ValueError(f"synthetic: unknown anatomy {a!r} in anatomies={list(anatomies)}; "
                             f"expected some of {ANATOMIES}")
    checks = (("patients_per_anatomy", patients_per_anatomy, 1), ("slices", slices, 1),
              ("size", size, 16), ("num_angles", num_angles, 8))
    for name, value, low in checks:
        if int(value) != value or value < low:
            raise ValueError(f"synthetic: {name}={value!r} must be an integer >= {low}")
    fractions = dict(dose.DOSE_FRACTION)
    fractions.update(dose_fractions or {})
    for a, f in fractions.items():
        if not 0.0 < float(f) <= 1.0:
            raise ValueError(f"synthetic: dose_fractions[{a!r}]={f!r} must be in (0, 1]")
    return dict(format=FORMAT, patients_per_anatomy=int(patients_per_anatomy), slices=int(slices),
                size=int(size), seed=int(seed), anatomies=list(anatomies),
                num_angles=int(num_angles), spacing_mm=float(spacing_mm),
                dose_fractions={a: float(fractions[a]) for a in anatomies})


def _read_manifest(root: str) -> Optional[dict]:
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_existing(root: str, params: dict) -> bool:
    """True when root holds this data set; raises when it holds another one or something else."""
    manifest = _read_manifest(root)
    if manifest is None:
        if os.path.isdir(root) and os.listdir(root):
            raise ValueError(f"synthetic data root {root} exists and is not empty but has no "
                             f"{MANIFEST}: not a synthetic data set; pick an empty or new folder")
        return False
    diff = [str(c) for c in files.diff(manifest.get("params", {}), files.plain(params))]
    if diff:
        raise ValueError(f"synthetic data set at {root} was built with other parameters ("
                         + "; ".join(diff) + "). Delete that folder to rebuild it, or build "
                         "into another folder.")
    return True


def _patients(params: dict):
    for anatomy in params["anatomies"]:
        for p in range(params["patients_per_anatomy"]):
            yield anatomy, p, f"synthetic-{anatomy}-{p:03d}"


def _render(params: dict, anatomy: str, patient: int, idx: tuple[int, ...]) -> np.ndarray:
    """Phantom slices `idx` of a patient, `[len(idx), N, N]` HU."""
    positions = phantoms.slice_positions(anatomy, params["seed"], patient, params["slices"],
                                         params["spacing_mm"])
    return np.stack([phantoms.phantom(anatomy, params["seed"], patient, positions[i],
                                      params["size"])[0] for i in idx])


def _batches(params: dict) -> list[tuple[str, int, tuple[int, ...]]]:
    """(anatomy, patient, slice indices) of every batch the build simulates, in order."""
    batch = min(_BATCH, params["slices"])
    return [(a, p, tuple(range(s, min(s + batch, params["slices"]))))
            for a, p, _ in _patients(params) for s in range(0, params["slices"], batch)]


def _write_patient(folder: str, anatomy: str, patient: int, params: dict, progress,
                   rendered: Iterator[tuple[int, np.ndarray]]) -> dict:
    """Simulates and writes one patient; `rendered` yields its phantom batches (`_batches`)."""
    size, slices, seed = params["size"], params["slices"], params["seed"]
    num_angles = params["num_angles"]
    positions = phantoms.slice_positions(anatomy, seed, patient, slices, params["spacing_mm"])
    pixel_mm = phantoms.pixel_mm(anatomy, size)
    i0 = dose.ROUTINE_I0[anatomy] * dose.counts_scale(size, num_angles)
    fraction = params["dose_fractions"][anatomy]
    anatomy_index = ANATOMIES.index(anatomy)
    os.makedirs(folder)
    low = np.lib.format.open_memmap(os.path.join(folder, "low.npy"), "w+", np.float32,
                                    (slices, size, size))
    full = np.lib.format.open_memmap(os.path.join(folder, "full.npy"), "w+", np.float32,
                                     (slices, size, size))
    batch = min(_BATCH, slices)
    for start in range(0, slices, batch):
        idx = list(range(start, min(start + batch, slices)))
        pad = idx + [idx[-1]] * (batch - len(idx))    # fixed batch shape: one compile
        _, images = next(rendered)
        images = np.concatenate([images, np.zeros((batch - len(idx), size, size), np.float32)])
        keys = jnp.stack([dose.slice_key(seed, anatomy_index, patient, i) for i in pad])
        out = dose.as_numpy(dose.simulate(jnp.asarray(images), keys, jnp.array([fraction, 1.0]),
                                          pixel_mm=pixel_mm, i0=i0, num_angles=num_angles))
        low[idx] = out[0, : len(idx)]
        full[idx] = out[1, : len(idx)]
        progress.update(len(idx))
    low.flush()
    full.flush()
    del low, full
    meta = dict(anatomy=anatomy, patient_index=patient, dose_fraction=fraction,
                positions_mm=[round(float(z), 6) for z in positions], pixel_mm=pixel_mm,
                size=size, num_angles=num_angles, routine_i0_per_bin_view=i0,
                electronic_noise=dose.ELECTRONIC_NOISE, mu_water_per_mm=dose.MU_WATER,
                seed=seed, format=FORMAT)
    files.write_json(os.path.join(folder, "meta.json"), meta)
    return meta


def build(root: str, *, progress: bool = True, **kwargs) -> str:
    """Builds the synthetic data set at `root` unless it is already there.

    Args:
      root: the data set folder (created; its parent too).
      progress: show a tqdm progress bar (slices).
      **kwargs: the data set's parameters, see `build_params`: patients_per_anatomy (2), slices
        (8), size (512), seed (0), anatomies (chest, abdomen, head), num_angles (360 views over
        180 degrees), spacing_mm (5.0 between slices), dose_fractions ({anatomy: fraction},
        default 0.10 chest, 0.25 abdomen and head).

    Returns:
      `root`.

    Raises:
      ValueError: bad parameters; root holds a data set built with other parameters (the message
        names root and each difference), or a non-empty folder that is no data set.
    """
    import tqdm

    params = build_params(**kwargs)
    root = os.path.abspath(root)
    if _check_existing(root, params):
        return root
    files.remove_stale_temps(os.path.dirname(root))
    total = len(params["anatomies"]) * params["patients_per_anatomy"] * params["slices"]
    try:
        # An existing root is empty here (_check_existing): it counts as missing.
        with files.atomic_dir(root) as tmp:
            # The phantoms of the next batch are drawn in a thread while JAX simulates one.
            batches = _batches(params)
            with contextlib.closing(sampling.prefetch(lambda i: _render(params, *batches[i]),
                                                      range(len(batches)))) as rendered, \
                    tqdm.tqdm(total=total, desc=f"synthetic CT -> {root}", unit="slice",
                              disable=not progress) as bar:
                patients = []
                for anatomy, p, pid in _patients(params):
                    _write_patient(os.path.join(tmp, pid), anatomy, p, params, bar, rendered)
                    patients.append(dict(patient=pid, anatomy=anatomy))
            files.write_json(os.path.join(tmp, MANIFEST), dict(params=params, patients=patients))
    except OSError:
        # Another process finished the same build first: use its data set if it matches.
        if not _check_existing(root, params):
            raise
    return root


def load(root: str) -> list[Scan]:
    """The built data set's patients as `Scan`s (read-only memory-mapped arrays), by patient id.

    Raises:
      FileNotFoundError: no complete data set at root (call `build(root)` first).
    """
    manifest = _read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"no synthetic data set at {root} ({MANIFEST} missing): "
                                "call ldct_jax.data.synthetic.build(root) first")
    scans = []
    for entry in manifest["patients"]:
        folder = os.path.join(root, entry["patient"])
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        scans.append(Scan(patient=entry["patient"], anatomy=entry["anatomy"],
                          low=np.load(os.path.join(folder, "low.npy"), mmap_mode="r"),
                          full=np.load(os.path.join(folder, "full.npy"), mmap_mode="r"),
                          dose_fraction=meta["dose_fraction"],
                          positions=np.asarray(meta["positions_mm"], np.float64)))
    return sorted(scans, key=lambda s: s.patient)
