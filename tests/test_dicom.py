"""DICOM reading: HU against pydicom's own numbers, TCIA trees written here with pydicom, errors."""

import logging
import os
import random
import re
import shutil

import ml_collections
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from ldct_jax import data
from ldct_jax.data import dicom
from ldct_jax.jobs import data as data_job

AXIAL = (1, 0, 0, 0, 1, 0)


def write_ct(path, pixels, *, z, instance, slope=1.0, intercept=-1024.0, patient="L001",
             modality="CT", orientation=AXIAL, drop=(), spacing=(0.7, 0.7), size=None,
             series="1.2.3.4"):
    """Writes one CT slice the way a scanner does (explicit VR little endian, CT Image Storage)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = modality
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = instance
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [round(float(v), 4) for v in [-100.0, -120.0, 0.0] + z * normal]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 1.0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = size or pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for k in drop:
        delattr(ds, k)
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, raws, zs, rng, **kw):
    """One file per slice, shuffled file names, instance numbers in position order; a
    SeriesInstanceUID of its own unless given."""
    kw.setdefault("series", generate_uid())
    os.makedirs(folder, exist_ok=True)
    names = [f"1-{n:03d}.dcm" for n in rng.sample(range(1, 999), len(raws))]
    for k, (raw, z) in enumerate(zip(raws, zs)):
        write_ct(os.path.join(folder, names[k]), raw, z=z, instance=k + 1, **kw)
    return names


def test_ct_small_reads_to_hu(tmp_path):
    src = pydicom.data.get_testdata_file("CT_small.dcm")
    shutil.copy(src, tmp_path / "CT_small.dcm")
    volume, positions, meta = dicom.read_series(str(tmp_path), str(tmp_path / "cache"))
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.shape == (1, 128, 128) and volume.dtype == np.float32
    np.testing.assert_array_equal(volume[0], expected)
    # Known values of this file: raw 175 at the corner, intercept -1024.
    assert volume[0, 0, 0] == 175 - 1024
    assert volume.min() == -896 and volume.max() == 1167
    np.testing.assert_allclose(positions, [-75.699997])
    assert meta["patient_id"] == "1CT1" and meta["pixel_spacing"] == pytest.approx([0.661468] * 2)


# patient -> (slices, pixel dtype, slope, intercept, orientation)
TREE = {"C002": (3, np.uint16, 1.0, -1024.0, AXIAL),
        "L004": (5, np.int16, 0.5, 0.0, AXIAL),
        "N005": (4, np.uint16, 1.0, -1024.0, (1, 0, 0, 0, -1, 0))}


def hu_of(pid, k, dose):
    """HU encoding patient, slice index (in position order) and dose."""
    return np.full((6, 8), 100.0 * list(TREE).index(pid) + 10.0 * k + dose) + np.arange(8)


def make_tree(root, seed=0, patients=TREE):
    rng = random.Random(seed)
    for pid, (n, dtype, slope, intercept, orient) in patients.items():
        study = os.path.join(root, pid, "12-23-2021-NA-NA-84608")
        zs = -40.0 + 0.8 * np.arange(n)
        order = rng.sample(range(n), n)  # file i holds slice order[i]
        for dose, name in ((0, "1.000000-Full Dose Images-51917"),
                           (1, "1.000000-Low Dose Images-43276")):
            raws = [((hu_of(pid, k, dose) - intercept) / slope).astype(dtype) for k in order]
            write_series(os.path.join(study, name), raws, [zs[k] for k in order], rng,
                         slope=slope, intercept=intercept, patient=pid, orientation=orient)
    return root


def test_mayo_tree_reads_back_exactly_and_paired(tmp_path):
    root = make_tree(str(tmp_path / "mayo"))
    scans = dicom.load_mayo(root, cache_dir=str(tmp_path / "cache"))
    assert [s.patient for s in scans] == ["C002", "L004", "N005"]
    assert [(s.anatomy, s.dose_fraction) for s in scans] == [
        ("chest", 0.10), ("abdomen", 0.25), ("head", 0.25)]
    for s in scans:
        n = TREE[s.patient][0]
        assert s.full.shape == (n, 6, 8)
        assert np.all(np.diff(s.positions) > 0)
        for k in range(n):
            np.testing.assert_array_equal(s.full[k], hu_of(s.patient, k, 0))
            np.testing.assert_array_equal(s.low[k], hu_of(s.patient, k, 1))
    # N005's slice normal points to -z: its ImagePositionPatient z falls as the position along
    # the normal rises, so sorting by the raw z coordinate would reverse the slices.
    np.testing.assert_allclose(scans[2].positions, -40.0 + 0.8 * np.arange(4))
    heads = dicom.load_mayo(root, ["head"], cache_dir=str(tmp_path / "cache"))
    assert [s.patient for s in heads] == ["N005"]


def test_load_scans_mayo_and_dicom_sources(tmp_path):
    root = make_tree(str(tmp_path / "mayo"), patients={"L004": TREE["L004"]})
    cfg = ml_collections.ConfigDict(dict(source="mayo", root=root, full_dir="", low_dir="",
                                         anatomies=("abdomen",), cache_dir="",
                                         skip_bad_slices=False))
    (scan,) = data_job.load_scans(cfg, str(tmp_path / "work"))
    assert os.listdir(tmp_path / "work" / "cache")  # cache inside the workdir
    study = os.path.join(root, "L004", "12-23-2021-NA-NA-84608")
    cfg.source = "dicom"
    cfg.full_dir = os.path.join(study, "1.000000-Full Dose Images-51917")
    cfg.low_dir = os.path.join(study, "1.000000-Low Dose Images-43276")
    (pair,) = data_job.load_scans(cfg, str(tmp_path / "work"))
    np.testing.assert_array_equal(pair.low, scan.low)
    assert pair.patient == "L004" and pair.anatomy == "unknown" and pair.dose_fraction is None
    with cfg.unlocked():
        cfg.anatomy, cfg.dose_fraction = "abdomen", 0.25
    (pair,) = data_job.load_scans(cfg, str(tmp_path / "work"))
    assert (pair.anatomy, pair.dose_fraction) == ("abdomen", 0.25)
    cfg.full_dir = cfg.low_dir = ""
    cfg.root = root  # generic: one folder per patient, pair found by name
    (generic,) = data_job.load_scans(cfg, str(tmp_path / "work"))
    np.testing.assert_array_equal(generic.full, scan.full)
    cfg.source, cfg.root = "mayo", ""
    with pytest.raises(ValueError, match=r"config\.data\.root is empty"):
        data_job.load_scans(cfg, str(tmp_path / "work"))
    cfg.root = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"config\.data\.root=.*nowhere.*not a directory"):
        data_job.load_scans(cfg, str(tmp_path / "work"))


def test_mayo_root_without_patients_says_what_was_expected(tmp_path):
    (tmp_path / "scans" / "somebody").mkdir(parents=True)
    with pytest.raises(dicom.DicomError, match=r"no Mayo patients under .*scans.*expected "
                       r".*<patient>/<study>/<n>-Full Dose Images-<uid>/\*\.dcm"):
        dicom.load_mayo(str(tmp_path / "scans"), cache_dir=str(tmp_path / "c"))


def series(tmp_path, name, n=4, **kw):
    folder = str(tmp_path / name)
    raws = [np.full((6, 8), 1024 + 10 * k, np.uint16) for k in range(n)]
    names = write_series(folder, raws, 0.8 * np.arange(n), random.Random(1), **kw)
    return folder, [os.path.join(folder, f) for f in names]


@pytest.mark.parametrize("problem,message", [
    ("modality", r"Modality is 'MR', expected 'CT'"),
    ("rescale", r"missing RescaleSlope, RescaleIntercept"),
    ("truncated", r"pixel data is \d+ bytes, expected 96 .*truncated"),
    ("not_dicom", r"not a DICOM file"),
    ("shape", r"shape \(6, 9\) differs from the series' \(6, 8\)"),
    ("spacing", r"PixelSpacing \[0\.8, 0\.8\] mm differs from the series' \[0\.7, 0\.7\] mm"),
    ("slope", r"RescaleSlope is 0; expected a finite, non-zero number"),
    ("header", r"no Modality tag in its 300 bytes: a truncated header"),
    ("huge", r"Rows x Columns is 65535 x 65535; expected a CT slice of at most 4096 x 4096 "
             r"\(not decoded\)"),
    ("frames", r"3 frames; expected one slice per file \(not decoded\)"),
])
def test_bad_slice_errors_name_file_and_problem(tmp_path, caplog, problem, message):
    folder, files = series(tmp_path, "s")
    bad = files[2]
    if problem == "modality":
        write_ct(bad, np.zeros((6, 8), np.uint16), z=1.6, instance=3, modality="MR")
    elif problem == "rescale":
        write_ct(bad, np.zeros((6, 8), np.uint16), z=1.6, instance=3,
                 drop=("RescaleSlope", "RescaleIntercept"))
    elif problem == "truncated":
        raw = open(bad, "rb").read()
        open(bad, "wb").write(raw[:-10])
    elif problem == "not_dicom":
        open(bad, "w").write("this is not DICOM\n" * 20)
    elif problem == "shape":
        write_ct(bad, np.zeros((6, 9), np.uint16), z=1.6, instance=3)
    elif problem == "spacing":
        write_ct(bad, np.zeros((6, 8), np.uint16), z=1.6, instance=3, spacing=(0.8, 0.8))
    elif problem == "slope":  # a constant image, whatever was stored
        write_ct(bad, np.zeros((6, 8), np.uint16), z=1.6, instance=3, slope=0.0)
    elif problem == "header":
        raw = open(bad, "rb").read()
        open(bad, "wb").write(raw[:300])
    elif problem in ("huge", "frames"):  # compressed: decoding would allocate what it says
        write_ct(bad, np.zeros((6, 8), np.uint16), z=1.6, instance=3)
        ds = pydicom.dcmread(bad)
        ds.compress(RLELossless)
        if problem == "huge":
            ds.Rows = ds.Columns = 65535   # 8 GB of pixels
        else:
            ds.NumberOfFrames = 3
        ds.save_as(bad)
    with pytest.raises(dicom.DicomError, match=re.escape(bad) + ": " + message):
        dicom.read_series(folder, str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        volume, positions, meta = dicom.read_series(folder, str(tmp_path / "cache"),
                                                    skip_bad=True)
    assert volume.shape == (3, 6, 8) and meta["n_skipped"] == 1
    assert meta["skipped"][0]["file"] == os.path.basename(bad)
    assert re.search(message, meta["skipped"][0]["reason"])
    assert any("skipping bad slice" in r.getMessage() and bad in r.getMessage()
               for r in caplog.records)
    np.testing.assert_allclose(positions, [0, 0.8, 2.4])
    # A cache made with skips is not used when skipping is off: the error comes back.
    with pytest.raises(dicom.DicomError, match=message):
        dicom.read_series(folder, str(tmp_path / "cache"))


def test_pairs_of_different_length_or_position_fail_naming_both(tmp_path):
    full, _ = series(tmp_path, "full", n=4)
    short, _ = series(tmp_path, "low_short", n=3)
    with pytest.raises(dicom.DicomError, match=(
            r"full dose .*full \(4 slices\) and low dose .*low_short \(3 slices\) .*first "
            r"mismatch at slice 3: full z=2\.400 mm, low z=none")):
        dicom.load_pairs(full, short, cache_dir=str(tmp_path / "c"))
    folder = str(tmp_path / "low_shifted")
    raws = [np.full((6, 8), 1024, np.uint16)] * 4
    write_series(folder, raws, [0.0, 0.8, 1.7, 2.4], random.Random(2))
    with pytest.raises(dicom.DicomError, match=r"first mismatch at slice 2: full z=1\.600 mm, "
                                               r"low z=1\.700 mm"):
        dicom.load_pairs(full, folder, cache_dir=str(tmp_path / "c"))


def test_pairs_of_different_pixel_spacing_fail_naming_both(tmp_path):
    full, _ = series(tmp_path, "full", n=3)
    low, _ = series(tmp_path, "low", n=3, spacing=(0.75, 0.75))
    with pytest.raises(dicom.DicomError, match=r"full dose .*full has PixelSpacing \[0\.7, 0\.7\] "
                       r"mm, low dose .*low \[0\.75, 0\.75\] mm"):
        dicom.load_pairs(full, low, cache_dir=str(tmp_path / "c"))


def test_skip_bad_pairs_each_slice_with_the_nearest_within_tolerance(tmp_path):
    """Low-dose positions a hair above or below the full-dose ones (within 0.01 mm): every
    slice keeps its partner, the nearest one, not the next one up."""
    full, _ = series(tmp_path, "full", n=5)
    folder = str(tmp_path / "low")
    zs = [0.0, 0.8 - 0.004, 1.6 + 0.004, 2.4 - 0.004, 3.2]
    raws = [np.full((6, 8), 1024 + 10 * k, np.uint16) for k in range(5)]
    files = write_series(folder, raws, zs, random.Random(3))
    open(os.path.join(folder, files[4]), "w").write("garbage")  # the slice at 3.2 mm
    scan = dicom.load_pairs(full, folder, cache_dir=str(tmp_path / "c"), skip_bad=True)
    np.testing.assert_allclose(scan.positions, 0.8 * np.arange(4))
    np.testing.assert_array_equal(scan.low, scan.full)


def test_pairs_of_different_orientation_fail_naming_both(tmp_path):
    full, _ = series(tmp_path, "full", n=3)
    low, _ = series(tmp_path, "low", n=3, orientation=(1, 0, 0, 0, -1, 0))
    with pytest.raises(dicom.DicomError, match=r"full dose .*full has ImageOrientationPatient "
                       r"\[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\], low dose .*low \[1\.0, 0\.0, "
                       r"0\.0, 0\.0, -1\.0, 0\.0\]"):
        dicom.load_pairs(full, low, cache_dir=str(tmp_path / "c"))


def test_skip_bad_gives_each_low_dose_slice_one_partner(tmp_path):
    """Two full-dose slices 7 um apart, both within tolerance of one low-dose slice: only the
    nearer one keeps it (no low-dose slice is used twice); the other lost its partner to the
    skipped low-dose slice."""
    rng = random.Random(4)
    full, low = str(tmp_path / "full"), str(tmp_path / "low")
    raws = [np.full((6, 8), 1024 + 10 * k, np.uint16) for k in range(5)]
    write_series(full, raws[:4], [0.0, 0.8, 0.807, 1.6], rng)
    lows = [raws[0], raws[2], raws[3], raws[4]]
    names = write_series(low, lows, [0.0, 0.804, 1.6, 2.4], rng)
    open(os.path.join(low, names[3]), "w").write("garbage")  # the slice at 2.4 mm
    scan = dicom.load_pairs(full, low, cache_dir=str(tmp_path / "c"), skip_bad=True)
    np.testing.assert_allclose(scan.positions, [0.0, 0.807, 1.6])
    np.testing.assert_array_equal(scan.low, scan.full)


def test_skip_bad_drops_the_partner_of_a_skipped_slice(tmp_path):
    full, _ = series(tmp_path, "full", n=4)
    low, files = series(tmp_path, "low", n=4)
    open(files[1], "w").write("garbage")
    scan = dicom.load_pairs(full, low, cache_dir=str(tmp_path / "c"), skip_bad=True)
    assert scan.full.shape[0] == 3
    np.testing.assert_array_equal(scan.low, scan.full)
    np.testing.assert_allclose(scan.positions, np.delete(0.8 * np.arange(4), 1))


def test_skip_bad_does_not_pair_series_at_other_positions(tmp_path):
    """One skipped slice excuses one missing pair, not a low-dose series 0.4 mm off."""
    full, _ = series(tmp_path, "full", n=6)
    folder = str(tmp_path / "low")
    raws = [np.full((6, 8), 1024, np.uint16)] * 6
    files = write_series(folder, raws, 0.4 + 0.8 * np.arange(6), random.Random(5))
    open(os.path.join(folder, files[0]), "w").write("garbage")
    with pytest.raises(dicom.DicomError, match=r"full dose .*full \(6 slices\) and low dose "
                       r".*low \(5 slices\) are not at the same positions: 6 full and 5 low "
                       r"slice\(s\) have no partner, where 1 skipped low and 0 skipped full"):
        dicom.load_pairs(full, folder, cache_dir=str(tmp_path / "c"), skip_bad=True)
    # Most slices pair, but the last ones are 0.6 mm apart: one skipped slice does not excuse
    # that.
    full, _ = series(tmp_path, "full4", n=4)
    folder = str(tmp_path / "low4")
    files = write_series(folder, [np.full((6, 8), 1024, np.uint16)] * 4, [0.0, 0.8, 1.6, 3.0],
                         random.Random(6))
    open(os.path.join(folder, files[1]), "w").write("garbage")  # the slice at 0.8 mm
    with pytest.raises(dicom.DicomError, match=r"2 full and 1 low slice\(s\) have no partner"):
        dicom.load_pairs(full, folder, cache_dir=str(tmp_path / "c"), skip_bad=True)


def test_a_series_paired_with_itself_fails(tmp_path):
    full, files = series(tmp_path, "full", n=3)
    with pytest.raises(dicom.DicomError, match=r"are the same folder"):
        dicom.load_pairs(full, full + "/", cache_dir=str(tmp_path / "c"))
    copy = str(tmp_path / "copy")
    shutil.copytree(full, copy)
    with pytest.raises(dicom.DicomError, match=r"hold the same series \(SeriesInstanceUID "):
        dicom.load_pairs(full, copy, cache_dir=str(tmp_path / "c"))


def test_a_killed_cache_write_leaves_no_temporary_behind(tmp_path):
    from ldct_jax import files as files_lib
    full, _ = series(tmp_path, "full", n=3)
    cache = tmp_path / "c"
    cache.mkdir()
    # The name a write of a process that no longer runs leaves (files.py's temporaries).
    stale = cache / f".full.npy{files_lib._TMP}999999999-0"
    stale.write_bytes(b"x" * 100)
    dicom.read_series(full, str(cache))
    assert not stale.exists()


def test_folders_that_are_not_read_are_named(tmp_path, caplog):
    root = make_tree(str(tmp_path / "mayo"), patients={"L004": TREE["L004"]})
    os.makedirs(os.path.join(root, "l003"))
    caplog.set_level(logging.WARNING)
    dicom.load_mayo(root, cache_dir=str(tmp_path / "cache"))
    assert "not reading folder(s) ['l003']: not Mayo patient ids" in caplog.text
    os.makedirs(os.path.join(root, "P9", "FD"))
    open(os.path.join(root, "P9", "FD", "1.dcm"), "w").write("x")
    dicom.load_dicom_pairs(root, cache_dir=str(tmp_path / "cache"))
    assert re.search(r"not reading folder\(s\) \['P9', 'l003'\]: no full/low dose series "
                     r"folder pair", caplog.text)


def test_cache_is_used_then_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    folder, files = series(tmp_path, "s")
    cache = str(tmp_path / "cache")
    first, _, _ = dicom.read_series(folder, cache)
    assert isinstance(first, np.memmap) and not first.flags.writeable
    assert not [f for f in os.listdir(cache) if ".tmp-" in f]
    real = pydicom.dcmread

    def refuse(*a, **k):
        raise AssertionError("dcmread called although the series is cached")

    monkeypatch.setattr(pydicom, "dcmread", refuse)
    again, _, _ = dicom.read_series(folder, cache)
    np.testing.assert_array_equal(again, first)
    monkeypatch.setattr(pydicom, "dcmread", real)
    ds = pydicom.dcmread(files[0])
    ds.PixelData = np.full((6, 8), 3000, np.uint16).tobytes()
    ds.save_as(files[0])
    os.utime(files[0], ns=(1, 1))  # a different mtime even on coarse file systems
    changed, _, meta = dicom.read_series(folder, cache)
    k = meta["files"].index(os.path.basename(files[0]))
    assert np.all(changed[k] == 3000 - 1024)


def test_split_scans_holds_out_whole_patients_per_anatomy():
    def scan(pid, anatomy):
        v = np.zeros((2, 4, 4), np.float32)
        return data.Scan(pid, anatomy, v, v)

    scans = [scan(p, a) for p, a in [("C2", "chest"), ("C1", "chest"), ("L1", "abdomen"),
                                     ("L3", "abdomen"), ("L2", "abdomen")]]
    train, held = data.split_scans(scans, 1)
    assert [s.patient for s in held] == ["L3", "C2"]
    assert [s.patient for s in train] == ["L1", "L2", "C1"]
    assert data.split_scans(scans, 0)[1] == []
    with pytest.raises(ValueError, match=r"'chest' has 2 patient\(s\); held_out_patients=2 "
                                         r"would leave none"):
        data.split_scans(scans, 2)
    # The job names the config key.
    config = ml_collections.ConfigDict(dict(held_out_patients=2))
    with pytest.raises(ValueError, match=r"config\.data\.held_out_patients=2: anatomy "
                                         r"'chest' has 2 patient\(s\)"):
        data_job.split_scans(config, scans)


def test_load_scans_synthetic_dispatch_and_unknown_source(tmp_path, monkeypatch):
    from ldct_jax.data import synthetic
    calls = []
    v = np.zeros((2, 4, 4), np.float32)
    monkeypatch.setattr(synthetic, "build", lambda root, **kw: calls.append((root, kw)),
                        raising=False)
    monkeypatch.setattr(synthetic, "load", lambda root: [
        data.Scan("a", "chest", v, v), data.Scan("b", "head", v, v)], raising=False)
    cfg = ml_collections.ConfigDict(dict(source="synthetic", root="", anatomies=("head",),
                                         synthetic=dict(slices=3, seed=1)))
    scans = data_job.load_scans(cfg, str(tmp_path))
    assert calls == [(str(tmp_path / "data"), dict(slices=3, seed=1))]
    assert [s.patient for s in scans] == ["b"]
    cfg.source = "nifti"
    with pytest.raises(ValueError, match=r"config\.data\.source='nifti'; expected one of"):
        data_job.load_scans(cfg, str(tmp_path))
    # Names are checked before anything is built.
    cfg.source, cfg.anatomies = "synthetic", ("chets",)
    with pytest.raises(ValueError, match=r"config\.data\.anatomies=\('chets',\): unknown "
                                         r"\['chets'\]; expected some of \('chest', "):
        data_job.load_scans(cfg, str(tmp_path))
    cfg.anatomies = ("chest",)
    cfg.synthetic.anatomies = ("head",)
    with pytest.raises(ValueError, match=r"none of them is in the synthetic set"):
        data_job.load_scans(cfg, str(tmp_path))
    assert len(calls) == 1
    dicom_cfg = ml_collections.ConfigDict(dict(source="dicom", root=str(tmp_path),
                                               anatomy="lung", dose_fraction=0.25))
    with pytest.raises(ValueError, match=r"config\.data\.anatomy='lung'; expected one of"):
        data_job.load_scans(dicom_cfg, str(tmp_path))
    dicom_cfg.anatomy, dicom_cfg.dose_fraction = "chest", 25.0
    with pytest.raises(ValueError, match=r"config\.data\.dose_fraction=25\.0; expected"):
        data_job.load_scans(dicom_cfg, str(tmp_path))
