"""Natural invariances: the networks, the step, sampling, the job and its ground truth.

The job tests run tiny networks on tiny in-memory scans; the ground truth (gauss_ri, whose
invariance is every change deeper than its kernel inside the zeroed square) runs the `quick`
preset on the synthetic data and is marked slow.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import natural as natural_config
from ldct_jax import models, parallel
from ldct_jax.analysis import invariance_metrics, natural
from ldct_jax.jobs import natural as job
from ldct_jax.jobs import train as train_job
from ldct_jax.models import natural as natural_models
from ldct_jax.models.gauss_ri import central_square
from ldct_jax.train import natural as natural_train
from tests import training
from tests.nets import scipy_gauss_ri
from tests.training import (assert_trees_close, phantom_scans,
                            sigterm_at_checkpoint)

# The steps of this module's runs compile once (a module-scoped autouse fixture).
compilation_cache = training.compilation_cache


def inside_outside(x_inv: np.ndarray, square: int) -> float:
    """Mean |x_inv| more than 4 px inside gauss_ri's central square over the mean outside it
    (numpy, from the square's definition)."""
    rows, cols = central_square(*x_inv.shape[-2:], square)
    inside = np.zeros(x_inv.shape[-2:], bool)
    inside[rows, cols] = True
    deep = np.zeros_like(inside)
    deep[rows.start + 4:rows.stop - 4, cols.start + 4:cols.stop - 4] = True
    return np.abs(x_inv)[..., deep].mean() / np.abs(x_inv)[..., ~inside].mean()


def mean_rms(a: np.ndarray) -> float:
    """RMS per image `[..., H, W]` (float64), averaged: the summary's `*_rms_hu`."""
    return float(np.sqrt(np.mean(np.square(np.asarray(a, np.float64)), axis=(-2, -1))).mean())


def tiny_cfg(model="gauss_ri", **over):
    c = natural_config.get_config(model)
    c.generator.update(features=4, levels=1, noise_channels=2)
    c.critic.update(features=4, scales=2)
    if model == "gauss_ri":
        with c.unlocked():
            c.model_config.square = 12
    c.num_steps, c.batch_size, c.patch_size = 4, 4, 16
    c.checkpoints.every_steps = 2
    c.log_every_steps = 1
    c.samples.update(num_samples=2, every_steps=2)
    c.report.update(search=False, noise_patches=4, noise_patch_size=16)
    c.num_images, c.crop = 1, 0
    c.progress_bar = False
    c.data.held_out_patients = 1
    for key, value in over.items():
        *parents, last = key.split("__")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def test_downsample_is_the_block_mean():
    x = np.random.default_rng(0).normal(size=(2, 13, 10)).astype(np.float32)
    got = np.asarray(natural_models.downsample(jnp.asarray(x), 2))
    want = x[:, :12, :8].astype(np.float64).reshape(2, 3, 4, 2, 4).mean(axis=(2, 4))
    # A float32 sum of 16 terms in whatever order XLA picks: rounding of a few eps * |x|,
    # absolute (a mean near 0 has a large relative error; 1.5e-6 seen on one CPU).
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert natural_models.downsample(x, 0) is x


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 13, 21)])
def test_generator_is_fully_convolutional_and_in_hu(shape):
    g = natural_models.InvarianceGenerator(features=4, levels=2, noise_channels=3)
    x = jnp.zeros(shape + (1,))
    z = jax.random.normal(jax.random.key(1), shape + (3,))
    params = g.init(jax.random.key(0), x, z)["params"]
    out = g.apply({"params": params}, x, z)
    assert out.shape == shape
    # Noise alone moves the output (z is not ignored at init), by HU-sized amounts.
    assert 0.1 < float(jnp.std(out)) < 500.0
    # The output at a pixel depends on z nearby only (the receptive field of two levels is
    # under 48 px): a change of z at one corner leaves the far corner of a 64 px image alone.
    x, z = jnp.zeros((1, 64, 64, 1)), jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    z2 = z.at[:, 0, 0, :].add(5.0)
    diff = np.abs(np.asarray(g.apply({"params": params}, x, z2) - g.apply({"params": params},
                                                                           x, z)))
    assert diff[:, 0, 0].max() > 0 and diff[:, -1, -1].max() == 0


def test_critic_scores_one_per_stage_and_sample():
    critic = natural_models.PatchCritic(features=4)
    x = jnp.ones((3, 32, 32))
    params = {f"stage{i}": critic.init(jax.random.key(i), x[..., None])["params"]
              for i in range(3)}
    scores = natural_models.critic_scores(critic, params, x)
    assert scores.shape == (3, 3)
    # Stage i sees the 2^i block mean: on a constant image every stage sees the same constant.
    s1 = critic.apply({"params": params["stage1"]}, jnp.ones((3, 16, 16, 1)))
    np.testing.assert_allclose(np.asarray(scores[:, 1]), np.asarray(s1), rtol=1e-6)


def test_scales_too_large_for_the_patch_fail_naming_the_key():
    natural_models.check_scales(3, 32)
    with pytest.raises(ValueError, match=r"config.critic.scales=4 is too large for patches of "
                       r"32 px.*at most 3 scales"):
        natural_models.check_scales(4, 32)


def test_local_batch_draws_x_and_real_patches_apart():
    scans = phantom_scans()
    b = natural_train.local_batch(scans, 3, batch_size=4, patch_size=16, seed=0, n_critic=2)
    assert b["low"].shape == b["real"].shape == (4, 2, 16, 16)
    assert not np.array_equal(b["low"], b["real"])
    again = natural_train.local_batch(scans, 3, batch_size=4, patch_size=16, seed=0, n_critic=2)
    np.testing.assert_array_equal(b["low"], again["low"])


def _generator(seed=0):
    g = natural_models.InvarianceGenerator(features=4, levels=1, noise_channels=2)
    params = g.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 2)), jnp.zeros((1, 8, 8, 2)))
    return natural.Generator(g, params["params"],
                             models.create("gauss_ri", jax.random.key(0), square=12))


def test_samples_are_deterministic_and_independent_of_batching():
    gen = _generator()
    x = np.random.default_rng(0).normal(0, 100, (3, 20, 24)).astype(np.float32)
    key = jax.random.key(7)
    four = np.asarray(natural.sample(gen.module, gen.params, x, key, 4, gen.denoiser))
    assert four.shape == (3, 4, 20, 24)
    two = np.asarray(natural.sample(gen.module, gen.params, x, key, 2, gen.denoiser))
    np.testing.assert_array_equal(four[:, :2], two)      # sample s does not depend on S
    assert np.abs(four[:, 0] - four[:, 1]).max() > 1e-3   # different z, different x_inv
    sharded = natural.sample_sharded(gen, x, key, 4, mesh=parallel.make_mesh(4), batch_size=4)
    np.testing.assert_allclose(sharded, four, rtol=1e-5, atol=1e-3)
    other = np.asarray(natural.sample(gen.module, gen.params, x, jax.random.key(8), 2,
                                      gen.denoiser))
    assert np.abs(other - two).max() > 1e-3
    # x + x_inv stays in the valid HU range.
    bright = np.full((1, 20, 24), 3071.0, np.float32)
    assert (bright + np.asarray(natural.sample(gen.module, gen.params, bright, key, 2,
                                                       gen.denoiser))[0]
            ).max() <= 3071.0


def test_save_and_load_give_the_same_samples(tmp_path):
    gen = _generator(3)
    natural.save(gen, str(tmp_path / "g"))
    back = natural.load(str(tmp_path / "g"))
    assert back.module == gen.module and back.denoiser.spec == gen.denoiser.spec
    assert_trees_close(back.params, gen.params, tol=0)
    x = np.random.default_rng(0).normal(0, 100, (1, 20, 24)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(natural.sample(back.module, back.params, x, jax.random.key(0), 2,
                                  back.denoiser)),
        np.asarray(natural.sample(gen.module, gen.params, x, jax.random.key(0), 2,
                                  gen.denoiser)))
    with pytest.raises(ValueError, match="conditioned on the denoiser's output"):
        natural.sample(gen.module, gen.params, x, jax.random.key(0), 2)
    with pytest.raises(FileNotFoundError, match="holds no generator"):
        natural.load(str(tmp_path))


def _steps(config, scans, n):
    mesh = parallel.make_mesh(config.num_devices or None)
    denoiser = models.create("gauss_ri", jax.random.key(0), square=12)
    return training.run_steps(job.build(config, mesh, scans, denoiser), mesh, n)[:2]


@pytest.mark.slow
def test_four_devices_give_the_same_params_as_one():
    assert jax.device_count() == 4
    scans = phantom_scans()
    cfg = tiny_cfg(critic__n_critic=2, optimizer__lr=1e-5, critic_optimizer__lr=1e-5)
    init, one = _steps(tiny_cfg(num_devices=1, critic__n_critic=2, optimizer__lr=1e-5,
                                critic_optimizer__lr=1e-5), scans, 3)
    _, four = _steps(cfg, scans, 3)
    assert_trees_close(one, four)
    assert max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(init), jax.tree.leaves(one[0]))) > 1e-7


@pytest.mark.slow
def test_killed_and_restarted_run_ends_with_the_same_params(tmp_path):
    scans = phantom_scans()
    cfg = tiny_cfg()
    straight = job.run(cfg, str(tmp_path / "straight"), scans=scans)
    assert straight["step"] == 4 and straight["stopped"] is None
    wd = str(tmp_path / "stopped")
    with sigterm_at_checkpoint(1):
        first = job.run(cfg, wd, scans=scans)
    assert first["stopped"] == "SIGTERM" and first["step"] == 2
    assert not os.path.exists(os.path.join(wd, "generator"))
    second = job.run(cfg, wd, scans=scans)
    assert second["step"] == 4
    assert_trees_close(jax.device_get(straight["state"]), jax.device_get(second["state"]),
                       tol=1e-7)
    # The saved generator is the final one, and the report is written from it.
    saved = natural.load(os.path.join(wd, "generator"))
    assert_trees_close(saved.params, jax.device_get(straight["state"].params), tol=1e-7)
    with np.load(os.path.join(wd, "report", "samples.npz")) as f:
        assert f["x_inv"].shape[:2] == (1, 2)
    # A changed loss weight is refused; the report's settings may change.
    with pytest.raises(job.train_job.ConfigChangedError, match=r"config.loss.lam"):
        job.run(tiny_cfg(loss__lam=0.5), wd, scans=scans)
    job.check_config(tiny_cfg(samples__num_samples=3))
    job.train_job.check_restart(tiny_cfg(samples__num_samples=3), wd, job.NATURAL_FREE)


def test_report_puts_the_search_beside_the_generator(tmp_path):
    """With `report.search`, the search runs `search_starts` random starts per image on the
    same images, and its row is what its saved x_inv give (numpy RMS)."""
    cfg = tiny_cfg(report__search=True, report__search_starts=3)
    cfg.search.update(iterations=10)
    wd = str(tmp_path / "run")
    natural_row, search_row = job.run(cfg, wd, scans=phantom_scans())["summary"]
    assert (natural_row["method"], search_row["method"]) == ("natural", "search")
    with np.load(os.path.join(wd, "report", "samples.npz")) as f:
        images, found = f["images"], f["search_x_inv"]
    assert found.shape == (len(images), 3) + images.shape[1:]
    rms = mean_rms(found)
    assert search_row["input_rms_hu"] == pytest.approx(rms, rel=1e-4)
    ratio = inside_outside(found, cfg.model_config.square)
    assert search_row["inside_outside_ratio"] == pytest.approx(ratio, rel=1e-4)
    assert search_row["lam"] == cfg.loss.lam and search_row["distance"] == cfg.loss.distance


@pytest.mark.parametrize("over, message", [
    (dict(model="cnn11"), r"config.model='cnn11' is not a denoiser"),
    (dict(critic__scales=4), r"config.critic.scales=4 is too large for patches of 16 px"),
    (dict(loss__distance="vgg16"), r"config.loss.distance='vgg16'"),
    (dict(loss__alpha=-1.0), r"config.loss.alpha=-1.0 must be >= 0"),
    (dict(generator__levels=5), r"config.patch_size=16 is smaller than the generator's 5"),
    (dict(report__search_starts=0), r"config.report.search_starts=0"),
    (dict(report__search=True, search__method="lbfgs"), r"config.search: .*'lbfgs'"),
    (dict(generator__out_scale=0.0), r"config.generator.out_scale=0.0 must be > 0"),
])
def test_bad_config_fails_at_start(over, message, tmp_path):
    cfg = tiny_cfg()
    for key, value in over.items():
        *parents, last = key.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[last] = value
    with pytest.raises(ValueError, match=message):
        job.run(cfg, str(tmp_path / "run"), scans=phantom_scans())
    assert not os.path.exists(tmp_path / "run")


def test_patch_larger_than_the_data_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match=r"config.patch_size=48 is larger than the images of "
                       r"patient .* \(32x32\)"):
        job.run(tiny_cfg(patch_size=48), str(tmp_path / "run"), scans=phantom_scans())
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("size, message", [
    (48, r"config.report.noise_patch_size=48: noise patches larger than the smallest slices "
         r"\(32 px\)"),
    (8, r"config.report.noise_patch_size=8: spectral_distance: .*holds no frequency"),
])
def test_noise_patches_the_report_cannot_use_fail_before_training(size, message, tmp_path):
    cfg = tiny_cfg()
    cfg.report.noise_patch_size = size
    with pytest.raises(ValueError, match=message):
        job.run(cfg, str(tmp_path / "run"), scans=phantom_scans())
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_run_is_refused_another_denoiser_than_it_trained_against(tmp_path):
    wd, cfg = str(tmp_path / "run"), tiny_cfg("cnn10")
    before, retrained = (models.create("cnn10", jax.random.key(k), features=(4, 2))
                         for k in (0, 1))
    job.check_denoiser(cfg, wd, retrained, True)  # nothing to continue: recorded
    job.check_denoiser(cfg, wd, before, True)
    os.makedirs(os.path.join(wd, "checkpoints", "4"))  # a run of `before` to continue
    job.check_denoiser(cfg, wd, before, True)
    with pytest.raises(train_job.ConfigChangedError, match=r"holds a generator trained against "
                       r"another cnn10 .* than the one at 'runs/cnn10/model' "
                       r"\(config.checkpoint; cnn10"):
        job.check_denoiser(cfg, wd, retrained, True)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_the_inside_margin_is_where_gauss_ri_is_blind(sigma):
    # The report counts x_inv as inside from `radius` px deep: f ignores a change there, and
    # sees one a pixel shallower.
    d = models.create("gauss_ri", jax.random.key(0), sigma=sigma, square=30)
    rows, _ = central_square(64, 64, 30)
    x = np.zeros((1, 64, 64), np.float32)
    changes = []
    for depth in (d.spec.module.radius, d.spec.module.radius - 1):
        dx = np.zeros_like(x)
        dx[0, rows.start + depth, 32] = 100.0
        changes.append(float(np.abs(np.asarray(d(x + dx)) - np.asarray(d(x))).max()))
    assert d.spec.module.radius == round(4 * sigma) and changes[0] == 0.0 and changes[1] > 1e-3


def test_a_checkpoint_of_another_architecture_fails_at_start(tmp_path):
    models.save(models.create("cnn10", jax.random.key(0), features=(4, 2)),
                str(tmp_path / "cnn10"))
    cfg = tiny_cfg("wgan_vgg", checkpoint=str(tmp_path / "cnn10"))
    with pytest.raises(ValueError, match=r"config.checkpoint=.*cnn10.* holds a 'cnn10' model, "
                       r"not a 'wgan_vgg' one"):
        job.run(cfg, str(tmp_path / "run"), scans=phantom_scans())
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_gauss_ri_ground_truth(tmp_path):
    """The quick preset on the synthetic data, on one device (as on a laptop) and without the
    image-domain search beside it (its own ground truth is in test_search.py): the generator
    learns to change the image inside the zeroed square, where the denoiser cannot see, more
    than outside it, and the output changes by under 1 HU RMS. The GAN's outcome depends on
    float rounding and the seed: measured inside/outside 26 to 58 and output 0.13 to 0.44 HU
    RMS over three seeds and on four devices."""
    wd = str(tmp_path / "run")
    c = natural_config.get_config("gauss_ri,quick")
    c.num_devices = 1
    c.report.search = False
    result = job.run(c, wd)
    [natural_row] = result["summary"]
    assert natural_row["method"] == "natural"
    assert natural_row["inside_outside_ratio"] >= 3.0, natural_row
    assert natural_row["ratio"] >= 3.0, natural_row
    assert natural_row["output_rms_hu"] <= 1.0, natural_row
    # The table is what the saved arrays give (recomputed here with numpy, outside the job).
    with np.load(os.path.join(wd, "report", "samples.npz")) as f:
        images, x_inv, noise = f["images"], f["x_inv"], f["noise"]
    assert x_inv.shape[:2] == (len(images), 4)
    rms = mean_rms(x_inv)
    assert natural_row["input_rms_hu"] == pytest.approx(rms, rel=1e-4)
    ratio = inside_outside(x_inv, 30)
    assert natural_row["inside_outside_ratio"] == pytest.approx(ratio, rel=1e-4)
    # gauss_ri is linear, so f(x + x_inv) - f(x) is f(x_inv).
    assert natural_row["output_rms_hu"] == pytest.approx(mean_rms(scipy_gauss_ri(x_inv)),
                                                         rel=1e-3)
    assert natural_row["spectral_distance"] == pytest.approx(
        invariance_metrics.spectral_distance(x_inv, noise), rel=1e-6)
    for name in ("summary.md", "summary.csv", "spectra.png", "index.html",
                 "figures/image0.png", "figures/image1.png"):
        assert os.path.isfile(os.path.join(wd, "report", name)), name
    assert os.path.isdir(os.path.join(wd, "tensorboard"))
