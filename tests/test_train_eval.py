"""Held-out evaluation: metrics against NumPy and scikit-image, whole slices, sharded inference."""

import os

import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ldct_jax import ct, models, parallel
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import train as train_job
from ldct_jax.train import evaluate
from tests.nets import small_cnn10


def _scans(size=40, slices=3):
    rng = np.random.default_rng(1)
    out = []
    for i, anatomy in enumerate(("chest", "abdomen", "head")):
        full = rng.uniform(-200, 200, (slices, size, size)).astype(np.float32)
        full[:, : size // 4] = -1000.0
        low = full + rng.normal(0, 20 * (i + 1), full.shape).astype(np.float32)
        out.append(Scan(f"p{i}", anatomy, low, full, 0.25))
    return out


def test_slice_metrics_match_numpy_and_skimage():
    scans = _scans()
    evals = evaluate.eval_set(scans, 2, seed=0)
    assert evals.low.shape == (6, 40, 40)   # whole slices, two per patient
    assert sorted(evals.anatomy) == ["abdomen"] * 2 + ["chest"] * 2 + ["head"] * 2
    out = evals.full + np.float32(7.0)      # a known error: RMSE exactly 7 HU
    m = evaluate.slice_metrics(out, evals.full, evals.anatomy)
    np.testing.assert_allclose(m["rmse_hu"], 7.0, rtol=1e-5)
    np.testing.assert_allclose(m["psnr_db"], 20 * np.log10(4095 / 7.0), rtol=1e-5)
    low = evaluate.slice_metrics(evals.low, evals.full, evals.anatomy)
    for i, a in enumerate(evals.anatomy):
        diff = evals.low[i].astype(np.float64) - evals.full[i]
        assert low["rmse_hu"][i] == pytest.approx(np.sqrt(np.mean(diff ** 2)), rel=1e-5)
        w = ct.window_for(a)
        ref = structural_similarity(ct.apply_window(evals.low[i].astype(np.float64), w),
                                    ct.apply_window(evals.full[i].astype(np.float64), w),
                                    data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert low["ssim"][i] == pytest.approx(ref, abs=1e-4)


def test_summarise_reduction_and_per_anatomy():
    evals = evaluate.eval_set(_scans(), 3, seed=0)
    out = evals.full + 0.5 * (evals.low - evals.full)   # halves every error
    r = evaluate.summarise(evals, out)
    assert r["rmse_reduction"] == pytest.approx(0.5, rel=1e-5)
    assert r["num_slices"] == 9 and r["patients"] == ["p0", "p1", "p2"]
    for a, per in r["per_anatomy"].items():
        assert per["num_slices"] == 3 and per["rmse_reduction"] == pytest.approx(0.5, rel=1e-5)
        assert per["network"]["psnr_db"] == pytest.approx(per["low_dose"]["psnr_db"]
                                                          + 20 * np.log10(2), rel=1e-4)
    table = train_job.format_result(r)
    assert "50.0 %" in table and "chest" in table


def test_denoise_sharded_matches_direct(tmp_path):
    """5 slices on 4 devices (padded), in chunks of 4, == the network applied to each alone."""
    mesh = parallel.make_mesh()
    d = small_cnn10()
    images = np.random.default_rng(0).normal(0, 300, size=(5, 16, 16)).astype(np.float32)
    out = models.denoise(d.spec, d.params, images, mesh=mesh, batch_size=3)
    direct = np.stack([np.asarray(d(x)) for x in images])
    np.testing.assert_allclose(out, direct, rtol=1e-6, atol=1e-4)
    assert np.abs(direct - images).max() > 1.0
    evals = evaluate.eval_set(_scans(), 1, seed=0)
    path = train_job.save_figure(str(tmp_path / "eval.png"), evals, evals.full, "title")
    assert os.path.getsize(path) > 1000
    assert jax.device_count() == 4
