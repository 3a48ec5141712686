"""Real CT data from DICOM: one series at a time, cached as a memory map, paired by position.

A series folder holds one file per slice. `read_series` reads each file once with pydicom,
orders the slices by position along the slice normal (then InstanceNumber), converts to HU
with RescaleSlope/RescaleIntercept, and caches the volume as a `.npy` plus a `.json` of its
metadata. Later calls memory-map the cache; a change of any file (name, size or mtime)
rebuilds it. `load_pairs` pairs a full- and a low-dose series; `load_mayo` and
`load_dicom_pairs` find such pairs in a directory tree.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional, Sequence

import numpy as np
import pydicom
from absl import logging
from pydicom.errors import InvalidDicomError

from ldct_jax import files
from ldct_jax.data.scan import Scan

CACHE_VERSION = 2   # 2: series with one PixelSpacing
# Files read from a series folder when it holds any; otherwise every non-hidden file is read.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
POSITION_ATOL_MM = 0.01
SPACING_ATOL_MM = 1e-3
# Rows and Columns above this are refused before the pixel data is decoded (CT slices are
# 512 x 512, a few 1024 x 1024).
MAX_SIDE = 4096


class DicomError(ValueError):
    """A DICOM file or series that cannot be used; the message names the file and the problem."""


def default_cache_dir() -> str:
    """`$LDCT_JAX_CACHE`, else `$XDG_CACHE_HOME/ldct_jax/dicom` (`~/.cache/ldct_jax/dicom`)."""
    if os.environ.get("LDCT_JAX_CACHE"):
        return os.environ["LDCT_JAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ldct_jax", "dicom")


@dataclasses.dataclass
class _Slice:
    path: str
    hu: np.ndarray
    z: float
    instance: int
    orientation: tuple
    header: dict


def _read_slice(path: str) -> _Slice:
    """Reads one CT slice to HU; raises DicomError naming `path` and the problem."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        raise DicomError(f"{path}: not a DICOM file ({e})") from e
    except Exception as e:  # pydicom raises many types on truncated headers
        raise DicomError(f"{path}: unreadable or truncated DICOM file "
                         f"({type(e).__name__}: {e})") from e
    modality = ds.get("Modality")
    if modality is None:
        raise DicomError(f"{path}: no Modality tag in its {os.path.getsize(path)} bytes: a "
                         "truncated header, or not an image file; expected a CT slice")
    if modality != "CT":
        raise DicomError(f"{path}: Modality is {modality!r}, expected 'CT'")
    missing = [k for k in ("RescaleSlope", "RescaleIntercept", "ImagePositionPatient",
                           "ImageOrientationPatient", "Rows", "Columns")
               if ds.get(k) is None]
    if missing:
        raise DicomError(f"{path}: missing {', '.join(missing)} (needed for HU, the image size "
                         "and the slice order)")
    slope = float(ds.RescaleSlope)
    if not np.isfinite(slope) or slope == 0:
        raise DicomError(f"{path}: RescaleSlope is {slope:g}; expected a finite, "
                         "non-zero number (HU = slope * stored value + intercept)")
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (truncated file?)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not (0 < rows <= MAX_SIDE and 0 < cols <= MAX_SIDE):
        raise DicomError(f"{path}: Rows x Columns is {rows} x {cols}; expected a CT slice of at "
                         f"most {MAX_SIDE} x {MAX_SIDE} (not decoded)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise DicomError(f"{path}: {frames} frames; expected one slice per file (not decoded)")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * cols * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < expected:
            raise DicomError(f"{path}: pixel data is {len(ds.PixelData)} bytes, expected "
                             f"{expected} for {rows}x{cols} at {ds.BitsAllocated} bits "
                             "(truncated file?)")
    try:
        pixels = ds.pixel_array
    except Exception as e:
        raise DicomError(f"{path}: cannot decode pixel data ({type(e).__name__}: {e})") from e
    if pixels.ndim != 2:
        raise DicomError(f"{path}: pixel array has shape {pixels.shape}; expected one "
                         "greyscale slice (Rows, Columns)")
    hu = (pixels.astype(np.float64) * slope + float(ds.RescaleIntercept)).astype(np.float32)
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    z = float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))
    header = dict(
        patient_id=str(ds.get("PatientID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        series_description=str(ds.get("SeriesDescription", "")),
        pixel_spacing=[float(v) for v in ds.get("PixelSpacing", [])] or None,
        slice_thickness=float(ds.SliceThickness) if ds.get("SliceThickness") else None,
    )
    return _Slice(path, hu, z, int(ds.get("InstanceNumber") or 0),
                  tuple(float(v) for v in np.round(iop, 4)), header)


def _series_files(folder: str) -> list[str]:
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not
                   e.name.startswith(".") and e.name.upper() != "DICOMDIR")
    dicom = [n for n in names if n.lower().endswith(DICOM_SUFFIXES)]
    if dicom and len(dicom) < len(names):
        logging.info("%s: reading the %d DICOM files, ignoring %d others (%s...)", folder,
                     len(dicom), len(names) - len(dicom), sorted(set(names) - set(dicom))[:3])
    return dicom or names


def _fingerprint(folder: str, names: Sequence[str]) -> list:
    out = []
    for n in names:
        st = os.stat(os.path.join(folder, n))
        out.append([n, st.st_size, st.st_mtime_ns])
    return out


def _cache_paths(folder: str, cache_dir: str) -> tuple[str, str]:
    folder = os.path.abspath(folder)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(folder))[:60]
    digest = hashlib.sha1(folder.encode()).hexdigest()[:16]
    stem = os.path.join(cache_dir, f"{slug}-{digest}")
    return stem + ".npy", stem + ".json"


def _write_volume(path: str, slices: Sequence[_Slice]) -> None:
    """The slices as one `.npy`, written slice by slice into a memory map, atomically."""
    with files.atomic_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(slices),) + slices[0].hu.shape)
        for i, s in enumerate(slices):
            out[i] = s.hu
        out.flush()
        del out


def _load_cache(npy: str, meta_path: str, source: list, skip_bad: bool):
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("source") != source:
        return None
    if meta["n_skipped"] and not skip_bad:
        return None  # re-read so that the bad slices raise
    try:
        volume = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if list(volume.shape) != meta["shape"]:
        return None
    for s in meta["skipped"]:
        logging.warning("skipped bad slice (when cached) %s", s["file"] + ": " + s["reason"])
    return volume, np.asarray(meta["positions"], np.float64), meta


def read_series(folder: str, cache_dir: Optional[str] = None, *, skip_bad: bool = False
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Reads one CT series folder to HU, ordered along the patient axis; cached after the first
    call.

    Args:
      folder: a folder with one DICOM file per slice (files ending .dcm/.dicom/.ima when it
        has any, else every non-hidden file).
      cache_dir: where the `.npy` + `.json` cache goes; None means `default_cache_dir()`.
      skip_bad: skip unreadable, non-CT, untagged or wrongly shaped slices instead of raising;
        each skip is logged and listed in `meta['skipped']`.

    Returns:
      (volume `[S, H, W]` float32 HU read-only memory map, positions `[S]` in mm along the slice
      normal, meta dict: patient_id, pixel_spacing, slice_thickness, files (in slice order),
      instance_numbers, skipped [{file, reason}], n_skipped, ...).

    Raises:
      DicomError: naming the file and the problem.
    """
    if not os.path.isdir(folder):
        raise DicomError(f"{folder}: not a directory (expected a DICOM series folder)")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    names = _series_files(folder)
    if not names:
        raise DicomError(f"{folder}: no files (expected one DICOM file per slice)")
    source = _fingerprint(folder, names)
    npy, meta_path = _cache_paths(folder, cache_dir)
    cached = _load_cache(npy, meta_path, source, skip_bad)
    if cached is not None:
        return cached

    slices, skipped = [], []

    def bad(path: str, reason: str) -> None:
        if not skip_bad:
            raise DicomError(f"{path}: {reason}")
        logging.warning("skipping bad slice %s: %s", path, reason)
        skipped.append(dict(file=os.path.basename(path), reason=reason))

    for name in names:
        path = os.path.join(folder, name)
        try:
            slices.append(_read_slice(path))
        except DicomError as e:
            bad(path, str(e)[len(path) + 2:])
    if slices:  # one geometry per series: the most common one; the others are bad slices
        def geometry(s):
            spacing = s.header["pixel_spacing"]
            return s.hu.shape, None if spacing is None else tuple(round(v, 3) for v in spacing)

        shape, spacing = collections.Counter(map(geometry, slices)).most_common(1)[0][0]
        for s in slices:
            if s.hu.shape != shape:
                bad(s.path, f"shape {s.hu.shape} differs from the series' {shape}")
            elif geometry(s)[1] != spacing:
                bad(s.path, f"PixelSpacing {s.header['pixel_spacing']} mm differs from the "
                    f"series' {list(spacing) if spacing else None} mm")
        slices = [s for s in slices if geometry(s) == (shape, spacing)]
    if not slices:
        raise DicomError(f"{folder}: no usable slices ({len(skipped)} skipped: "
                         f"{skipped[:3]}...)")
    orientations = {s.orientation for s in slices}
    if len(orientations) > 1:
        raise DicomError(f"{folder}: slices have {len(orientations)} different "
                         f"ImageOrientationPatient values {sorted(orientations)[:2]}...")
    slices.sort(key=lambda s: (s.z, s.instance))
    for a, b in zip(slices, slices[1:]):
        if abs(a.z - b.z) < 1e-4:
            raise DicomError(f"{folder}: {os.path.basename(a.path)} and "
                             f"{os.path.basename(b.path)} are at the same position "
                             f"z={a.z:.4f} mm (two series in one folder?)")

    meta = dict(version=CACHE_VERSION, folder=os.path.abspath(folder), **slices[0].header,
                shape=[len(slices), *shape], orientation=list(slices[0].orientation),
                positions=[s.z for s in slices], instance_numbers=[s.instance for s in slices],
                files=[os.path.basename(s.path) for s in slices], skipped=skipped,
                n_skipped=len(skipped), source=source)
    os.makedirs(cache_dir, exist_ok=True)
    files.remove_stale_temps(cache_dir)  # a killed earlier write's (hundreds of MB)
    # The json goes last: it is what marks the cache entry valid.
    _write_volume(npy, slices)
    files.write_json(meta_path, meta)
    logging.info("cached %s (%d slices) as %s", folder, len(slices), npy)
    return np.load(npy, mmap_mode="r"), np.asarray(meta["positions"], np.float64), meta


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    for i in range(max(len(a), len(b))):
        za = f"{a[i]:.3f} mm" if i < len(a) else "none"
        zb = f"{b[i]:.3f} mm" if i < len(b) else "none"
        if i >= len(a) or i >= len(b) or abs(a[i] - b[i]) > POSITION_ATOL_MM:
            return f"slice {i}: full z={za}, low z={zb}"
    return "none"


def load_pairs(full_dir: str, low_dir: str, *, patient: Optional[str] = None,
               anatomy: str = "unknown", dose_fraction: Optional[float] = None,
               cache_dir: Optional[str] = None, skip_bad: bool = False) -> Scan:
    """Pairs a routine-dose and a low-dose series of one patient slice by slice, by position.

    Args:
      full_dir, low_dir: the two series folders (see `read_series`).
      patient: patient id; default the full-dose series' PatientID, else its folder name.
      anatomy, dose_fraction: stored in the Scan.
      cache_dir, skip_bad: as in `read_series`. With skip_bad, slices whose partner was
        skipped are dropped too (logged).

    Raises:
      DicomError: series that do not pair (naming both folders and the first mismatching
        position) or of different image sizes.
    """
    if os.path.realpath(full_dir) == os.path.realpath(low_dir):
        raise DicomError(f"full dose {full_dir} and low dose {low_dir} are the same folder; "
                         "expected two series of one patient")
    full, zf, mf = read_series(full_dir, cache_dir, skip_bad=skip_bad)
    low, zl, ml = read_series(low_dir, cache_dir, skip_bad=skip_bad)
    if mf.get("series_uid") and mf.get("series_uid") == ml.get("series_uid"):
        raise DicomError(f"full dose {full_dir} and low dose {low_dir} hold the same series "
                         f"(SeriesInstanceUID {mf['series_uid']}); expected two series")
    if full.shape[1:] != low.shape[1:]:
        raise DicomError(f"full dose {full_dir} has {full.shape[1]}x{full.shape[2]} images, "
                         f"low dose {low_dir} {low.shape[1]}x{low.shape[2]}")
    if not np.allclose(mf["orientation"], ml["orientation"], atol=1e-4):
        raise DicomError(f"full dose {full_dir} has ImageOrientationPatient "
                         f"{mf['orientation']}, low dose {low_dir} {ml['orientation']}: the "
                         "images of a pair must have the same orientation")
    sf, sl = mf.get("pixel_spacing"), ml.get("pixel_spacing")
    if (sf is None) != (sl is None) or (sf is not None and not np.allclose(
            sf, sl, rtol=0, atol=SPACING_ATOL_MM)):
        raise DicomError(f"full dose {full_dir} has PixelSpacing {sf} mm, low dose {low_dir} "
                         f"{sl} mm: the pixels of a pair must cover the same area")
    if len(zf) != len(zl) or not np.allclose(zf, zl, rtol=0, atol=POSITION_ATOL_MM):
        if not (skip_bad and (mf["n_skipped"] or ml["n_skipped"])):
            raise DicomError(
                f"full dose {full_dir} ({len(zf)} slices) and low dose {low_dir} "
                f"({len(zl)} slices) are not at the same positions; first mismatch at "
                f"{_first_mismatch(zf, zl)}")
        # Keep the positions both series have, after bad slices were skipped: for each full
        # slice the nearest low slice (of the two around its position), within tolerance.
        right = np.searchsorted(zl, zf).clip(0, len(zl) - 1)
        left = (right - 1).clip(0, len(zl) - 1)
        jl = np.where(np.abs(zl[left] - zf) < np.abs(zl[right] - zf), left, right)
        gap = np.abs(zl[jl] - zf)
        near = gap <= POSITION_ATOL_MM
        # One partner each: where two full-dose slices have the same nearest low-dose slice,
        # only the nearer of the two keeps it.
        for j in np.unique(jl[near]):
            rivals = np.flatnonzero(near & (jl == j))
            near[rivals[np.argsort(gap[rivals], kind="stable")[1:]]] = False
        jf = np.flatnonzero(near)
        # A slice may lose its partner only to a skipped slice of the other series: series at
        # other positions stay an error.
        lost_full, lost_low = len(zf) - len(jf), len(zl) - len(jf)
        if not len(jf) or lost_full > ml["n_skipped"] or lost_low > mf["n_skipped"]:
            raise DicomError(
                f"full dose {full_dir} ({len(zf)} slices) and low dose {low_dir} ({len(zl)} "
                f"slices) are not at the same positions: {lost_full} full and {lost_low} low "
                f"slice(s) have no partner, where {ml['n_skipped']} skipped low and "
                f"{mf['n_skipped']} skipped full slice(s) explain as many; first mismatch at "
                f"{_first_mismatch(zf, zl)}")
        logging.warning("pairing %s with %s: dropped %d full and %d low slices without partner",
                        full_dir, low_dir, lost_full, lost_low)
        full, low, zf = full[jf], low[jl[near]], zf[jf]
    if mf["patient_id"] and ml["patient_id"] and mf["patient_id"] != ml["patient_id"]:
        logging.warning("PatientID differs: %s (%s) vs %s (%s)", mf["patient_id"], full_dir,
                        ml["patient_id"], low_dir)
    patient = patient or mf["patient_id"] or os.path.basename(os.path.normpath(full_dir))
    return Scan(patient=patient, anatomy=anatomy, low=low, full=full,
                dose_fraction=dose_fraction, positions=zf)


# Mayo / TCIA LDCT-and-Projection-data: patient id prefix -> (anatomy, low-dose fraction).
MAYO_ANATOMY = {"C": ("chest", 0.10), "L": ("abdomen", 0.25), "N": ("head", 0.25)}
MAYO_LAYOUT = ("<root>/<patient>/<study>/<n>-Full Dose Images-<uid>/*.dcm and "
               "<root>/<patient>/<study>/<n>-Low Dose Images-<uid>/*.dcm, patient folders "
               "named C*** (chest), L*** (abdomen) or N*** (head)")


def _has_files(folder: str) -> bool:
    return any(e.is_file() for e in os.scandir(folder))


def find_series_pairs(top: str, full_pattern: str, low_pattern: str
                      ) -> list[tuple[str, str, str]]:
    """Folder pairs under `top`: sibling series folders whose names match the two patterns.

    Args:
      top: directory searched recursively.
      full_pattern, low_pattern: regular expressions (case-insensitive, `re.search`) for the
        routine- and low-dose series folder names. Folders naming projections are ignored.

    Returns:
      (parent folder, full-dose folder, low-dose folder) for every parent with exactly one of
      each, sorted.

    Raises:
      DicomError: a parent with several full- or low-dose series folders.
    """
    pairs = []
    for parent, dirs, _ in os.walk(top):
        dirs.sort()
        series = [d for d in dirs if "projection" not in d.lower()
                  and _has_files(os.path.join(parent, d))]
        full = [d for d in series if re.search(full_pattern, d, re.I)]
        low = [d for d in series if re.search(low_pattern, d, re.I) and d not in full]
        if not full and not low:
            continue
        if len(full) != 1 or len(low) != 1:
            raise DicomError(f"{parent}: expected one full-dose and one low-dose series folder, "
                             f"found full {full} and low {low}; point load_pairs at one pair")
        pairs.append((parent, os.path.join(parent, full[0]), os.path.join(parent, low[0])))
    return sorted(pairs)


def _scans_of(root: str, patient_dirs: Sequence[str], full_pattern: str, low_pattern: str,
              info, **kwargs) -> list[Scan]:
    scans = []
    for name in patient_dirs:
        pairs = find_series_pairs(os.path.join(root, name), full_pattern, low_pattern)
        if not pairs:
            raise DicomError(f"{os.path.join(root, name)}: no pair of full/low dose series "
                             f"folders (names matching {full_pattern!r} and {low_pattern!r})")
        anatomy, dose = info(name)
        for parent, full_dir, low_dir in pairs:
            study = os.path.relpath(parent, os.path.join(root, name))
            patient = name if len(pairs) == 1 else f"{name}/{study}"
            scans.append(load_pairs(full_dir, low_dir, patient=patient, anatomy=anatomy,
                                    dose_fraction=dose, **kwargs))
    return scans


def load_mayo(root: str, anatomies: Optional[Sequence[str]] = None, *,
              cache_dir: Optional[str] = None, skip_bad: bool = False) -> list[Scan]:
    """Loads the Mayo LDCT-and-Projection-data as downloaded from TCIA.

    Layout: `<root>/<patient>/<study>/<n>-Full Dose Images-<uid>/*.dcm` and `... Low Dose
    Images ...` ('Full Dose' / 'Low Dose' matched case-insensitively). Patients C*** are chest
    (10 % dose), L*** abdomen and N*** head (25 %). A patient with several studies gives one
    Scan per study, named `<patient>/<study>`.

    Args:
      root: the collection folder.
      anatomies: keep only these of 'chest', 'abdomen', 'head' (default all); others are
        not read.
      cache_dir, skip_bad: as in `read_series`.

    Returns:
      Scans sorted by patient id.
    """
    if not os.path.isdir(root):
        raise DicomError(f"Mayo data root {root!r} is not a directory; expected {MAYO_LAYOUT}")
    known = {a for a, _ in MAYO_ANATOMY.values()}
    wanted = set(known if anatomies is None else anatomies)
    if wanted - known:
        raise ValueError(f"unknown anatomies {sorted(wanted - known)}; expected some of "
                         f"{sorted(known)}")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    patients = [d for d in folders if re.fullmatch(r"[CLN]\d+\w*", d)]
    if len(patients) < len(folders):
        logging.warning("%s: not reading folder(s) %s: not Mayo patient ids (C, L or N and "
                        "digits)", root, sorted(set(folders) - set(patients)))
    if not patients:
        raise DicomError(f"no Mayo patients under {root} (found {sorted(os.listdir(root))[:5]}); "
                         f"expected {MAYO_LAYOUT}")
    chosen = [p for p in patients if MAYO_ANATOMY[p[0]][0] in wanted]
    if not chosen:
        raise DicomError(f"no {sorted(wanted)} patients under {root}; found {patients}")
    return _scans_of(root, chosen, r"full[ _-]?dose", r"low[ _-]?dose",
                     lambda p: MAYO_ANATOMY[p[0]], cache_dir=cache_dir, skip_bad=skip_bad)


def load_dicom_pairs(root: str, *, anatomy: str = "unknown",
                     dose_fraction: Optional[float] = None,
                     full_pattern: str = r"(?<![a-z])(full|routine)",
                     low_pattern: str = r"(?<![a-z])(low|quarter)",
                     cache_dir: Optional[str] = None, skip_bad: bool = False) -> list[Scan]:
    """Loads every full/low dose series pair under `root`, one patient per top-level folder.

    `root` holds either the two series folders itself (one patient, named after `root`) or one
    folder per patient with the pair somewhere inside. Series folders are told apart by name:
    `full_pattern` (default: a word starting 'full' or 'routine') and `low_pattern` ('low' or
    'quarter'), case-insensitive.
    """
    if not os.path.isdir(root):
        raise DicomError(f"DICOM root {root!r} is not a directory")
    info = lambda _: (anatomy, dose_fraction)  # noqa: E731
    kw = dict(cache_dir=cache_dir, skip_bad=skip_bad)
    own = [p for p in find_series_pairs(root, full_pattern, low_pattern) if p[0] == root]
    if own:
        name = os.path.basename(os.path.normpath(root))
        return _scans_of(os.path.dirname(os.path.normpath(root)), [name], full_pattern,
                         low_pattern, info, **kw)
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    patients = [d for d in folders
                if find_series_pairs(os.path.join(root, d), full_pattern, low_pattern)]
    if patients and len(patients) < len(folders):
        logging.warning("%s: not reading folder(s) %s: no full/low dose series folder pair in "
                        "them (names matching %r and %r)", root,
                        sorted(set(folders) - set(patients)), full_pattern, low_pattern)
    if not patients:
        raise DicomError(f"no full/low dose series folder pairs under {root}: expected "
                         f"<root>/<patient>/.../<full dose folder>/*.dcm next to "
                         f"<low dose folder>, folder names matching {full_pattern!r} and "
                         f"{low_pattern!r}")
    return _scans_of(root, patients, full_pattern, low_pattern, info, **kw)
