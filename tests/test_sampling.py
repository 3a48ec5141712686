"""Patch sampler: equal patient weighting (chi-square), determinism, host shares, same place."""

import jax
import numpy as np
import pytest
from scipy import stats

from ldct_jax import parallel
from ldct_jax.data import Scan, sampling

H, W = 20, 24


def coded_scan(p, n):
    """full[s, y, x] = 1e5 p + 1e3 s + 30 y + x encodes where a pixel comes from; low = full+0.5."""
    s, y, x = np.meshgrid(np.arange(n), np.arange(H), np.arange(W), indexing="ij")
    full = (1e5 * p + 1e3 * s + 30 * y + x).astype(np.float32)
    return Scan(f"P{p}", "abdomen", full + 0.5, full)


# Very different slice counts: slice-uniform sampling would almost never pick patient 0.
SLICES = (1, 50, 10, 3)
SCANS = [coded_scan(p, n) for p, n in enumerate(SLICES)]


def decode(full_patches):
    corner = full_patches[:, 0, 0].astype(np.int64)
    return corner // 100000, corner % 100000 // 1000, corner % 1000 // 30, corner % 1000 % 30


def test_patients_equally_likely_then_slices_uniform():
    patients, slices = [], []
    for step in range(100):
        b = sampling.sample_batch(SCANS, step, global_batch=128, patch_size=8, seed=3)
        p, s, _, _ = decode(b["full"])
        patients.append(p)
        slices.append(s[p == 1])
    counts = np.bincount(np.concatenate(patients), minlength=len(SLICES))
    assert stats.chisquare(counts).pvalue > 1e-3  # equal weighting
    # The same counts are wildly unlike slice-uniform weighting, so the test above can fail.
    slice_uniform = counts.sum() * np.asarray(SLICES) / sum(SLICES)
    assert stats.chisquare(counts, slice_uniform).pvalue < 1e-12
    assert stats.chisquare(np.bincount(np.concatenate(slices), minlength=50)).pvalue > 1e-3


def test_equal_weighting_test_rejects_a_slice_uniform_sampler():
    rng = np.random.default_rng(0)
    flat = np.repeat(np.arange(len(SLICES)), SLICES)  # one entry per slice
    counts = np.bincount(flat[rng.integers(0, len(flat), 12800)], minlength=len(SLICES))
    assert stats.chisquare(counts).pvalue < 1e-12


def test_patch_location_same_in_low_and_full_and_covers_the_image():
    b = sampling.sample_batch(SCANS, 7, global_batch=512, patch_size=8, seed=0)
    np.testing.assert_array_equal(b["low"] - b["full"], 0.5)
    _, _, y, x = decode(b["full"])
    # Each patch is a contiguous window starting at (y, x).
    expected = b["full"][:, :1, :1] + 30 * np.arange(8)[:, None] + np.arange(8)[None, :]
    np.testing.assert_array_equal(b["full"], expected)
    assert set(y) == set(range(H - 8 + 1)) and set(x) == set(range(W - 8 + 1))


def test_same_seed_and_step_same_batch():
    kw = dict(global_batch=16, patch_size=8, seed=5)
    a, b = (sampling.sample_batch(SCANS, 11, **kw) for _ in range(2))
    np.testing.assert_array_equal(a["low"], b["low"])
    assert not np.array_equal(a["full"], sampling.sample_batch(SCANS, 12, **kw)["full"])
    assert not np.array_equal(a["full"], sampling.sample_batch(SCANS, 11, **{**kw, "seed": 6})
                              ["full"])


class CountingArray(np.ndarray):
    """Counts the slices read through it."""
    reads = 0

    def __getitem__(self, item):
        CountingArray.reads += 1
        return super().__getitem__(item)


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_host_shares_reassemble_the_global_batch(hosts):
    kw = dict(global_batch=32, patch_size=6, seed=1)
    whole = sampling.sample_batch(SCANS, 4, **kw)
    counted = [Scan(s.patient, s.anatomy, s.low.view(CountingArray), s.full.view(CountingArray))
               for s in SCANS]
    shares = []
    for i in range(hosts):
        CountingArray.reads = 0
        shares.append(sampling.sample_batch(counted, 4, **kw, process_index=i,
                                            process_count=hosts))
        assert CountingArray.reads == 2 * 32 // hosts  # only this host's rows are read
    for key in ("low", "full"):
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[key])


def test_bad_arguments_name_the_values():
    with pytest.raises(ValueError, match=r"global_batch=30 is not divisible by process_count=4"):
        sampling.sample_batch(SCANS, 0, global_batch=30, patch_size=8, seed=0,
                              process_index=0, process_count=4)
    with pytest.raises(ValueError, match=r"patch_size=21 does not fit the 20x24 images of "
                                         r"patient P0"):
        sampling.sample_batch(SCANS, 0, global_batch=4, patch_size=21, seed=0)


@pytest.mark.parametrize("depth, workers", [(0, 1), (1, 1), (2, 2)])
def test_prefetch_gives_the_batches_in_order_and_global_arrays(depth, workers):
    def batch(step):
        return sampling.sample_batch(SCANS, step, global_batch=8, patch_size=8, seed=2)

    got = list(sampling.prefetch(batch, range(3, 7), depth, workers))
    assert [s for s, _ in got] == [3, 4, 5, 6]
    for step, b in got:
        np.testing.assert_array_equal(b["full"], batch(step)["full"])
    mesh = parallel.make_mesh()
    arrays = parallel.global_batch(batch(5), mesh)
    assert arrays["low"].shape == (8, 8, 8) and len(arrays["low"].sharding.device_set) == \
        len(jax.devices())
    np.testing.assert_array_equal(np.asarray(arrays["low"]), got[2][1]["low"])


def test_sample_slices_balanced_and_deterministic():
    scans = SCANS[1:]  # 50, 10 and 3 slices
    out = sampling.sample_slices(scans, 8, seed=0)
    assert np.bincount(out["patient"]).tolist() == [3, 3, 2]
    p, s, y, x = decode(out["full"])
    np.testing.assert_array_equal(p, out["patient"] + 1)
    np.testing.assert_array_equal(s, out["slice"])
    assert np.all((y == 0) & (x == 0)) and out["full"].shape == (8, H, W)
    np.testing.assert_array_equal(sampling.sample_slices(scans, 8, seed=0)["slice"], out["slice"])
    with pytest.raises(ValueError, match="4 slices requested from patient P3, which has 3"):
        sampling.sample_slices(scans, 12, seed=0)
