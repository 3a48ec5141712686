"""The Jacobian spectrum against dense SVDs of the explicit Jacobian: gauss_ri, whose Jacobian
is linear and known (a Gaussian, rows of the central square zeroed), and CNN-10 (jax.jacrev)."""

import os

import jax
import numpy as np
import pytest

from benchmarks import common
from ldct_jax import fastpath, models, parallel
from ldct_jax.analysis import jacobian
from ldct_jax.models.gauss_ri import central_square
from tests.browser import Page
from tests.nets import small_cnn10


def phantom(h, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :h]
    body = np.where((yy - h / 2) ** 2 + (xx - h / 2) ** 2 < (0.4 * h) ** 2, 40.0, -900.0)
    return (body + rng.normal(0, 30, body.shape)).astype(np.float32)


def dense_svd(d, x):
    """The explicit J at `x` (jax.jacrev) and its singular values (float64 SVD)."""
    f = lambda v: d.spec.apply(d.params, v.reshape(x.shape)).ravel()  # noqa: E731
    J = np.asarray(jax.jit(jax.jacrev(f))(x.ravel()), np.float64)
    return J, np.linalg.svd(J, compute_uv=False)


@pytest.fixture(scope="module")
def gauss():
    d = models.create("gauss_ri", jax.random.key(0))
    x = phantom(48)
    # One image on one device (on the 4 simulated ones it would be padded to 4).
    one = parallel.make_mesh(1)
    return d, x, jacobian.spectrum(d, x, k=16, mesh=one), dense_svd(d, x)


@pytest.mark.slow
def test_gauss_ri_largest_values_match_the_dense_svd(gauss):
    _, _, s, (_, dense) = gauss
    np.testing.assert_allclose(s.largest_values[0], dense[:16], rtol=1e-3)
    # Clustered values (the Gaussian's lowest frequencies): accurate long before every
    # residual is below the tolerance; reported as they are.
    assert np.all(s.residuals[0, :16] <= 1e-3)
    assert s.converged.shape == (1, 32) and s.products[0] > 0


@pytest.mark.slow
def test_gauss_ri_smallest_vectors_are_ignored_and_lie_in_the_square(gauss):
    _, x, s, (J, dense) = gauss
    norm = dense[0]
    V = s.smallest_vectors[0].reshape(16, -1)
    np.testing.assert_allclose(V @ V.T, np.eye(16), atol=1e-4)   # orthonormal
    Jv = np.linalg.norm(V.astype(np.float64) @ J.T, axis=1)      # ||J v|| per vector
    assert np.all(Jv <= 1e-3 * norm), Jv / norm
    np.testing.assert_allclose(s.smallest_values[0], Jv, atol=1e-3 * norm)
    rows, cols = central_square(*x.shape, 30)
    inside = np.zeros(x.shape, bool)
    inside[rows, cols] = True
    share = np.sum(np.square(s.smallest_vectors[0][:, inside])) / 16
    print(f"gauss_ri 48x48: ||J v|| / ||J|| of the 16 smallest: max {np.max(Jv) / norm:.2e}; "
          f"energy inside the zeroed square: {100 * share:.1f} %; {int(s.products[0])} "
          f"products with J and J^T")
    # The exact null space is the square's interior; float32 mixes in the Gaussian's highest
    # frequencies (s near 2e-4 ||J||, outside it), so most, not all, of the energy is inside.
    assert share > 0.5


@pytest.mark.slow
def test_cnn10_values_match_the_dense_svd_of_jacrev():
    """Both ends to 1e-3 relative. The smallest end is a dense cluster (the 16 smallest singular
    values lie within 4.2e-3 ||J||, the smallest at 6e-5 ||J||): a tighter tolerance there
    resolves it; float32 cannot resolve values below about 1e-6 ||J|| to 1e-3 of themselves."""
    d = small_cnn10(features=(16, 8))
    x = phantom(40, seed=1)
    s = jacobian.spectrum(d, x, options=jacobian.SpectrumOptions(
        k=16, iterations=1500, smallest_tolerance=2e-6), mesh=parallel.make_mesh(1))
    J, dense = dense_svd(d, x)
    norm = dense[0]
    np.testing.assert_allclose(s.largest_values[0], dense[:16], rtol=1e-3)
    smallest = dense[::-1][:16]
    np.testing.assert_allclose(s.smallest_values[0], smallest, rtol=1e-3, atol=1e-6 * norm)
    V = s.smallest_vectors[0].reshape(16, -1).astype(np.float64)
    np.testing.assert_allclose(s.smallest_values[0], np.linalg.norm(V @ J.T, axis=1),
                               rtol=1e-4, atol=1e-7 * norm)
    assert s.converged[0].all()
    print(f"cnn10 40x40: s_max {norm:.4g}; smallest {smallest[0]:.3g}..{smallest[-1]:.3g}, "
          f"worst relative error {np.max(np.abs(s.smallest_values[0] / smallest - 1)):.1e}; "
          f"iterations {s.iterations[0].tolist()}, {int(s.products[0])} products, "
          f"{s.seconds:.1f} s")


@pytest.mark.slow
def test_masked_directions_stay_in_the_mask_and_batch_equals_alone():
    d = models.create("gauss_ri", jax.random.key(0))
    x = np.stack([phantom(32), phantom(32, seed=3)])
    mask = np.zeros((32, 32), np.float32)
    mask[4:20, 6:28] = 1.0
    opts = jacobian.SpectrumOptions(k=4, extra=4, iterations=150)
    both = jacobian.spectrum(d, x, mask=mask, options=opts)
    assert both.largest_vectors.shape == (2, 4, 32, 32)
    for V in (both.largest_vectors, both.smallest_vectors):
        assert np.all(V[..., mask == 0] == 0)
    alone = jacobian.spectrum(d, x[1], mask=mask, options=opts)
    np.testing.assert_allclose(alone.largest_values[0], both.largest_values[1], rtol=1e-4)
    # With its id, an image alone starts where it started in the batch: the same iterations.
    alone = jacobian.spectrum(d, x[1], mask=mask, options=opts, image_ids=[1])
    np.testing.assert_array_equal(alone.iterations[0], both.iterations[1])
    for end in ("largest", "smallest"):
        np.testing.assert_allclose(getattr(alone, f"{end}_values")[0],
                                   getattr(both, f"{end}_values")[1], rtol=1e-5)


@pytest.mark.slow
def test_while_loop_program_serves_every_batch_of_the_size(monkeypatch):
    """The accelerator path (fast paths off: each end's iterations in one `lax.while_loop`) is
    compiled by the first batch; another batch of the same size compiles nothing."""
    monkeypatch.setenv(fastpath.ENV, "0")
    d = models.create("gauss_ri", jax.random.key(0))
    x = np.stack([phantom(32), phantom(32, seed=3)])
    opts = jacobian.SpectrumOptions(k=2, extra=3, iterations=30)  # this test's own programs
    with common.count_compiles() as first:
        jacobian.spectrum(d, x, options=opts)
    assert first["jit(_iterate_all)"] == 2, dict(first)  # one per end
    with common.count_compiles() as again:
        jacobian.spectrum(d, x[::-1] + 10.0, options=opts)
    assert not again, dict(again)


def test_energy_fraction_is_the_share_in_the_span():
    V = np.zeros((2, 4, 4))
    V[0, 0, 0] = V[1, 3, 3] = 1.0
    p = np.zeros((4, 4))
    p[0, 0], p[3, 3], p[1, 2] = 3.0, 4.0, 5.0
    assert jacobian.energy_fraction(V, p) == pytest.approx(25.0 / 50.0)
    with pytest.raises(ValueError, match="perturbation is zero"):
        jacobian.energy_fraction(V, np.zeros((4, 4)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=200), r"k=200 \(\+ 8 extra block vectors\) is too large for 1024 input directions "
                  r"\(pixels\); expected 5 \(k \+ extra\) < 1024"),
    (dict(mask=np.ones((16, 32))), r"mask: shape \(16, 32\) does not fit the images"),
    (dict(images=np.full((32, 32), np.nan)), r"images: 1024 NaN/inf value"),
])
def test_bad_inputs_fail_at_start(kwargs, message):
    d = models.create("gauss_ri", jax.random.key(0))
    args = dict(images=np.zeros((32, 32), np.float32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        jacobian.spectrum(d, args.pop("images"), **args)


@pytest.mark.slow
def test_job_writes_the_spectrum_report(tmp_path):
    from configs import jacobian as jacobian_config
    from ldct_jax import jobs
    images = np.stack([phantom(32), phantom(32, seed=5)])
    np.save(tmp_path / "images.npy", images)
    c = jacobian_config.get_config("gauss_ri,quick")
    c.images, c.k, c.extra, c.iterations = str(tmp_path / "images.npy"), 4, 4, 60
    c.progress_bar = False
    out = jobs.run(c, str(tmp_path / "run"))
    report = tmp_path / "run" / "report"
    with np.load(report / "spectrum.npz") as z:
        assert z["images"].shape == (2, 32, 32) and z["smallest_vectors"].shape == (2, 4, 32, 32)
        assert z["largest_values"].shape == z["smallest_values"].shape == (2, 4)
        assert z["residuals"].shape == (2, 8)
        np.testing.assert_array_equal(z["images"], images)
        summary = {r["image_index"]: r for r in out["summary"]}
        for i in range(2):
            assert summary[i]["norm"] == pytest.approx(float(z["largest_values"][i, 0]))
            assert summary[i]["smallest_1"] == pytest.approx(float(z["smallest_values"][i, 0]))
    assert sorted(os.listdir(report / "figures")) == ["image0.png", "image1.png"]
    page = Page(open(report / "index.html").read())  # the figures embedded, a row per image
    assert page.figures == page.images == 2 and len(page.rows) == 2
    assert jobs.run(c, str(tmp_path / "run"))["computed"] == []   # finished: nothing to redo
    c.k = 400
    with pytest.raises(ValueError, match=r"config\.k=400: spectrum: k=400 .* too large for 1024 "
                       r"input directions"):
        jobs.run(c, str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "other")
