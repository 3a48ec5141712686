"""Invariance search: ground truth on gauss_ri, batch == rows alone, masks, range, bad inputs."""

import numpy as np
import pytest

from benchmarks import common
from ldct_jax import ct, fastpath, models, parallel
from ldct_jax.analysis import optimizers, search as S
from ldct_jax.models.gauss_ri import central_square
from tests.nets import small_cnn10

H = 64
LAMBDAS = (1e-4, 1e-2, 1e-1)


def phantom(h=H, shift=0.0):
    yy, xx = np.mgrid[:h, :h]
    x = np.where((yy - h / 2 + 2) ** 2 + (xx - h / 2 - 4 + shift) ** 2 < (0.3 * h) ** 2, 40.0,
                 -900.0)
    return (x + 100.0 * np.sin(xx / 5.0)).astype(np.float32)


@pytest.fixture(scope="module")
def gauss():  # slow: one compile
    d = models.build("gauss_ri", {})
    options = S.SearchOptions(iterations=200, chunk=100)
    return d, S.search(d, phantom(), lambdas=list(LAMBDAS), seeds=[0, 1, 2], options=options)


def regions(h=H, depth=4):
    rows, cols = central_square(h, h, 30)
    inside = np.zeros((h, h), bool)
    inside[rows, cols] = True
    deep = np.zeros((h, h), bool)
    deep[rows.start + depth:rows.stop - depth, cols.start + depth:cols.stop - depth] = True
    return inside, deep


@pytest.mark.slow
def test_gauss_ri_small_lambda_lives_in_the_zeroed_square(gauss):
    _, r = gauss
    inside, deep = regions()
    a = np.abs(r.perturbation[0])
    ratio = a[deep].mean() / a[~inside].mean()
    print(f"gauss_ri lambda 1e-4: mean|x_inv| deep inside / outside = {ratio:.1f}, output "
          f"change {r.metrics['output_rms_hu'][0]:.4f} HU RMS")
    assert ratio >= 10
    assert r.metrics["output_rms_hu"][0] < 1.0
    assert a[deep].mean() > 100.0  # a large invariance, not a small one


@pytest.mark.slow
@pytest.mark.parametrize("row", [1, 2])
def test_gauss_ri_larger_lambda_is_high_frequency_outside(gauss, row):
    _, r = gauss
    lam = LAMBDAS[row]
    # The squared gain exp(-(2 pi f sigma)^2) of the Gaussian (sigma 1 px) equals lambda at f_c.
    f_c = np.sqrt(np.log(1.0 / lam)) / (2.0 * np.pi)
    inside, _ = regions()
    f = np.fft.fftfreq(H)
    radial = np.hypot(f[:, None], f[None, :])
    power = np.abs(np.fft.fft2(r.perturbation[row] * ~inside)) ** 2
    fraction = power[radial > f_c].sum() / power.sum()
    print(f"gauss_ri lambda {lam:g}: {100 * fraction:.1f} % of the power of x_inv outside the "
          f"square lies above f_c = {f_c:.3f} cycles/px; input {r.metrics['input_rms_hu'][row]:.0f}"
          f" HU RMS")
    assert fraction >= 0.9
    assert r.metrics["input_rms_hu"][row] > 100.0


@pytest.mark.slow
def test_gauss_ri_metrics_and_curves(gauss):
    d, r = gauss
    x = phantom()
    dx = r.perturbation
    np.testing.assert_allclose(r.metrics["input_rms_hu"], np.sqrt((dx ** 2).mean((1, 2))),
                               rtol=1e-4)
    np.testing.assert_allclose(r.metrics["input_max_hu"], np.abs(dx).max((1, 2)), rtol=1e-5)
    f = d.spec.apply
    dy = np.asarray(f(d.params, x[None] + dx)) - np.asarray(f(d.params, x))[None]
    np.testing.assert_allclose(r.metrics["output_rms_hu"], np.sqrt((dy ** 2).mean((1, 2))),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(r.metrics["ratio"],
                               r.metrics["input_rms_hu"] / r.metrics["output_rms_hu"], rtol=1e-5)
    np.testing.assert_allclose(r.metrics["d_in"],
                               np.minimum(((dx / d.spec.scale) ** 2).mean((1, 2)), 1.0),
                               rtol=1e-4)
    from skimage.metrics import structural_similarity
    ref = [structural_similarity(x, x + dx[i], data_range=ct.HU_MAX - ct.HU_MIN,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
           for i in range(len(dx))]
    np.testing.assert_allclose(r.metrics["input_ssim"], ref, atol=1e-4)
    for k in S.CURVES:
        assert r.curves[k].shape == (3, 200)
    # The objective falls (from noise towards the invariance) and the curves agree with it.
    assert np.all(r.curves["loss"][:, -10:].mean(1) < r.curves["loss"][:, :10].mean(1))
    np.testing.assert_allclose(r.curves["loss"],
                               r.curves["d_out"] - np.asarray(LAMBDAS)[:, None] * r.curves["d_in"],
                               rtol=1e-4, atol=1e-9)
    # final_loss is L of the returned x_inv (the curves hold L before each step).
    d_out = (r.metrics["output_rms_hu"] / d.spec.scale) ** 2
    np.testing.assert_allclose(r.metrics["final_loss"],
                               d_out - np.asarray(LAMBDAS) * r.metrics["d_in"], rtol=1e-3,
                               atol=1e-9)
    table = S.result_table(r)
    assert [t["lam"] for t in table] == list(LAMBDAS)  # as given, not float32's
    assert set(S.METRICS) <= set(table[0])


@pytest.mark.slow
def test_batch_equals_each_row_alone_and_scan_equals_steps_and_mask_and_range(monkeypatch):
    d = small_cnn10()
    x = np.stack([phantom(32), phantom(32, shift=3.0)])
    x[1, :4, :4] = ct.HU_MAX  # x + x_inv must stay inside the HU range
    mask = np.ones((2, 32, 32), np.float32)
    mask[0, :, :10] = 0
    rows = S.Rows(image_index=np.array([0, 1, 1]), lam=np.array([1e-3, 1e-2, 1e-1], np.float32),
                  distance=np.array(["mse", "dssim", "mse"], dtype=object),
                  seed=np.array([0, 1, 2]))
    options = S.SearchOptions(iterations=20, chunk=8)
    batch = S.Searcher(d.spec, ["mse", "dssim"], options).run(d.params, x, rows, mask=mask)
    assert batch.curves["loss"].shape == (3, 20)
    # Alone: another program, on one device, with the fast paths off: a lax.scan per chunk
    # and plain convolutions (the accelerator path), where the batch above ran one jitted
    # call per step and CNN-10's conv1 as a matmul (the CPU path).
    assert S.Searcher(d.spec, ["mse"], options).loop == "python"
    monkeypatch.setenv(fastpath.ENV, "0")
    alone = S.Searcher(d.spec, ["mse", "dssim"], options, mesh=parallel.make_mesh(1))
    assert alone.loop == "scan" and not alone.fast
    for i in range(3):
        one = S.Rows(*(np.asarray(v)[i:i + 1] for v in rows))
        r = alone.run(d.params, x, one, mask=mask)
        # 2e-2 HU: the default's step (0.1 network units) carries the two paths' rounding.
        np.testing.assert_allclose(r.perturbation[0], batch.perturbation[i], rtol=1e-4, atol=2e-2)
        np.testing.assert_allclose(r.curves["loss"][0], batch.curves["loss"][i], rtol=1e-4,
                                   atol=1e-7)
    assert np.all(batch.perturbation[0][:, :10] == 0)
    assert np.abs(batch.perturbation[0][:, 10:]).mean() > 1.0
    adv = x[rows.image_index] + batch.perturbation
    assert adv.max() <= ct.HU_MAX + 1e-3 and adv.min() >= ct.HU_MIN - 1e-3


@pytest.mark.slow
def test_bfloat16_compute_finds_the_invariance_to_bfloat16_resolution():
    """compute_dtype='bfloat16': x_inv stays float32 and still lives in gauss_ri's zeroed
    square, but the denoiser sees x + x_inv and answers to 8 significant bits, so its float32
    output change is only as small as that resolution (2^-8 of the image's magnitude), where
    float32's is far below it."""
    d = models.build("gauss_ri", {})
    x = phantom()
    r = {dt: S.search(d, x, lambdas=1e-4, iterations=200, chunk=100, compute_dtype=dt)
         for dt in S.COMPUTE_DTYPES}
    p = r["bfloat16"].perturbation
    assert p.dtype == np.float32
    inside, deep = regions()
    a = np.abs(p[0])
    assert a[deep].mean() >= 10 * a[~inside].mean() and a[deep].mean() > 100.0
    out = {dt: r[dt].metrics["output_rms_hu"][0] for dt in r}
    resolution = 2.0 ** -8 * np.abs(x).max()
    print(f"output change: bfloat16 {out['bfloat16']:.3f}, float32 {out['float32']:.3f} HU RMS; "
          f"bfloat16's resolution {resolution:.2f} HU")
    assert 0.1 * resolution <= out["bfloat16"] <= resolution  # it cannot see below it
    assert out["float32"] <= 0.1 * resolution


@pytest.mark.slow
def test_sensitivity_search_turns_the_sign():
    d = small_cnn10()
    r = S.sensitivity_search(d, phantom(32), lambdas=1e-2, iterations=30, chunk=30)
    c = r.curves
    np.testing.assert_allclose(c["loss"], -(c["d_out"] - 1e-2 * c["d_in"]), rtol=1e-4, atol=1e-9)
    assert c["d_out"][0, -1] > 100 * c["d_out"][0, 0]  # the output change grows
    assert r.metrics["output_rms_hu"][0] > r.metrics["input_rms_hu"][0]  # gain above 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(distances="l1"), r"unknown input distance\(s\) \['l1'\]"),
    (dict(distances="vgg16"), "needs a VGG16"),
    (dict(images=np.zeros((1, 1, 16, 16))), "expected an image"),
    (dict(images=np.zeros(16)), "expected an image"),
    (dict(images=np.where(np.eye(16) > 0, np.nan, 0.0)), "16 NaN/inf value"),
    (dict(mask=np.ones((16, 15))), r"mask: shape \(16, 15\)"),
    (dict(mask=np.full((16, 16), 0.5)), "values must be 0 or 1"),
    (dict(lambdas=-1.0), "lambdas must be finite and >= 0"),
    (dict(lambdas=[1.0, 2.0], images=np.zeros((3, 16, 16))), r"lambdas: expected a scalar or 3"),
    (dict(lambdas=[1.0, 2.0, 3.0], images=np.zeros((2, 16, 16))), "2 images but 3 perturbations"),
    (dict(image_index=5), "image_index out of range"),
    (dict(iterations=-1), "iterations must be >= 0"),
    (dict(chunk=0), r"chunk must be >= 1, got 0"),
    (dict(learning_rate=-1.0), "learning_rate must be > 0"),
    (dict(b1=1.0), r"b1 must be in \[0, 1\), got 1.0"),
    (dict(eps=-1.0), r"eps must be > 0, got -1.0"),
    (dict(window=-5), r"window must be >= 0 \(0: the method's\), got -5"),
    (dict(init_scale_hu=0.0), r"init_scale_hu must be > 0 HU"),
    (dict(method="adam", lambda_start=1e-2), r"\['lambda_start'\] apply to method 'anneal'"),
    (dict(iterations=50, lambda_steps=60, lambdas=1e-4),
     r"iterations \(50\) end before lambda_steps \(60\): rows with lambda below lambda_start "
     r"\(0.01\), here 0.0001"),
    (dict(images=np.full((16, 16), -2048.0)), r"256 pixel\(s\) outside the valid HU range"),
    (dict(mask=np.zeros((16, 16))), r"no pixel is 1 for image\(s\) \[0\]"),
    (dict(method="sgd"), "unknown method 'sgd'"),
    (dict(compute_dtype="float16"), "compute_dtype must be one of"),
])
def test_bad_inputs_fail_at_start(kwargs, message):
    d = models.build("gauss_ri", {})
    args = dict(images=np.zeros((16, 16)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        S.search(d, args.pop("images"), **args)


def test_rows_of_unequal_length_and_short_schedules():
    d = models.build("gauss_ri", {})
    rows = S.Rows(image_index=np.array([0, 0, 0]), lam=np.array([1e-2, 1e-2], np.float32),
                  distance=np.array(["mse"] * 3, dtype=object), seed=np.array([0]))
    with pytest.raises(ValueError, match=r"differ in length \{'image_index': 3, 'lam': 2, "
                                         r"'distance': 3, 'seed': 1\}"):
        S.Searcher(d.spec, ["mse"], S.SearchOptions()).run(d.params, np.zeros((16, 16)), rows)
    # The default schedule is a third of the iterations, however many: short runs end at their
    # lambdas, and rows at or above lambda_start need no schedule at all.
    assert S.SearchOptions(iterations=60).settings.lambda_steps == 20
    assert S.SearchOptions().settings.lambda_steps == 100
    optimizers.check_schedule(S.SearchOptions(iterations=10, lambda_steps=50).settings, [1e-2])
    # As the rows hold it: float32's 0.01 is not below lambda_start.
    optimizers.check_schedule(S.SearchOptions(iterations=10, lambda_steps=50).settings,
                              np.float32([1e-2]))



@pytest.mark.slow
def test_default_reaches_the_adam_objective_in_a_tenth_of_the_iterations():
    """gauss_ri: the default ends within 1 % (of the loss range) of where the talk's 3000 Adam
    steps end, in at most 300 iterations, and at lambda 1e-4 the invariance still sits in the
    zeroed square, where x_inv costs nothing."""
    d = models.build("gauss_ri", {})
    lambdas = [1e-4, 1e-2]
    adam = S.search(d, phantom(), lambdas=lambdas, options=S.SearchOptions(method="adam"))
    default = S.search(d, phantom(), lambdas=lambdas)
    loss = adam.curves["loss"]
    target = loss[:, -1] + 0.01 * (loss[:, 0] - loss[:, -1])
    print(f"gauss_ri: adam 3000 ends at {loss[:, -1]}, the default at "
          f"{default.curves['loss'][:, -1]} after {default.stopped} iterations")
    assert np.all(default.curves["loss"][:, -1] <= target)
    assert np.all(default.stopped <= 300) and default.converged.all()
    inside, deep = regions()
    a = np.abs(default.perturbation[0])
    assert a[deep].mean() >= 10 * a[~inside].mean()


def test_adam_method_gives_the_talks_perturbations():
    """method='adam' reproduces the search as it was before the default changed: numbers
    computed then (Adam, constant 1e-2, 60 iterations in chunks of 25, 4 devices). gauss_ri's
    gradient has since been given its adjoint, which rounds differently: pixels move by up to
    2e-3 HU (of +-375), hence an absolute tolerance of 1e-2 HU on them."""
    d = models.build("gauss_ri", {})
    r = S.search(d, phantom(32), lambdas=list(LAMBDAS), seeds=[0, 1, 2],
                 options=S.SearchOptions(method="adam", iterations=60, chunk=25))
    p = r.perturbation.astype(np.float64)
    np.testing.assert_allclose(p.sum((1, 2)), [26315.06744688, 35812.41876194, 66868.06086445],
                               rtol=1e-5)
    np.testing.assert_allclose(np.abs(p).sum((1, 2)),
                               [191133.8425937, 248055.74005404, 285642.45876217], rtol=1e-5)
    np.testing.assert_allclose(p[:, [3, 16, 20], [5, 16, 29]],
                               [[66.96039581, -374.90808105, 1.03249383],
                                [374.80352783, -375.24267578, -77.53982544],
                                [-208.14707947, -376.96960449, -77.53982544]],
                               rtol=1e-5, atol=1e-2)
    assert np.all(r.stopped == 60) and not r.converged.any()


def test_converged_rows_stop_and_keep_their_perturbation():
    """Rows stop at a chunk boundary once converged; a stopped row's x_inv is where it stopped
    (its loss curve flat from there) and the loop ends when every row has stopped."""
    d = models.build("gauss_ri", {})
    options = S.SearchOptions(iterations=400, chunk=10, lambda_steps=20, window=20,
                              tolerance=1e-3)
    r = S.search(d, phantom(32), lambdas=[1e-4, 1e-1], options=options)
    print(f"stopped at {r.stopped}, converged {r.converged}")
    assert r.converged.all() and np.all(r.stopped % 10 == 0)
    assert np.all(r.stopped >= 40) and np.all(r.stopped < 400)
    assert r.curves["loss"].shape == (2, 400)
    for i, t in enumerate(r.stopped):
        tail = r.curves["loss"][i, t:]
        assert np.all(tail == tail[0])
    table = S.result_table(r)
    assert [row["iterations"] for row in table] == list(r.stopped)
    assert all(row["converged"] for row in table)


@pytest.mark.slow
def test_scan_loop_compiles_each_program_once(monkeypatch):
    """The accelerator path (`loop='scan'`, fast paths off): one program per chunk length,
    built by the first batch; another batch of the same size (other images, lambdas, seeds) and
    rows that stop on convergence in between (their `active` flag changes) reuse them all."""
    monkeypatch.setenv(fastpath.ENV, "0")
    d = models.build("gauss_ri", {})
    # An init_scale_hu no other test uses: programs of their own, so that the counts start at 0.
    options = S.SearchOptions(iterations=60, chunk=25, tolerance=0.0, init_scale_hu=0.7)
    searcher = S.Searcher(d.spec, ["mse"], options)
    assert searcher.loop == "scan" and len(searcher.mesh.devices.flat) > 1
    rows = S.make_rows(2, 4, lambdas=[1e-4, 1e-2, 1e-3, 1e-1], seeds=[0, 1, 2, 3],
                       image_index=[0, 1, 0, 1])
    images = np.stack([phantom(32), phantom(32, shift=3.0)])
    with common.count_compiles() as first:
        searcher.run(d.params, images, rows)
    # Chunks of 25, 25, 10: two lengths, two programs.
    assert (first["jit(chunk)"], first["jit(init)"], first["jit(final_metrics)"]) == (2, 1, 1)
    other = rows._replace(lam=rows.lam[::-1].copy(), seed=rows.seed + 10)
    with common.count_compiles() as again:
        searcher.run(d.params, images[::-1] + 50.0, other)
    assert not again, dict(again)

    stopping = S.Searcher(d.spec, ["mse"], S.SearchOptions(
        iterations=400, chunk=10, lambda_steps=20, window=20, tolerance=1e-3, init_scale_hu=0.7))
    with common.count_compiles() as compiled:
        r = stopping.run(d.params, images, rows)
    assert r.converged.all() and len(set(r.stopped)) > 1  # rows stopped at different chunks
    assert compiled["jit(chunk)"] == 1, dict(compiled)
