"""The zoo comparison: one grid over several models, its ranking against their own sweeps."""

import collections
import csv
import os

import jax
import numpy as np
import pytest

from configs import zoo as zoo_config
from ldct_jax import jobs, models
from ldct_jax.jobs import zoo
from tests.browser import check_report
from tests.workdirs import files_of

LAMBDAS = (1e-2, 1e-1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two 40 x 40 images and two small saved models (CNN-10, RED-CNN)."""
    root = tmp_path_factory.mktemp("zoo_inputs")
    rng = np.random.default_rng(0)
    np.save(root / "images.npy", (rng.normal(0, 30, (2, 40, 40)) + 40).astype(np.float32))
    models.save(models.create("cnn10", jax.random.key(1), features=(8, 4)), str(root / "cnn10"))
    models.save(models.create("redcnn", jax.random.key(2), features=4), str(root / "redcnn"))
    return root


def zoo_cfg(inputs, **changes):
    c = zoo_config.get_config("quick")
    with c.unlocked():
        c.images, c.crop = str(inputs / "images.npy"), 0
        c.models = ("gauss_ri", "cnn10", "redcnn")
        c.checkpoints.cnn10 = str(inputs / "cnn10")
        c.checkpoints.redcnn = str(inputs / "redcnn")
        c.distances, c.lambdas = ("mse",), LAMBDAS
        c.search.iterations, c.search.chunk = 10, 5
        c.progress_bar = False
        for k, v in changes.items():
            c[k] = v
    return c


@pytest.fixture(scope="module")
def compared(inputs, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("zoo"))
    return workdir, jobs.run(zoo_cfg(inputs), workdir)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_ranking_is_what_each_model_sweep_measured(compared):
    workdir, result = compared
    ranking = result["ranking"]
    assert result["models"] == ["gauss_ri", "cnn10", "redcnn"]
    assert len(ranking) == 3 * len(LAMBDAS)
    for m in result["models"]:
        # The per-row results of that model's own sweep, averaged here independently.
        rows = _csv(os.path.join(workdir, "models", m, "report", "results.csv"))
        assert {r["model"] for r in rows} == {m} and len(rows) == 2 * len(LAMBDAS)
        groups = collections.defaultdict(list)
        for r in rows:
            groups[float(r["lam"])].append(r)
        for lam, rs in groups.items():
            (ranked,) = [r for r in ranking if r["model"] == m and r["lam"] == pytest.approx(lam)]
            mean = {k: np.mean([float(r[k]) for r in rs]) for k in ("input_rms_hu",
                                                                    "output_rms_hu")}
            assert ranked["n"] == len(rs)
            assert ranked["input_rms_hu"] == pytest.approx(mean["input_rms_hu"], rel=1e-6)
            assert ranked["output_rms_hu"] == pytest.approx(mean["output_rms_hu"], rel=1e-6)
            assert ranked["ratio"] == pytest.approx(
                mean["input_rms_hu"] / mean["output_rms_hu"], rel=1e-6)
    for lam in LAMBDAS:
        group = [r for r in ranking if r["lam"] == pytest.approx(lam)]
        assert [r["rank"] for r in group] == [1, 2, 3]
        assert all(a["ratio"] >= b["ratio"] for a, b in zip(group, group[1:]))
        # The known answer: the zeroed square is ignored entirely.
        assert group[0]["model"] == "gauss_ri"
    # Every model searched the same images: the ones the comparison wrote.
    images = np.load(os.path.join(workdir, "inputs", "images.npy"))
    for m in result["models"]:
        np.testing.assert_array_equal(
            np.load(os.path.join(workdir, "models", m, "inputs", "images.npy")), images)
    assert _csv(os.path.join(workdir, "report", "ranking.csv"))[0]["model"] == "gauss_ri"


@pytest.mark.slow  # shares the comparison of `compared`
def test_report_page_and_side_by_side_figure(compared):
    workdir, _ = compared
    report = os.path.join(workdir, "report")
    assert os.path.isfile(os.path.join(report, "figures", "image0_mse.png"))
    # The changes plot and one figure (one distance): a row per lambda, x and three x_inv.
    page = check_report(os.path.join(report, "index.html"), figures=2, rows=3 * len(LAMBDAS))
    assert page.canvases == page.drawn == len(LAMBDAS) * 4
    # It links each model's own report.
    text = open(os.path.join(report, "index.html")).read()
    for m in compared[1]["models"]:
        href = f"../models/{m}/report/index.html"
        assert f'<a href="{href}">{m}</a>' in text
        assert os.path.isfile(os.path.normpath(os.path.join(report, href)))


@pytest.mark.slow  # shares the comparison of `compared`
def test_a_second_run_computes_nothing_and_rewrites_no_sweep(inputs, compared):
    workdir, first = compared
    before = {k: v for k, v in files_of(workdir).items() if "chunks" in k}
    again = zoo.run(zoo_cfg(inputs), workdir)
    assert again["ranking"] == first["ranking"]
    assert {k: v for k, v in files_of(workdir).items() if "chunks" in k} == before


@pytest.mark.parametrize("change, error, message", [
    (dict(models=("cnn10", "unet")), ValueError, r"config\.models: unknown denoiser 'unet'"),
    (dict(models=()), ValueError, r"config\.models is empty"),
    (dict(models=("wgan_vgg", "wganvgg")), ValueError, r"names a model twice"),
    (dict(models=("gauss_ri", "qae")), FileNotFoundError,
     r"config\.checkpoints\.qae='runs/supervised_qae/model': no saved qae model there; train "
     r"one with `python launch/main.py --config=configs/supervised.py:qae`"),
    (dict(models=("gauss_ri", "dugan")), FileNotFoundError,
     r"config\.checkpoints\.dugan='': no saved dugan model there; point "
     r"--config\.checkpoints\.dugan at"),
])
def test_bad_models_fail_before_any_search(inputs, tmp_path, monkeypatch, change, error,
                                           message):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    with pytest.raises(error, match=message):
        zoo.run(zoo_cfg(inputs, **change), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "models")


def test_model_config_is_the_invariance_grid_for_one_model(inputs):
    c = zoo_cfg(inputs)
    sub = zoo.model_config(c, "redcnn")
    assert (sub.job, sub.model, sub.checkpoint) == ("invariance", "redcnn", str(inputs / "redcnn"))
    assert sub.search == c.search and sub.lambdas == c.lambdas and sub.images == c.images
    assert "models" not in sub and "checkpoints" not in sub
    with pytest.raises(AttributeError):
        sub.not_a_field = 1
