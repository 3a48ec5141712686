"""Synthetic CT: phantom realism, noise physics of the dose simulation, and the on-disk build."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ldct_jax.data import synthetic
from ldct_jax.data.synthetic import dose, phantoms
from tests.workdirs import files_of

T = phantoms.TISSUES


def _soft_tissue(labels, erode):
    return ndimage.binary_erosion(np.isin(labels, phantoms.SOFT_TISSUE), iterations=erode)


def _mid_slices(anatomy, size, patients=(0, 1)):
    images, labels = [], []
    for p in patients:
        z = phantoms.slice_positions(anatomy, 0, p, 8, 5.0)[4]
        hu, lab = phantoms.phantom(anatomy, 0, p, z, size)
        images.append(hu)
        labels.append(lab)
    return np.stack(images), np.stack(labels)


# Published CT numbers (HU) of each tissue, wide enough for patient variation.
HU_RANGES = {"lung": (-900, -750), "fat": (-130, -70), "muscle": (35, 65), "liver": (45, 125),
             "grey": (30, 45), "white": (20, 35), "csf": (0, 15), "marrow": (150, 800),
             "bone": (300, 2000)}


@pytest.mark.parametrize("anatomy,required", [
    ("chest", ("lung", "fat", "muscle", "blood", "airway", "bone", "marrow")),
    ("abdomen", ("liver", "kidney", "fat", "muscle", "blood", "bone", "bowel", "lesion")),
    ("head", ("bone", "marrow", "grey", "white", "csf"))])
def test_phantom_tissues_and_hu(anatomy, required):
    found = {}
    for p in range(2):
        for z in phantoms.slice_positions(anatomy, 0, p, 8, 12.0):
            hu, labels = phantoms.phantom(anatomy, 0, p, z, 192, blur_px=0)
            for name, label in T.items():
                if (labels == label).sum() > 3:
                    found.setdefault(name, [])
                core = ndimage.binary_erosion(labels == label)   # no partial volume
                if core.sum() > 3:
                    found[name].append(np.median(hu[core]))
    assert set(required) <= set(found), f"{anatomy}: missing {set(required) - set(found)}"
    for name, (low, high) in HU_RANGES.items():
        for value in found.get(name, []):
            assert low <= value <= high, f"{anatomy} {name}: median {value} HU"
    hu, _ = phantoms.phantom(anatomy, 0, 0, 50.0, 64)
    assert hu.dtype == np.float32 and hu.shape == (64, 64)
    assert hu[0, 0] == -1000.0 and hu.max() < 3071


@pytest.mark.parametrize("anatomy", phantoms.ANATOMIES)
def test_neighbouring_slices_are_similar_patients_differ(anatomy):
    z = phantoms.slice_positions(anatomy, 3, 0, 2, 5.0)
    a = phantoms.phantom(anatomy, 3, 0, z[0], 128)[0]
    b = phantoms.phantom(anatomy, 3, 0, z[1], 128)[0]
    other = phantoms.phantom(anatomy, 3, 1, z[0], 128)[0]
    neighbour = np.abs(np.clip(a, -200, 200) - np.clip(b, -200, 200)).mean()
    patients = np.abs(np.clip(a, -200, 200) - np.clip(other, -200, 200)).mean()
    assert neighbour < 0.5 * patients
    np.testing.assert_array_equal(a, phantoms.phantom(anatomy, 3, 0, z[0], 128)[0])
    assert not np.array_equal(a, phantoms.phantom(anatomy, 4, 0, z[0], 128)[0])


def test_phantom_rejects_unknown_anatomy():
    with pytest.raises(ValueError, match="unknown anatomy 'knee'; expected one of"):
        phantoms.phantom("knee", 0, 0, 0.0, 64)


def _simulate(images, anatomy, doses, num_angles, seed=0):
    size = images.shape[-1]
    keys = dose.slice_keys(seed, 0, 0, images.shape[0])
    return np.asarray(dose.simulate(
        jnp.asarray(images), keys, jnp.asarray(doses, jnp.float32),
        pixel_mm=phantoms.pixel_mm(anatomy, size),
        i0=dose.ROUTINE_I0[anatomy] * dose.counts_scale(size, num_angles), num_angles=num_angles))


@pytest.mark.slow
@pytest.mark.parametrize("anatomy", phantoms.ANATOMIES)
def test_noise_ratio_is_sqrt_inverse_dose(anatomy):
    images, labels = _mid_slices(anatomy, 256)
    fraction = dose.DOSE_FRACTION[anatomy]
    low, full = _simulate(images, anatomy, [fraction, 1.0], 180)
    uniform = np.stack([_soft_tissue(lab, 3) for lab in labels])
    ratio = (low - images)[uniform].std() / (full - images)[uniform].std()
    assert abs(ratio / np.sqrt(1 / fraction) - 1) < 0.10, (anatomy, ratio)


def _radial_nps(noise, roi, grid=3):
    """Radially averaged noise power spectrum over a grid x grid of central ROIs per image."""
    start = noise.shape[-1] // 2 - grid * roi // 2
    patches = np.concatenate([
        noise[:, start + i * roi: start + (i + 1) * roi, start + j * roi: start + (j + 1) * roi]
        for i in range(grid) for j in range(grid)])
    patches = patches - patches.mean(axis=(1, 2), keepdims=True)
    nps = (np.abs(np.fft.fft2(patches)) ** 2).mean(0)
    f = np.fft.fftfreq(roi)
    radius = np.rint(np.hypot(f[:, None], f[None, :]) * roi).astype(int)
    counts = np.bincount(radius.ravel())
    return (np.bincount(radius.ravel(), nps.ravel()) / np.maximum(counts, 1))[1: roi // 2]


def test_noise_power_spectrum_is_ct_like_not_white():
    size, roi = 256, 48
    rows, cols = np.mgrid[:size, :size] - size // 2
    water = np.where(rows ** 2 + cols ** 2 < (0.42 * size) ** 2, 0.0, -1000.0).astype(np.float32)
    images = np.repeat(water[None], 2, 0)
    first, second = _simulate(images, "abdomen", [1.0, 1.0], 180)   # independent noise
    nps = _radial_nps(first - second, roi)
    # Ramp-filtered noise: ~0 at the lowest frequency, rising to a peak at mid frequencies.
    assert nps[0] < 0.25 * nps.max(), nps
    assert nps[0] < nps[1:3].mean() < nps[3:6].mean() < nps[6:10].mean(), nps
    white = _radial_nps(np.random.default_rng(0).normal(size=(2, size, size)), roi)
    assert white[0] > 0.6 * white.max()          # the same measure on white noise: flat


@pytest.mark.parametrize("anatomy", phantoms.ANATOMIES)
def test_noiseless_fbp_reproduces_phantom_away_from_edges(anatomy):
    images, _ = _mid_slices(anatomy, 256, patients=(0,))
    recon = np.asarray(dose.noiseless(jnp.asarray(images), pixel_mm=phantoms.pixel_mm(
        anatomy, 256), num_angles=180))
    image = images[0]
    flat = (ndimage.maximum_filter(image, 9) - ndimage.minimum_filter(image, 9)) < 20
    inside = ndimage.binary_erosion(image > -950, iterations=5) & flat
    rms = np.sqrt(np.mean((recon[0] - image)[inside] ** 2))
    assert inside.sum() > 2000 and rms < 10.0, (anatomy, rms)


@pytest.mark.slow
def test_routine_noise_is_10_to_15_hu_at_512():
    for anatomy in phantoms.ANATOMIES:
        images, labels = _mid_slices(anatomy, 512, patients=(0,))
        full = _simulate(images, anatomy, [1.0, 0.5], dose.NUM_ANGLES)[0]
        std = (full - images)[0][_soft_tissue(labels[0], 6)].std()
        assert 10.0 <= std <= 15.0, (anatomy, std)


def test_noise_is_deterministic_and_independent_per_dose():
    images, _ = _mid_slices("head", 256)
    both = _simulate(images, "head", [0.25, 1.0], 180)
    again = _simulate(images, "head", [0.25, 1.0], 180)
    np.testing.assert_array_equal(both, again)
    other = _simulate(images, "head", [0.25, 1.0], 180, seed=1)
    assert not np.allclose(both, other)
    assert not np.allclose(both[0] - images, both[1] - images)   # independent noise per dose


# --- build / load ---------------------------------------------------------------------------

TINY = dict(patients_per_anatomy=1, slices=2, size=32, num_angles=24, progress=False)


@pytest.mark.slow
def test_build_is_deterministic_and_loads_scans(tmp_path):
    a = synthetic.build(str(tmp_path / "a"), **TINY)
    b = synthetic.build(str(tmp_path / "b"), **TINY)
    files = files_of(a)
    assert files == files_of(b)
    assert "synthetic-chest-000/low.npy" in files and "manifest.json" in files
    scans = synthetic.load(a)
    assert [s.patient for s in scans] == ["synthetic-abdomen-000", "synthetic-chest-000",
                                          "synthetic-head-000"]
    chest = scans[1]
    assert chest.anatomy == "chest" and chest.dose_fraction == 0.10
    assert chest.low.shape == (2, 32, 32) and chest.low.dtype == np.float32
    assert isinstance(chest.low, np.memmap) and not chest.low.flags.writeable
    np.testing.assert_allclose(np.diff(chest.positions), 5.0)
    c = synthetic.build(str(tmp_path / "c"), **dict(TINY, seed=1))
    assert files_of(c)["synthetic-chest-000/low.npy"] != files["synthetic-chest-000/low.npy"]


def test_second_build_reuses_and_other_params_raise(tmp_path, monkeypatch):
    root = synthetic.build(str(tmp_path / "d"), **TINY)
    before = files_of(root)

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(synthetic, "_write_patient", fail)
    assert synthetic.build(root, **TINY) == root
    assert files_of(root) == before
    with pytest.raises(ValueError, match=r"at .*d was built with other parameters \(size: "
                                         r"32 -> 48; slices: 2 -> 3\)"):
        synthetic.build(root, **dict(TINY, size=48, slices=3))


def test_interrupted_build_leaves_nothing_and_next_build_succeeds(tmp_path, monkeypatch):
    root = str(tmp_path / "e")
    calls = []
    real = synthetic._write_patient

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_patient", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthetic.build(root, **TINY)
    assert not os.path.exists(root) and os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no synthetic data set at .*e"):
        synthetic.load(root)
    monkeypatch.setattr(synthetic, "_write_patient", real)
    # A temporary folder left by a killed build (its process is gone) is cleaned up.
    stale = tmp_path / ".e.tmp-999999999-abcd"
    stale.mkdir()
    synthetic.build(root, **TINY)
    assert len(synthetic.load(root)) == 3 and not stale.exists()
    with open(os.path.join(root, "manifest.json")) as f:
        assert json.load(f)["params"]["size"] == 32


def test_build_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown anatomy 'knee' in anatomies=\['knee'\]"):
        synthetic.build(str(tmp_path / "x"), anatomies=["knee"])
    with pytest.raises(ValueError, match="size=8 must be an integer >= 16"):
        synthetic.build(str(tmp_path / "x"), size=8)
    with pytest.raises(ValueError, match=r"dose_fractions\['chest'\]=0 must be in \(0, 1\]"):
        synthetic.build(str(tmp_path / "x"), dose_fractions={"chest": 0})
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "other.txt").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty but has no manifest.json"):
        synthetic.build(str(tmp_path / "y"), **TINY)
    assert not os.path.exists(tmp_path / "x")
