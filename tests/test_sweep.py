"""The invariance and attack sweeps: resume after a kill, config-change refusal, bad inputs,
report layout. gauss_ri on tiny images with few iterations."""

import csv
import json
import os
import re
import shutil

import jax
import matplotlib.image
import numpy as np
import pytest

from configs import attack as attack_config
from configs import invariance as invariance_config
from ldct_jax import ct, files, jobs, models
from ldct_jax.analysis import attacks, search
from ldct_jax.jobs import attack as attack_sweep
from ldct_jax.jobs import chunks, sweep_report
from ldct_jax.jobs import invariance as sweep
from tests.browser import Page, check_report
from tests.nets import scipy_gauss_ri
from tests.workdirs import files_of

SIZE = 64


class Killed(Exception):
    """Stands in for a kill after a chunk was written."""


def killed_on_call(monkeypatch, owner, name, call, record=None):
    """Makes `owner.name` raise Killed on its `call`-th call (counting from 1), once: the run
    dies while computing that chunk. `record(args)` is called for every completed call."""
    original = getattr(owner, name)
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise Killed
        out = original(*args, **kwargs)
        if record is not None:
            record(args)
        return out

    monkeypatch.setattr(owner, name, wrapped)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2, 40.0, -1000.0)
    images = np.stack([body + rng.normal(0, 20, body.shape), body[::-1] + 10]).astype(np.float32)
    path = str(tmp_path_factory.mktemp("images") / "images.npy")
    np.save(path, np.clip(images, ct.HU_MIN, ct.HU_MAX))
    return path


def invariance_cfg(image_file, **changes):
    c = invariance_config.get_config("gauss_ri")
    with c.unlocked():
        c.images = image_file
        c.distances = ("mse", "dssim")
        c.lambdas = (1e-4, 1e-2)
        c.rows_per_chunk = 3          # 8 rows -> chunks of 3, 3, 2
        c.search.iterations = 20
        c.search.chunk = 10
        c.progress_bar = False
        for k, v in changes.items():
            c[k] = v
    return c


def attack_cfg(image_file, **changes):
    c = attack_config.get_config("gauss_ri")
    with c.unlocked():
        c.images = image_file
        c.methods = ("fgsm", "bim")
        c.epsilons_hu = (2.0, 10.0)
        c.steps = 2
        c.images_per_chunk = 1        # 2 methods x N images -> 2 N chunks
        c.progress_bar = False
        for k, v in changes.items():
            c[k] = v
    return c


def mtimes(workdir):
    root = os.path.join(workdir, chunks.CHUNKS)
    return {os.path.join(d, f): os.stat(os.path.join(root, d, f)).st_mtime_ns
            for d in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, d)))}


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(image_file, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sweep_whole"))
    jobs.run(invariance_cfg(image_file), workdir)  # through the job dispatch, as launch/main.py
    return workdir


@pytest.mark.slow
def test_invariance_sweep_resumes_where_killed(image_file, uninterrupted, tmp_path, monkeypatch):
    calls = []
    killed_on_call(monkeypatch, search.Searcher, "run", 2,
                   record=lambda args: calls.append(len(args[3].lam)))  # self, params, x, rows
    workdir = str(tmp_path / "sweep")
    config = invariance_cfg(image_file)
    config.report.figures = False  # not part of the results; test_invariance_report_layout

    with pytest.raises(Killed):  # killed while computing chunk 1
        sweep.run(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "chunks"))) == ["00000"]
    assert not os.path.exists(os.path.join(workdir, "report"))
    before = mtimes(workdir)
    # A half-written chunk left by a process killed during the write is thrown away.
    stale = files.temp_path(chunks.chunk_dir(workdir, 1)).replace(f"-{os.getpid()}-", "-4194305-")
    os.makedirs(stale)

    out = sweep.run(config, workdir)
    assert out["computed"] == [1, 2] and out["chunks"] == 3
    assert calls == [3, 3, 2]  # chunk 0 once, then only chunks 1 and 2
    after = mtimes(workdir)
    assert {k: after[k] for k in before} == before  # finished chunk never rewritten
    assert sorted(os.listdir(os.path.join(workdir, "chunks"))) == ["00000", "00001", "00002"]
    assert not os.path.exists(stale)

    # Same results as the uninterrupted sweep.
    for i in range(3):
        a, meta_a = chunks.read_chunk(uninterrupted, i, ["perturbation", "curves"])
        b, meta_b = chunks.read_chunk(workdir, i, ["perturbation", "curves"])
        np.testing.assert_allclose(b["perturbation"], a["perturbation"], atol=1e-3)
        np.testing.assert_allclose(b["curves"], a["curves"], rtol=1e-5, atol=1e-7)
        assert [r["row"] for r in meta_b["rows"]] == [r["row"] for r in meta_a["rows"]]

    # Started again when finished: nothing computed.
    assert sweep.run(config, workdir)["computed"] == []
    assert len(calls) == 3


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_invariance_report_layout(uninterrupted):
    report = os.path.join(uninterrupted, "report")
    figures = sorted(os.listdir(os.path.join(report, "figures")))
    # One figure per image and distance ...
    assert figures == ["image0_dssim.png", "image0_mse.png", "image1_dssim.png", "image1_mse.png"]
    # ... with one row per lambda of six 3-inch panels at 100 dpi.
    img = matplotlib.image.imread(os.path.join(report, "figures", figures[0]))
    assert img.shape[:2] == (2 * 300, 6 * 300)

    results = read_csv(os.path.join(report, "results.csv"))
    assert len(results) == 8  # 2 distances x 2 lambdas x 2 images x 1 seed
    # Rows in grid order (distances x lambdas x images x seeds) and the metrics are those of
    # the saved perturbations (numpy RMS).
    grid = search.grid(2, [1e-4, 1e-2], ["mse", "dssim"], [0])
    assert [r["distance"] for r in results] == list(grid.distance)
    assert [int(r["image_index"]) for r in results] == grid.image_index.tolist()
    perturbation = np.concatenate([chunks.read_chunk(uninterrupted, i, ["perturbation"])[0]
                                   ["perturbation"] for i in range(3)])
    assert perturbation.shape == (8, SIZE, SIZE)
    rms = np.sqrt(np.mean(np.square(perturbation.astype(np.float64)), axis=(1, 2)))
    np.testing.assert_allclose([float(r["input_rms_hu"]) for r in results], rms, rtol=1e-4)

    summary = read_csv(os.path.join(report, "summary.csv"))
    assert [(r["distance"], float(r["lam"])) for r in summary] == [
        ("dssim", pytest.approx(1e-4)), ("dssim", pytest.approx(1e-2)),
        ("mse", pytest.approx(1e-4)), ("mse", pytest.approx(1e-2))]
    for s in summary:
        group = [r for r in results if r["distance"] == s["distance"] and r["lam"] == s["lam"]]
        assert int(s["n"]) == len(group) == 2
        for m in ("input_rms_hu", "input_ssim", "output_rms_hu"):
            assert float(s[m]) == pytest.approx(np.mean([float(r[m]) for r in group]), rel=1e-6)
        assert float(s["ratio"]) == pytest.approx(float(s["input_rms_hu"])
                                                  / float(s["output_rms_hu"]), rel=1e-6)
    md = open(os.path.join(report, "summary.md")).read().splitlines()
    assert md[2].startswith("| model | distance | lam |") and len(md) == 4 + 4
    with open(os.path.join(uninterrupted, "inputs", "images.json")) as f:
        assert json.load(f)["anatomy"] == ["abdomen", "abdomen"]


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_invariance_report_page_shows_every_figure_and_summary_row(uninterrupted):
    report = os.path.join(uninterrupted, "report")
    assert matplotlib.image.imread(os.path.join(report, "changes.png")).shape[:2] == (550, 750)
    # The changes plot and a figure per image and distance; a row per distance and lambda.
    page = check_report(os.path.join(report, "index.html"), figures=1 + 4, rows=4)
    assert page.images == 1 and page.canvases == page.drawn == 4 * 2 * 6
    # abdomen, then x_inv in a window of its own (+-1, 2 or 5 x 10^k HU), the output in diff.
    assert page.bounds[:4] == ["[-150, 250] HU"] * 4 and page.bounds[5] == "[-50, 50] HU"
    assert re.fullmatch(r"\[-([125])(0*), \1\2\] HU", page.bounds[4]), page.bounds[4]


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_changed_config_is_refused(image_file, uninterrupted):
    config = invariance_cfg(image_file, lambdas=(1e-4, 1e-1))
    with pytest.raises(chunks.ConfigChangedError, match=r"lambdas: \[0\.0001, 0\.01\] -> "
                       r"\[0\.0001, 0\.1\].*new --workdir"):
        sweep.run(config, uninterrupted)
    other_images = np.load(image_file)[:1]
    path = os.path.join(os.path.dirname(uninterrupted), "one.npy")
    np.save(path, other_images)
    with pytest.raises(chunks.ConfigChangedError, match="images"):
        sweep.run(invariance_cfg(image_file, images=path), uninterrupted)


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_a_sweep_of_an_earlier_results_version_is_refused(image_file, uninterrupted, tmp_path):
    """A sweep started by code that computed other results for the same config (its manifest
    without this version, and without the resolved search settings) is not finished here."""
    copy = str(tmp_path / "old")
    shutil.copytree(uninterrupted, copy)
    path = os.path.join(copy, chunks.MANIFEST)
    with open(path) as f:
        settings = json.load(f)["settings"]
    del settings["results_version"], settings["search"]
    with open(path, "w") as f:
        json.dump({"fingerprint": chunks.fingerprint(settings), "settings": settings}, f)
    with pytest.raises(chunks.ConfigChangedError, match=r"results_version.*new --workdir"):
        sweep.run(invariance_cfg(image_file), copy)


@pytest.mark.parametrize("change, error, message", [
    (dict(distances=("mse", "l1")), ValueError,
     r"config\.distances=\('mse', 'l1'\): unknown input distance\(s\) \['l1'\]; expected some "
     r"of mse, dssim, vgg16"),
    (dict(images="BAD_SHAPE"), ValueError,
     r"bad_shape\.npy.*expected an image \[H, W\] or a stack \[N, H, W\] in HU, got shape "
     r"\(1, 2, 64, 64\)"),
    (dict(images="NAN"), ValueError, r"nan\.npy.*1 NaN/inf value\(s\), first in image 1 at row "
     r"5, column 7"),
    (dict(images="MISSING"), FileNotFoundError, r"config\.images=.*missing\.npy.*no such file"),
    (dict(mask="BAD_MASK"), ValueError, r"config\.mask=.*shape \(32, 32\) does not fit the "
     r"images \(2, 64, 64\)"),
    (dict(model="cnn10", checkpoint="/nonexistent/model"), FileNotFoundError,
     r"config\.checkpoint='/nonexistent/model': no saved cnn10 model there; train one with "
     r"`python launch/main.py --config=configs/cnn10.py` \(it writes runs/cnn10/model\)"),
    (dict(model="wgan_vgg", checkpoint="GAUSS_MODEL"), ValueError,
     r"holds a 'gauss_ri' model, not a 'wgan_vgg' one; point --config\.checkpoint at a wgan_vgg "
     r"model \(or set --config\.model=gauss_ri\)"),
    (dict(model="unet"), ValueError, r"config\.model='unet' is not a denoiser"),
    (dict(lambdas=(1e-2, float("nan"))), ValueError, r"config\.lambdas"),
    (dict(search=dict(iterations=-1, chunk=10)), ValueError, r"config\.search: .*iterations"),
    (dict(search=dict(compute_dtype="float16")), ValueError,
     r"config\.search: compute_dtype must be one of \('float32', 'bfloat16'\), got "
     r"'float16'"),
    (dict(search=dict(lambda_steps=40)), ValueError,
     r"config\.search: iterations \(20\) end before lambda_steps \(40\): rows with lambda "
     r"below lambda_start \(0\.01\), here 0\.0001"),
    (dict(anatomy="lung"), ValueError, r"config\.anatomy='lung'; expected one of \('chest', "),
    (dict(report=dict(figure_seed=3)), ValueError,
     r"config\.report\.figure_seed=3: not among config\.seeds=\[0\]"),
    (dict(images="EMPTY"), ValueError, r"empty\.npy.*no pixels \(shape \(0, 64, 64\)\)"),
    (dict(images="TINY"), ValueError, r"config\.images=.*tiny\.npy.*: search: images of 8x8 px "
                                      r"are smaller than SSIM \(the input_ssim "
                                      r"metric\) needs \(11x11 px\)"),
    (dict(mask="PICKLED"), ValueError, r"config\.mask=.*pickled\.npy': not a plain \.npy array "
                                       r"\(expected a \.npy of 0/1.*pickled object arrays are "
                                       r"refused\)"),
    (dict(report=dict(compare=("/nowhere/sweep",))), FileNotFoundError,
     r"config\.report\.compare: /nowhere/sweep/report/summary\.json does not exist"),
])
def test_bad_inputs_fail_at_start(image_file, tmp_path, change, error, message):
    files = tmp_path / "files"
    files.mkdir()
    good = np.load(image_file)
    special = {"BAD_SHAPE": good[None], "NAN": good.copy(), "BAD_MASK": np.ones((32, 32)),
               "EMPTY": good[:0], "TINY": good[:, :8, :8],
               "PICKLED": np.array([{"mask": 1}], dtype=object)}
    special["NAN"][1, 5, 7] = np.nan
    for key, value in list(change.items()):
        if isinstance(value, dict):
            continue
        if value in special:
            change[key] = str(files / f"{value.lower()}.npy")
            np.save(change[key], special[value], allow_pickle=True)
        elif value == "MISSING":
            change[key] = str(files / "missing.npy")
        elif value == "GAUSS_MODEL":
            change[key] = str(files / "gauss_model")
            models.save(models.create("gauss_ri", jax.random.key(0)), change[key])
    nested = {k: change.pop(k) for k in ("search", "report") if k in change}
    config = invariance_cfg(image_file, **change)
    for key, value in nested.items():
        config[key].update(value)
    workdir = str(tmp_path / "run")
    with pytest.raises(error, match=message):
        sweep.run(config, workdir)
    assert not os.path.exists(workdir)  # nothing written


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_missing_compare_fails_before_touching_a_finished_sweep(image_file, uninterrupted):
    before = files_of(uninterrupted)
    config = invariance_cfg(image_file)
    config.report.compare = ("/nowhere/sweep",)
    with pytest.raises(FileNotFoundError, match=r"config\.report\.compare: /nowhere/sweep/"
                       r"report/summary\.json does not exist"):
        sweep.run(config, uninterrupted)
    assert files_of(uninterrupted) == before


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_compared_rows_say_which_sweep_they_come_from(image_file, uninterrupted, tmp_path):
    # The same model, distance and lambda as a row of `uninterrupted`: alike but for the sweep.
    config = invariance_cfg(image_file, distances=("mse",), lambdas=(1e-2,), seeds=(0,))
    config.report.figures = False
    config.report.compare = (uninterrupted,)
    workdir = str(tmp_path / "sweep")
    sweep.run(config, workdir)
    table = read_csv(os.path.join(workdir, "report", "summary.csv"))
    assert [(r["model"], r["distance"], r["lam"], r["sweep"]) for r in table] == [
        ("gauss_ri", "dssim", "0.0001", uninterrupted),
        ("gauss_ri", "dssim", "0.01", uninterrupted),
        ("gauss_ri", "mse", "0.0001", uninterrupted), ("gauss_ri", "mse", "0.01", workdir),
        ("gauss_ri", "mse", "0.01", uninterrupted)]
    assert "| sweep |" in open(os.path.join(workdir, "report", "summary.md")).read()
    own = files.read_json(os.path.join(workdir, "report", "summary.json"))["summary"]
    assert len(own) == 1 and "sweep" not in own[0]  # what a later sweep compares
    uncompared = read_csv(os.path.join(uninterrupted, "report", "summary.csv"))
    assert "sweep" not in uncompared[0]


@pytest.mark.slow
def test_diverging_search_fails_naming_rows_and_writes_no_chunk(image_file, tmp_path):
    """A CNN-10 whose activations overflow float32 (weights x 1e20): the search's rows are NaN.
    The sweep stops at the first chunk, naming its rows, and writes none of it."""
    d = models.create("cnn10", jax.random.key(0), features=(4, 4))
    model = str(tmp_path / "exploding")
    models.save(d.replace(params=jax.tree.map(lambda a: a * 1e20, d.params)), model)
    workdir = str(tmp_path / "run")
    config = invariance_cfg(image_file, model="cnn10", checkpoint=model)
    with pytest.raises(FloatingPointError, match=r"chunk 0: non-finite results in \d row\(s\): "
                       r"row=0, image_index=0, distance=mse, lam=0\.0001, seed=0 \(perturbation"
                       r".*Nothing of this chunk was written\. The search diverged"):
        sweep.run(config, workdir)
    assert os.listdir(os.path.join(workdir, "chunks")) == []


@pytest.mark.slow
def test_diverging_attack_fails_naming_rows_and_writes_no_chunk(image_file, tmp_path):
    d = models.create("cnn10", jax.random.key(0), features=(4, 4))
    model = str(tmp_path / "exploding")
    models.save(d.replace(params=jax.tree.map(lambda a: a * 1e20, d.params)), model)
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"chunk 0: non-finite results in \d row\(s\): "
                       r"row=0, image_index=0, method=fgsm, epsilon_hu=2 \(perturbation.*Nothing "
                       r"of this chunk was written"):
        attack_sweep.run(attack_cfg(image_file, model="cnn10", checkpoint=model), workdir)
    assert os.listdir(os.path.join(workdir, "chunks")) == []


@pytest.mark.slow  # shares the sweep of `uninterrupted`
def test_a_finished_chunk_with_nan_rows_is_named_before_anything_runs(image_file, uninterrupted,
                                                                       tmp_path):
    """As an older ldct-jax could leave it: the sweep stops at start, naming the chunk."""
    workdir = str(tmp_path / "old")
    shutil.copytree(uninterrupted, workdir)
    path = os.path.join(chunks.chunk_dir(workdir, 1), chunks.METRICS_JSON)
    meta = json.load(open(path))
    meta["rows"][2]["output_rms_hu"] = float("nan")
    json.dump(meta, open(path, "w"))
    shutil.rmtree(chunks.chunk_dir(workdir, 2))
    with pytest.raises(FloatingPointError, match=r"chunk 1: non-finite results in 1 row\(s\): "
                       r"row=5, .*\(output_rms_hu\)\. It was finished earlier \(.*chunks/00001\): "
                       r"delete that folder to compute it again"):
        sweep.run(invariance_cfg(image_file), workdir)
    assert not os.path.exists(chunks.chunk_dir(workdir, 2))  # nothing computed


def test_summary_n_counts_exactly_the_rows_of_its_means():
    records = [dict(row=i, model="m", distance="mse", lam=0.1, input_rms_hu=float(i + 1))
               for i in range(3)]
    (row,) = sweep_report.summarise(records, ("model", "distance", "lam"), ["input_rms_hu"])
    assert row["n"] == 3 and row["input_rms_hu"] == pytest.approx(2.0)
    records[1]["input_rms_hu"] = float("nan")
    with pytest.raises(ValueError, match=r"input_rms_hu is missing or not finite in rows \[1\]"):
        sweep_report.summarise(records, ("model", "distance", "lam"), ["input_rms_hu"])


def test_records_of_earlier_chunks_read_lambda_as_written(tmp_path):
    """Chunks written before records rounded lambda hold float32's value: read back, it is
    the lambda as written, so that a resumed sweep's summary keeps one row per lambda."""
    old, new = float(np.float32(0.01)), 0.01
    assert old != new
    for i, lam in enumerate((old, new)):
        chunks.write_chunk(str(tmp_path), i, {"perturbation": np.zeros((1, 2, 2))},
                           [dict(row=i, lam=lam, model="m", distance="mse")])
    _, records = sweep_report.gather(str(tmp_path), 2, ["perturbation"])
    assert [r["lam"] for r in records] == [new, new]


def test_default_checkpoint_message(image_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    with pytest.raises(FileNotFoundError, match=r"'runs/wgan/model': no saved wgan_vgg model "
                       r"there; train one with `python launch/main.py --config=configs/wgan.py`"):
        sweep.run(invariance_cfg(image_file, model="wgan_vgg"), str(tmp_path / "run"))
    # A network with weights is never studied at a random init: without a checkpoint it fails.
    with pytest.raises(FileNotFoundError, match=r"config\.checkpoint='': no saved dugan model "
                       r"there; point --config\.checkpoint at"):
        sweep.run(invariance_cfg(image_file, model="dugan"), str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=r"'runs/supervised_redcnn/model': no saved "
                       r"redcnn model there; train one with `python launch/main.py "
                       r"--config=configs/supervised.py:redcnn`"):
        sweep.run(invariance_cfg(image_file, model="redcnn"), str(tmp_path / "run"))


def test_configs_presets_locked_and_checked():
    for module, name in ((invariance_config, "invariance"), (attack_config, "attack")):
        for model in module.MODELS:
            for variant in module.VARIANTS:
                c = module.get_config(model if variant == "default" else f"{model},{variant}")
                assert c.job == name and c.model == models.canonical(model)
                with pytest.raises(AttributeError):
                    c.not_a_field = 1
        with pytest.raises(ValueError, match=f"configs/{name}.py: unknown preset 'vgg'"):
            module.get_config("vgg")
    assert invariance_config.get_config().model == "gauss_ri"


def test_remove_center_target_matches_numpy():
    rng = np.random.default_rng(1)
    y = rng.normal(0, 50, (2, 33, 40)).astype(np.float32)
    t = attack_sweep.remove_center(y, 5)
    yy, xx = np.mgrid[:33, :40]
    r = np.sqrt((yy - 16) ** 2 + (xx - 19.5) ** 2)
    for k in range(2):
        ring = y[k][(r > 5) & (r <= 10)]
        assert np.all(t[k][r <= 5] == np.median(ring))
        np.testing.assert_array_equal(t[k][r > 5], y[k][r > 5])
    with pytest.raises(ValueError, match=r"config\.target_radius_px=20; expected 1\.\.8"):
        attack_sweep.remove_center(y, 20)


@pytest.mark.slow
def test_attack_sweep_resume_budget_and_report(image_file, tmp_path, monkeypatch):
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    one = str(tmp_path / "one.npy")
    np.save(one, np.load(image_file)[1:])
    config = attack_cfg(one)
    config.report.figures = False
    attack_sweep.run(config, whole)

    config.report.figures = True
    with monkeypatch.context() as patch:
        killed_on_call(patch, attacks, "attack", 2)  # killed while computing chunk 1
        with pytest.raises(Killed):
            attack_sweep.run(config, part)
    before = mtimes(part)
    out = attack_sweep.run(config, part)
    assert out["computed"] == [1] and out["chunks"] == 2
    after = mtimes(part)
    assert {k: after[k] for k in before} == before
    images = np.load(one)
    for i in range(2):
        a, meta_a = chunks.read_chunk(whole, i, ["perturbation"])
        b, meta_b = chunks.read_chunk(part, i, ["perturbation"])
        np.testing.assert_array_equal(b["perturbation"], a["perturbation"])
        for r, delta in zip(meta_b["rows"], b["perturbation"]):
            # Each row respects its budget and the HU range (numpy, from the saved arrays).
            assert np.abs(delta).max() <= r["epsilon_hu"]
            x_adv = images[r["image_index"]] + delta
            assert x_adv.min() >= ct.HU_MIN and x_adv.max() <= ct.HU_MAX
            assert r["method"] == ("fgsm", "bim")[i]
    with pytest.raises(chunks.ConfigChangedError, match="steps: 2 -> 3"):
        attack_sweep.run(attack_cfg(one, steps=3), part)

    report = os.path.join(part, "report")
    figures = sorted(os.listdir(os.path.join(report, "figures")))
    assert figures == ["image0_bim.png", "image0_fgsm.png"]  # per image and method
    img = matplotlib.image.imread(os.path.join(report, "figures", figures[0]))
    assert img.shape[:2] == (2 * 300, 6 * 300)  # one row per budget, six panels
    summary = read_csv(os.path.join(report, "summary.csv"))
    assert [(r["method"], float(r["epsilon_hu"])) for r in summary] == [
        ("bim", 2.0), ("bim", 10.0), ("fgsm", 2.0), ("fgsm", 10.0)]
    assert len(read_csv(os.path.join(report, "results.csv"))) == 4
    page = Page(open(os.path.join(report, "index.html")).read())  # as written, not run
    assert page.figures == 1 + 2 and len(page.rows) == 4 and page.canvases == 2 * 2 * 6


@pytest.mark.parametrize("change, message", [
    (dict(methods=("fgsm", "cw")), r"config\.methods=\('fgsm', 'cw'\): unknown method\(s\) "
     r"\['cw'\]; expected some of fgsm, bim, pgd"),
    (dict(epsilons_hu=(-1.0,)), r"config\.epsilons_hu=\(-1\.0,\)"),
    (dict(target="lesion"), r"config\.target='lesion'; expected ''"),
    (dict(target="BAD_TARGET"), r"config\.target=.*target\.npy': shape \(1, 32, 32\) does "
     r"not fit the images \(2, 64, 64\)"),
    (dict(target="PICKLED"), r"config\.target=.*target\.npy': not a plain \.npy array \("
     r"expected a \.npy of output images in HU; pickled object arrays are refused\)"),
    (dict(report=dict(compare="INVARIANCE")), r"config\.report\.compare: .*summary\.json is not "
     r"the summary of a sweep of this kind \(records with model, method, epsilon_hu\)"),
])
def test_attack_bad_config(image_file, tmp_path, change, message, uninterrupted):
    if change.get("target") in ("BAD_TARGET", "PICKLED"):
        kind, change["target"] = change["target"], str(tmp_path / "target.npy")
        np.save(change["target"], np.zeros((32, 32), np.float32) if kind == "BAD_TARGET" else
                np.array([{"target": 1}], dtype=object), allow_pickle=True)
    if "report" in change:  # an invariance sweep's summary compared in an attack sweep
        config = attack_cfg(image_file)
        config.report.compare = (uninterrupted,)
        with pytest.raises(ValueError, match=message):
            attack_sweep.run(config, str(tmp_path / "run"))
        assert not os.path.exists(tmp_path / "run")
        return
    with pytest.raises(ValueError, match=message):
        attack_sweep.run(attack_cfg(image_file, **change), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # nothing written


@pytest.mark.slow
def test_targeted_attack_sweep(image_file, tmp_path):
    one = str(tmp_path / "one.npy")
    x = np.load(image_file)[0]
    np.save(one, x)
    config = attack_cfg(one, methods=("fgsm",), target="remove_center", target_radius_px=12)
    attack_sweep.run(config, str(tmp_path / "run"))
    # The target: f(x) (SciPy's Gaussian, sigma 1, central 30x30 square zeroed) with the central
    # disc replaced by the median of the ring around it.
    y = scipy_gauss_ri(x)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - 31.5, xx - 31.5)
    y[r <= 12] = np.median(y[(r > 12) & (r <= 24)])
    target = np.load(tmp_path / "run" / "inputs" / "target.npy")
    np.testing.assert_allclose(target[0], y, atol=1e-2)
    rows = read_csv(tmp_path / "run" / "report" / "results.csv")
    assert [r["targeted"] for r in rows] == ["True", "True"]
    assert all(float(r["target_rms_hu_clean"]) > 0 for r in rows)
    img = matplotlib.image.imread(tmp_path / "run" / "report" / "figures" / "image0_fgsm.png")
    assert img.shape[:2] == (2 * 300, 7 * 300)  # the target as a seventh panel
