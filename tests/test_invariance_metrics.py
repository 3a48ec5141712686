"""Invariance metrics against known answers: white and blurred noise spectra, sinusoids,
Parseval, a brute-force DFT, independent samples, a synthetic gauss_ri perturbation, and
scikit-image's SSIM."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from ldct_jax import models
from ldct_jax.analysis import invariance_metrics as M


def white(shape, std, seed):
    return np.random.default_rng(seed).normal(0.0, std, shape)


def test_white_noise_spectrum_is_flat_at_the_variance():
    s = 7.0
    freqs, power = M.radial_power_spectrum(white((64, 64, 64), s, 0))
    np.testing.assert_allclose(freqs, (np.arange(32) + 0.5) / 64)
    assert np.isnan(power[0])  # [0, 1/64) holds only the zero frequency, which is in no bin
    # Sampling error: each bin averages >= 64 x 4 independent |FFT|^2 (exponential, rel. std 1),
    # so <= 6 % relative std per bin.
    np.testing.assert_allclose(power[1:], s ** 2, rtol=0.2)
    assert power[1:].mean() == pytest.approx(s ** 2, rel=0.02)


def test_spectral_distance_of_white_noise():
    s = 5.0
    a, b = white((64, 64, 64), s, 1), white((64, 64, 64), s, 2)
    assert M.spectral_distance(a, b) < 0.05
    assert M.spectral_distance(2 * b, b) == pytest.approx(2.0, abs=1e-9)  # log2 of 4
    assert M.spectral_distance(a, 2 * b) == pytest.approx(2.0, abs=0.05)
    # x_inv [N, S, H, W] against noise of another size: leading axes are images, cycles/px.
    assert M.spectral_distance(white((4, 4, 64, 64), 2 * s, 3), white((4, 96, 80), s, 4)) == \
        pytest.approx(2.0, abs=0.05)


def test_sinusoids_land_in_their_bins_non_square_and_parseval():
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    a, b = 30.0, 12.0
    # 10 cycles across the width (0.15625 cycles/px), 9 down the height (0.1875 cycles/px).
    x = a * np.cos(2 * np.pi * 10 * xx / w + 0.3) + b * np.sin(2 * np.pi * 9 * yy / h)
    edges = np.linspace(0.0, 0.5, 21)  # width 0.025: 0.15625 in bin 6, 0.1875 in bin 7
    _, power = M.radial_power_spectrum(x, bands=edges)
    assert set(np.flatnonzero(power > 1e-9 * power.max())) == {6, 7}
    # The Nyquist frequency 0.5 (columns alternating +-1) belongs to the last default bin.
    _, power = M.radial_power_spectrum(np.cos(np.pi * xx))
    assert np.nanargmax(power) == 31 and power[31] > 0.01
    # Parseval: the sum of |FFT|^2 / (H W) over all H W frequencies, over H W, is the variance;
    # one band reaching past the corner at sqrt(0.5) averages all but the zero frequency.
    all_freqs = [0.0, 0.75]
    assert M.radial_power_spectrum(x, bands=all_freqs)[1][0] == pytest.approx(
        np.var(x) * h * w / (h * w - 1), rel=1e-10)
    assert np.var(x) == pytest.approx((a ** 2 + b ** 2) / 2, rel=1e-10)
    noise = white((3, 21, 34), 3.0, 5)
    np.testing.assert_allclose(M.band_powers(noise, all_freqs),
                               np.mean([np.var(n) for n in noise]) * 21 * 34 / (21 * 34 - 1),
                               rtol=1e-10)


def test_radial_average_matches_a_brute_force_dft():
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1.0, (3, 7, 10)) + np.linspace(0, 5, 10)  # odd, even, not square
    n, h, w = x.shape
    edges = np.array([0.0, 0.11, 0.23, 0.37, 0.47, 0.72])
    rr, cc = np.mgrid[:h, :w]
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    for u in range(h):
        for v in range(w):
            if u == v == 0:
                continue  # the zero frequency is in no bin
            radius = np.hypot(min(u, h - u) / h, min(v, w - v) / w)
            assert np.min(np.abs(edges - radius)) > 1e-6  # no radius on an edge
            k = np.searchsorted(edges, radius) - 1
            if 0 <= k < len(edges) - 1:
                kernel = np.exp(-2j * np.pi * (u * rr / h + v * cc / w))
                for img in x:
                    sums[k] += abs(np.sum((img - img.mean()) * kernel)) ** 2 / (h * w)
                counts[k] += n
    freqs, power = M.radial_power_spectrum(x, bands=edges)
    np.testing.assert_allclose(power, sums / counts, rtol=1e-10)
    np.testing.assert_allclose(freqs, [0.055, 0.17, 0.3, 0.42, 0.595])
    np.testing.assert_allclose(M.band_powers(x, edges), power)


def test_blurred_white_noise_has_the_gaussian_spectrum():
    s, sigma = 10.0, 2.0
    blurred = ndimage.gaussian_filter(white((32, 128, 128), s, 7), sigma=(0, sigma, sigma),
                                      mode="wrap")
    edges = np.arange(0.02, 0.1201, 0.01)
    freqs, power = M.radial_power_spectrum(blurred, bands=edges)
    # The squared transfer function of a Gaussian of sigma px: exp(-(2 pi f sigma)^2).
    expected = s ** 2 * np.exp(-(2 * np.pi * freqs * sigma) ** 2)
    # >= 32 x 12 independent |FFT|^2 per bin: <= 5 % relative std; the bin centre for the bin
    # mean of the curve: < 1 %.
    np.testing.assert_allclose(power, expected, rtol=0.15)
    assert np.mean(np.log(power / expected)) == pytest.approx(0.0, abs=0.05)


def test_diversity_known_answers():
    v = white((3, 1, 32, 32), 4.0, 8)
    assert M.diversity(np.repeat(v, 4, axis=1)) == 0.0
    assert M.diversity(np.concatenate([v, -v], axis=1)) == pytest.approx(2.0, rel=1e-12)
    # Independent zero-mean samples of equal std: RMS(s_i - s_j) = sqrt(2) std.
    assert M.diversity(white((4, 5, 64, 64), 3.0, 9)) == pytest.approx(np.sqrt(2), rel=0.02)


def test_inside_outside_ratio_on_a_synthetic_perturbation():
    h, w = 64, 80
    # gauss_ri's 30 px central square: rows 17..46, columns 25..54; 4 px deep: 21..42, 29..50.
    x_inv = np.ones((2, 3, h, w))
    x_inv[..., 17:47, 25:55] = 100.0  # the square's rim: neither inside nor outside
    x_inv[..., 21:43, 29:51] = -5.0
    assert M.inside_outside_ratio(x_inv, 30) == pytest.approx(5.0, rel=1e-12)
    assert M.inside_outside_ratio(x_inv, 30, margin=3) > 5.0  # now the rim counts inside
    x_inv[..., :17, :] = 0.0
    x_inv[..., 47:, :] = 0.0
    x_inv[..., :25] = 0.0
    x_inv[..., 55:] = 0.0
    assert M.inside_outside_ratio(x_inv, 30) == np.inf


def test_default_margin_is_where_gauss_ri_is_blind():
    d = models.build("gauss_ri", {})
    x = white((1, 64, 64), 50.0, 10).astype(np.float32)
    y = np.asarray(d.spec.apply(d.params, x))
    for margin, blind in ((4, True), (3, False)):
        x_inv = np.zeros_like(x)
        x_inv[:, 17 + margin:47 - margin, 17 + margin:47 - margin] = 1000.0
        changed = np.abs(np.asarray(d.spec.apply(d.params, x + x_inv)) - y).max()
        assert (changed < 1e-3) == blind, (margin, changed)


def test_summary_numbers_and_ssim_against_scikit_image():
    rng = np.random.default_rng(11)
    n, s, h = 2, 3, 32
    images = -900.0 + 940.0 * (rng.random((n, h, h)) > 0.5)
    images = ndimage.gaussian_filter(images, (0, 2, 2))
    x_inv = rng.normal(0.0, 40.0, (n, s, h, h))
    out_x = ndimage.gaussian_filter(images, (0, 1, 1))
    out_pert = out_x[:, None] + 0.1 * x_inv
    noise = white((4, h, h), 40.0, 12)
    r = M.summary(images, x_inv, out_x, out_pert, noise=noise, square=16)
    rms = np.sqrt(np.mean(x_inv ** 2, axis=(-2, -1)))
    assert r["input_rms_hu"] == pytest.approx(rms.mean(), rel=1e-6)
    assert r["output_rms_hu"] == pytest.approx(0.1 * rms.mean(), rel=1e-4)
    assert r["ratio"] == pytest.approx(10.0, rel=1e-4)
    ref = [structural_similarity(images[i].astype(np.float32),
                                 (images[i] + x_inv[i, j]).astype(np.float32),
                                 data_range=4095.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
           for i in range(n) for j in range(s)]
    assert r["input_ssim"] == pytest.approx(np.mean(ref), abs=1e-4)
    assert r["input_ssim"] < 0.99
    assert r["diversity"] == pytest.approx(np.sqrt(2), rel=0.05)
    assert r["spectral_distance"] == pytest.approx(M.spectral_distance(x_inv, noise))
    assert r["inside_outside_ratio"] == pytest.approx(M.inside_outside_ratio(x_inv, 16))

    zero = M.summary(images, np.zeros((n, 1, h, h)), out_x, out_x[:, None])
    assert zero["input_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert zero["input_rms_hu"] == 0.0
    assert set(zero) == {"input_rms_hu", "output_rms_hu", "ratio", "input_ssim"}
    assert np.isnan(zero["ratio"])
    assert M.summary(images, x_inv, out_x, out_x[:, None] + 0 * x_inv)["ratio"] == np.inf


def test_bad_inputs_name_what_is_wrong():
    x = white((2, 3, 32, 32), 1.0, 13)
    with pytest.raises(ValueError, match="x_inv has zero power in the band"):
        M.spectral_distance(np.zeros_like(x), x)
    with pytest.raises(ValueError, match="noise has zero power"):
        M.spectral_distance(x, np.zeros((4, 32, 32)))
    small, edges = white((2, 8, 8), 1.0, 14), [0.0, 0.01, 0.1, 0.5]  # frequency step 1/8
    with pytest.raises(ValueError, match=r"band \[0, 0.01\) .* 8 x 8 image"):
        M.band_powers(small, edges)
    power = M.radial_power_spectrum(small, bands=edges)[1]
    assert np.isnan(power[:2]).all() and np.isfinite(power[2])
    with pytest.raises(ValueError, match="band edges"):
        M.radial_power_spectrum(x, bands=[0.2, 0.1])
    with pytest.raises(ValueError, match="images: expected images"):
        M.radial_power_spectrum(np.zeros(5))
    bad = x.copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"x_inv: 1 NaN/inf .* at index \(1, 2, 3, 4\)"):
        M.spectral_distance(bad, x)
    with pytest.raises(ValueError, match="S >= 2"):
        M.diversity(x[:, :1])
    with pytest.raises(ValueError, match="every sample is zero"):
        M.diversity(np.zeros_like(x))
    with pytest.raises(ValueError, match="margin=8 leaves no pixel"):
        M.inside_outside_ratio(x, 16, margin=8)
    with pytest.raises(ValueError, match="square=32"):
        M.inside_outside_ratio(x, 32)
    with pytest.raises(ValueError, match="zero both deep inside and outside"):
        M.inside_outside_ratio(np.zeros_like(x), 16)
    images, out_x = x[:, 0], x[:, 0]
    with pytest.raises(ValueError, match=r"x_inv must be \[N, S, H, W\] = \[2, S, 32, 32\]"):
        M.summary(images, x[:, 0], out_x, x)
    with pytest.raises(ValueError, match=r"x_inv must be .* got shape \(2, 3, 32, 30\)"):
        M.summary(images, x[..., :30], out_x, x)
    with pytest.raises(ValueError, match="out_x must be"):
        M.summary(images, x, out_x[:1], x)
    with pytest.raises(ValueError, match=r"out_pert must be \[N, S, H, W\] = \[2, 3, 32, 32\]"):
        M.summary(images, x, out_x, x[:, :2])
    with pytest.raises(ValueError, match="images must be"):
        M.summary(x, x, out_x, x)
