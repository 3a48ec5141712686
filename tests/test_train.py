"""Training: data parallelism, exact resume, non-finite stop, corrupt checkpoints, bad configs.

Runs on tiny in-memory scans (a smooth phantom with Gaussian noise for the low dose) and tiny
networks, so every compile and step is fast on a 2-core CPU.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import cnn10 as cnn10_config
from configs import supervised as supervised_config
from configs import wgan as wgan_config
from ldct_jax import files, jobs, models, parallel
from ldct_jax.jobs import configs as configs_lib
from ldct_jax.jobs import data as data_job
from ldct_jax.jobs import train as job
from ldct_jax.jobs import trainers
from ldct_jax.train.checkpoint import Checkpointer
from tests import training
from tests.training import (assert_trees_close, phantom_scans,
                            sigterm_at_checkpoint)
from tests.workdirs import files_of

# The steps of this module's runs compile once (a module-scoped autouse fixture).
compilation_cache = training.compilation_cache


_VGG_CACHE = {}


@pytest.fixture(autouse=True)
def cached_vgg_init(monkeypatch):
    """Every WGAN trainer of these tests draws the same random VGG19: draw it once."""
    from ldct_jax.models import vgg_weights as vgg
    original = vgg.random_init

    def cached(arch, key, *, imagenet_norm=True):
        k = (arch, np.asarray(jax.random.key_data(key)).tobytes(), imagenet_norm)
        if k not in _VGG_CACHE:
            _VGG_CACHE[k] = original(arch, key, imagenet_norm=imagenet_norm)
        return _VGG_CACHE[k]

    monkeypatch.setattr(vgg, "random_init", cached)


def cnn10_cfg(**over):
    c = cnn10_config.get_config()
    c.model_config.features = (8, 4)
    # num_steps sets the cosine schedule, so the same value in every test that can use it
    # gives the same compiled step (served by the compilation cache).
    c.num_steps, c.batch_size, c.patch_size = 6, 4, 16
    c.optimizer.lr, c.optimizer.schedule = 1e-3, "cosine"   # resume must restore the schedule
    c.checkpoint.every_steps = 2
    c.log_every_steps = 1
    c.eval.slices_per_patient = 1
    c.progress_bar = False
    _update(c, over)
    return c


def wgan_cfg(**over):
    c = wgan_config.get_config()
    c.model_config.features, c.model_config.depth = 4, 3
    c.num_steps, c.batch_size, c.patch_size = 4, 4, 32   # 4: as in test_resume (schedule)
    c.wgan.n_critic = 2
    # Adam's first updates are ~lr * sign(gradient): where a gradient is as small as the rounding
    # of the cross-device sum, 1 and 4 devices may step in opposite directions, ~2 lr apart.
    # The paper's lr (1e-5) keeps that below the 1e-5 tolerance of the data-parallel test.
    c.optimizer.lr = c.critic_optimizer.lr = 1e-5
    # VGG19 up to conv2_1 instead of conv5_4: the same step, compiled in a fraction of the time.
    c.vgg.tap = "conv2_1"
    c.checkpoint.every_steps = 1
    c.log_every_steps = 1
    c.eval.slices_per_patient = 1
    c.progress_bar = False
    _update(c, over)
    return c


def _supervised_cfg(method, **over):
    c = supervised_config.get_config(method)
    _update(c, over)
    return c


def _update(c, over):
    for key, value in over.items():
        *parents, last = key.split("__")
        node = c
        for p in parents:
            node = node[p]
        node[last] = value


def _train_params(config, scans, steps):
    """`steps` steps with trainers.build on config.num_devices devices (`training.run_steps`)."""
    mesh = parallel.make_mesh(config.num_devices or None)
    return training.run_steps(trainers.build(config, mesh, scans), mesh, steps)


@pytest.mark.slow
@pytest.mark.parametrize("make_cfg", [cnn10_cfg, wgan_cfg], ids=["cnn10", "wgan"])
def test_data_parallel_equals_one_device(make_cfg):
    assert jax.device_count() == 4
    scans = phantom_scans(size=40)
    init, one, _ = _train_params(make_cfg(num_devices=1), scans, 3)
    _, four, state = _train_params(make_cfg(num_devices=4), scans, 3)
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 4
    assert_trees_close(one, four)
    # The steps did move the params (the comparison is not between two initial states).
    assert max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(init), jax.tree.leaves(one[0]))) > 1e-5


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _events(workdir):
    return [r for r in _records(workdir) if "event" in r]


@pytest.mark.slow
@pytest.mark.parametrize("make_cfg", [cnn10_cfg, wgan_cfg], ids=["cnn10", "wgan"])
def test_resume_after_sigterm_is_exact(make_cfg, tmp_path):
    scans = phantom_scans()
    n = 3 if make_cfg is cnn10_cfg else 2
    # A checkpoint every n steps: SIGTERM comes when the first one is written, at step n.
    cfg = make_cfg(num_steps=2 * n, checkpoint__every_steps=n)
    straight = job.run(cfg, str(tmp_path / "straight"), scans=scans)
    assert straight["step"] == 2 * n and straight["stopped"] is None

    wd = str(tmp_path / "stopped")
    with sigterm_at_checkpoint(1):
        first = job.run(cfg, wd, scans=scans)
    assert first["stopped"] == "SIGTERM" and first["step"] == n
    assert Checkpointer(os.path.join(wd, "checkpoints")).all_steps() == [n]
    assert not os.path.exists(os.path.join(wd, "model"))
    # What a kill after step n + 1 would have left: its metrics, and a line cut short.
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": n + 1, "split": "train", "time": 0.0, "loss": -1.0}) + "\n")
        f.write('{"step": ')
    second = job.run(cfg, wd, scans=scans)
    assert second["step"] == 2 * n and second["stopped"] is None

    def logged(workdir):  # the metrics of every step, as logged, in order (not the speeds)
        return [{k: v for k, v in r.items() if k not in ("time", "steps_per_s", "patches_per_s")}
                for r in _records(workdir) if "split" in r]

    got, want = logged(wd), logged(str(tmp_path / "straight"))
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    for a, b in zip(got, want):  # the split compared above; approx takes numbers only
        assert ({k: v for k, v in a.items() if k != "split"}
                == pytest.approx({k: v for k, v in b.items() if k != "split"}, rel=1e-5))
    assert_trees_close(jax.device_get(straight["state"]), jax.device_get(second["state"]),
                        tol=1e-7)
    events = [(e["event"], e["step"]) for e in _events(wd)]
    assert events == [("stopped", n), ("resumed", n)]
    # The resumed run's eval numbers and its saved model are the uninterrupted run's.
    assert second["eval"]["network"]["rmse_hu"] == pytest.approx(
        straight["eval"]["network"]["rmse_hu"], rel=1e-5)
    saved = models.load(os.path.join(wd, "model"))
    assert_trees_close(saved.params, jax.device_get(straight["state"].params), tol=1e-6)
    # A finished run again evaluates again: its log and its timed speed stay as they were.
    speed = files.read_json(os.path.join(wd, "eval.json"))["train_steps_per_s"]
    assert job.run(cfg, wd, scans=scans)["step"] == 2 * n
    assert [(r["split"], r["step"]) for r in logged(wd)] == [(r["split"], r["step"]) for r in got]
    assert speed and files.read_json(os.path.join(wd, "eval.json"))["train_steps_per_s"] == speed


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caplog):
    wd = str(tmp_path / "run")
    # Adam moves every weight by ~lr per step: with lr=1e18 the outputs overflow float32 within
    # a few steps. Checkpoints every step, so the last good one is the step before.
    cfg = cnn10_cfg(num_steps=20, optimizer__lr=1e18, checkpoint__every_steps=1,
                    checkpoint__keep=2)
    with pytest.raises(job.NonFiniteLossError, match=r"non-finite training metrics at step "
                       r"(\d+).*last good checkpoint \(step (\d+)") as info:
        job.run(cfg, wd, scans=phantom_scans())
    bad_step = int(info.value.args[0].split("at step ")[1].split(":")[0])
    ckpt = Checkpointer(os.path.join(wd, "checkpoints"), keep=2)
    assert 1 < bad_step < 20 and ckpt.latest_step() == bad_step - 1
    assert f"(step {bad_step - 1} in" in str(info.value)
    assert str(info.value).endswith("in a new --workdir: a restart continues the saved run, "
                                    "with its settings.")
    # The kept checkpoint restores and is finite.
    mesh = parallel.make_mesh()
    target = trainers.build(cfg, mesh, phantom_scans()).init_state
    state, step = ckpt.restore_latest(target)
    assert step == bad_step - 1 and not ckpt.skipped
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state)))
    assert [e["event"] for e in _events(wd)] == ["non_finite"]
    assert not os.path.exists(os.path.join(wd, "model"))


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_checkpoint_takes_new_settings(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(job.NonFiniteLossError, match=r"No checkpoint had been saved yet\. Lower "
                       r"the learning rate \(config\.optimizer\.lr\) or check the data\.$"):
        job.run(cnn10_cfg(num_steps=20, optimizer__lr=1e18, checkpoint__every_steps=50), wd,
                scans=phantom_scans())
    assert os.path.exists(os.path.join(wd, "config.json"))  # nothing saved: nothing to continue
    out = job.run(cnn10_cfg(), wd, scans=phantom_scans())
    assert out["step"] == 6 and out["stopped"] is None


def test_held_out_slices_transct_cannot_take_fail_before_training(tmp_path):
    # Trained on 512 x 512 crops of 520 x 520 slices, TransCT could not evaluate them whole.
    scans = [dataclasses.replace(s, low=np.pad(s.low, ((0, 0), (0, 8), (0, 8))),
                                 full=np.pad(s.full, ((0, 0), (0, 8), (0, 8))))
             for s in phantom_scans(size=512, slices=1)]
    cfg = cnn10_cfg(model="transct", model_config={}, patch_size=512, batch_size=4)
    with pytest.raises(ValueError, match=r"the held-out slices of patient abdomen-1 \(evaluated "
                       r"whole\) of 520x520 px: transct takes 512x512 images only"):
        job.prepare(cfg, str(tmp_path / "run"), scans)


def test_metrics_log_of_a_resumed_run_keeps_what_stays_and_every_line_parses(tmp_path, caplog):
    from ldct_jax.jobs.metrics_log import MetricsLog
    lines = ['{"step": 1, "split": "train", "loss": 1.0}',
             '{"step": 2, "spl{"step": 2, "split": "train", "loss": 0.5}',  # a kill, appended to
             '{"event": "resumed", "step": 1}',
             '{"step": 3, "split": "train", "loss": 0.4}',                # replayed after step 2
             '{"step": 2, "split": "eval", "rmse": 9.0}']                 # no newline: a kill
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    with caplog.at_level("WARNING"), MetricsLog(str(tmp_path), True, resumed_at=2) as log:
        log.write(3, {"loss": 0.3})
    assert "line 2: not JSON" in caplog.text
    assert [(r.get("split", r.get("event")), r["step"]) for r in _records(str(tmp_path))] == [
        ("train", 1), ("resumed", 1), ("eval", 2), ("train", 3)]


def _garble(step_dir):
    """Truncates every array data file of an orbax checkpoint to half its size."""
    hit = 0
    for root, _, names in os.walk(os.path.join(step_dir, "state")):
        for f in names:
            path = os.path.join(root, f)
            if os.sep + "d" in root and os.path.getsize(path) > 64:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                hit += 1
    assert hit


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    scans = phantom_scans()
    cfg = cnn10_cfg(num_steps=6, checkpoint__every_steps=2)
    straight = job.run(cfg, str(tmp_path / "straight"), scans=scans)

    wd = str(tmp_path / "run")
    with sigterm_at_checkpoint(2):  # after step 4
        job.run(cfg, wd, scans=scans)
    ckpt_dir = os.path.join(wd, "checkpoints")
    assert Checkpointer(ckpt_dir).all_steps() == [2, 4]
    _garble(os.path.join(ckpt_dir, "4"))
    with caplog.at_level("WARNING"):
        resumed = job.run(cfg, wd, scans=scans)
    assert "checkpoint at step 4 is corrupt or unreadable" in caplog.text
    assert "using the previous checkpoint" in caplog.text
    events = [(e["event"], e["step"]) for e in _events(wd)]
    assert events == [("stopped", 4), ("checkpoint_corrupt", 4), ("resumed", 2)]
    assert os.listdir(ckpt_dir + "_corrupt")[0].startswith("4-")
    # Resuming from step 2 replays steps 3..6 exactly.
    assert_trees_close(jax.device_get(straight["state"]), jax.device_get(resumed["state"]),
                        tol=1e-6)


@pytest.mark.slow
def test_restart_with_changed_settings_is_refused_and_changes_nothing(tmp_path):
    scans = phantom_scans()
    wd = str(tmp_path / "run")
    job.run(cnn10_cfg(), wd, scans=scans)
    before = files_of(wd)
    with pytest.raises(job.ConfigChangedError, match=(
            r"holds a training run with other settings .*config\.json\); changed: "
            r"config\.model_config\.features: \[8, 4\] -> \[16, 8\]\. A restart continues "
            r"that run.*use a new --workdir")):
        job.run(cnn10_cfg(model_config__features=(16, 8)), wd, scans=scans)
    # The cosine schedule depends on num_steps: not even raising it is accepted.
    with pytest.raises(job.ConfigChangedError, match=r"changed: config\.num_steps: 6 -> 8\."):
        job.run(cnn10_cfg(num_steps=8), wd, scans=scans)
    assert files_of(wd) == before  # nothing moved, rewritten or lost
    # What a restart may change: how the run is watched.
    again = job.run(cnn10_cfg(log_every_steps=3, eval__every_steps=2, checkpoint__keep=2), wd,
                    scans=scans)
    assert again["step"] == 6 and again["stopped"] is None


@pytest.mark.slow
def test_checkpoints_of_other_settings_are_refused_not_quarantined(tmp_path):
    """Without config.json (deleted), the checkpoints still tell: another tree of shapes is a
    config error, not corruption; nothing is moved."""
    scans = phantom_scans()
    wd = str(tmp_path / "run")
    job.run(cnn10_cfg(), wd, scans=scans)
    os.remove(os.path.join(wd, "config.json"))
    before = {k: v for k, v in files_of(wd).items() if not k.startswith("data")}
    with pytest.raises(job.ConfigChangedError, match=r"checkpoints/6: the checkpoint holds a "
                       r"train state of another structure than this run's \(.*conv1/kernel: "
                       r"saved float32\(9, 9, 1, 8\), expected float32\(9, 9, 1, 16\).*new "
                       r"--workdir"):
        job.run(cnn10_cfg(model_config__features=(16, 8)), wd, scans=scans)
    assert {k: v for k, v in files_of(wd).items() if not k.startswith("data")} == before
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))
    # Another optimiser state (a cosine schedule counts its steps, a constant one does not).
    with pytest.raises(job.ConfigChangedError, match=r"opt_state/1/count: unexpected"):
        job.run(cnn10_cfg(optimizer__schedule="constant"), wd, scans=scans)
    assert not os.path.exists(os.path.join(wd, "checkpoints_corrupt"))


def test_a_critic_cosine_schedule_spans_every_critic_update():
    # 10 steps of 4 critic updates: the half cosine from lr to 5 % of it spans 40 updates. With
    # b1 = b2 = 0, Adam's update of a constant gradient is the learning rate itself.
    opt = ml_collections.ConfigDict(dict(lr=1.0, b1=0.0, b2=0.0, schedule="cosine"))
    adam = trainers.critic_adam(opt, num_steps=10, n_critic=4)
    params = jnp.zeros(())
    state, steps = adam.init(params), []
    for _ in range(40):
        update, state = adam.update(jnp.ones(()), state, params)
        steps.append(-float(update))
    k = np.arange(40)
    np.testing.assert_allclose(steps, 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * k / 40)),
                               rtol=1e-5)


@pytest.mark.slow
def test_a_run_with_constant_schedules_may_be_extended(tmp_path):
    scans = phantom_scans()
    straight = job.run(cnn10_cfg(num_steps=6, optimizer__schedule="constant"),
                       str(tmp_path / "straight"), scans=scans)
    wd = str(tmp_path / "run")
    job.run(cnn10_cfg(num_steps=4, optimizer__schedule="constant"), wd, scans=scans)
    # As a run started before optimizer.schedule and the full synthetic block existed would have
    # written its config.json: those fields, at the values such runs used, are no change.
    path = os.path.join(wd, "config.json")
    record = json.load(open(path))
    del record["optimizer"]["schedule"], record["data"]["synthetic"]["num_angles"]
    json.dump(record, open(path, "w"))
    with pytest.raises(job.ConfigChangedError, match=r"config\.optimizer\.schedule: None -> "
                       r"'cosine'"):
        job.run(cnn10_cfg(num_steps=4, optimizer__schedule="cosine"), wd, scans=scans)
    extended = job.run(cnn10_cfg(num_steps=6, optimizer__schedule="constant"), wd, scans=scans)
    assert extended["step"] == 6
    assert_trees_close(jax.device_get(straight["state"]), jax.device_get(extended["state"]),
                        tol=1e-6)
    with pytest.raises(job.ConfigChangedError, match=r"config\.num_steps: 6 -> 5"):
        job.run(cnn10_cfg(num_steps=5, optimizer__schedule="constant"), wd, scans=scans)


def test_a_stopped_run_exits_143_or_130():
    assert jobs.exit_code({"step": 3, "stopped": "SIGTERM"}) == 143
    assert jobs.exit_code({"step": 3, "stopped": "SIGINT"}) == 130
    assert jobs.exit_code({"step": 6, "stopped": None}) == 0 == jobs.exit_code(None)


def test_outputs_in_workdir(tmp_path, capsys):
    wd = str(tmp_path / "run")
    result = job.run(cnn10_cfg(), wd, scans=phantom_scans())
    names = set(os.listdir(wd))
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "eval.json",
            "eval.png", "model"} <= names
    with open(os.path.join(wd, "eval.json")) as f:
        record = json.load(f)
    ev = record["eval"]
    for who in ("network", "low_dose"):
        assert ev[who] == pytest.approx(result["eval"][who])
    assert ev["rmse_reduction"] == pytest.approx(
        1 - ev["network"]["rmse_hu"] / ev["low_dose"]["rmse_hu"])
    # The low-dose baseline is the added noise: its RMSE is close to the noise sigma (60 HU).
    assert 50 < ev["low_dose"]["rmse_hu"] < 70
    assert set(ev["per_anatomy"]) == {"abdomen", "head"} and ev["num_slices"] == 2
    out = capsys.readouterr().out
    assert "RMSE reduction" in out and "eval.json" in out
    train = [r for r in _records(wd) if r.get("split") == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    tb = _read_tensorboard(os.path.join(wd, "tensorboard"))
    assert tb["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    assert tb["eval/network/rmse_hu"][0][1] == pytest.approx(ev["network"]["rmse_hu"], rel=1e-6)


def _read_tensorboard(logdir):
    """Scalars of TFRecord event files, read with the framing spelled out in TensorFlow's
    record_writer (uint64 length, uint32 crc, data, uint32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2
    scalars = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            raw = f.read()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


# ---------------------------------------------------------------------------------------------
# Bad config values fail at start, naming the key.


def test_unknown_key_is_rejected_by_the_locked_config():
    from absl import flags
    from ml_collections import config_flags
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(Exception, match="num_stepz"):
        fv(["main", f"--config={root}/configs/cnn10.py", "--config.num_stepz=5"])
    with pytest.raises(AttributeError, match="batchsize"):
        cnn10_config.get_config().batchsize = 4
    with pytest.raises(ValueError, match="unknown preset 'papr'"):
        wgan_config.get_config("papr")


@pytest.mark.parametrize("cfg, message", [
    (lambda: cnn10_cfg(patch_size=600), r"config.patch_size=600 is larger than the synthetic "
                                        r"images \(config.data.synthetic.size=512\)"),
    (lambda: cnn10_cfg(batch_size=6), r"config.batch_size=6: batch size 6 is not divisible by "
                                      r"the number of devices \(4\)"),
    (lambda: cnn10_cfg(data__source="mayo"), r"config.data.root is empty.*'mayo'"),
    (lambda: cnn10_cfg(data__source="mayo", data__root="/nonexistent/mayo"),
     r"config.data.root='/nonexistent/mayo' is not a directory"),
    (lambda: cnn10_cfg(data__source="tcia"), r"config.data.source='tcia'"),
    (lambda: cnn10_cfg(data__source="dicom", data__full_dir="/x"),
     r"config.data.low_dir is empty, but config.data.source='dicom' with a series pair needs "
     r"both"),
    (lambda: cnn10_cfg(num_steps=0), r"config.num_steps=0 must be > 0"),
    (lambda: cnn10_cfg(optimizer__b1=1.0), r"config.optimizer.b1=1.0 must be in \[0, 1\)"),
    (lambda: wgan_cfg(patch_size=24), r"config.patch_size=24: .*too small"),
    (lambda: wgan_cfg(vgg__tap="conv6_1"), r"config.vgg.tap='conv6_1'"),
    (lambda: wgan_cfg(critic_optimizer__schedule="step"),
     r"config.critic_optimizer.schedule='step'"),
    (lambda: wgan_cfg(wgan__mse_weight=-1.0), r"config.wgan.mse_weight=-1.0 must be >= 0"),
    (lambda: cnn10_cfg(model="redcnn", model_config={}, patch_size=16),
     r"config.patch_size=16: patches of 16x16 px are smaller than redcnn takes \(21x21 px"),
    (lambda: cnn10_cfg(model="transct", model_config={}, patch_size=256),
     r"config.patch_size=256: transct takes 512 x 512 images only \(whole slices\); set "
     r"config.patch_size=512"),
    (lambda: cnn10_cfg(model="transct", model_config={}, patch_size=0),
     r"config.patch_size=0: transct takes 512 x 512 images only"),
    (lambda: cnn10_cfg(model="bilateral", model_config={}),
     r"config.optimizer.lr_range is missing: bilateral trains its range sigmas"),
    (lambda: _supervised_cfg("bilateral", optimizer__lr_range=0.0),
     r"config.optimizer.lr_range=0.0 must be > 0"),
    (lambda: cnn10_cfg(data__held_out_patients=-1),
     r"config.data.held_out_patients=-1; expected >= 0"),
    (lambda: cnn10_cfg(data__held_out_patients=2),
     r"config.data.held_out_patients=2 leaves no patient to train on: the synthetic set has 2 "
     r"per anatomy"),
    (lambda: cnn10_cfg(data__source="dicom", data__full_dir="/", data__low_dir="/tmp"),
     r"config.data.held_out_patients=1, but one series pair .* is one patient"),
    (lambda: cnn10_cfg(data__anatomies=("chets",)), r"config.data.anatomies=\('chets',\)"),
    (lambda: cnn10_cfg(optimizer__lr=float("nan")),
     r"config.optimizer.lr=nan must be > 0 and finite"),
    (lambda: cnn10_cfg(seed=-1), r"config.seed=-1 must be >= 0 and finite"),
    (lambda: cnn10_cfg(model_config__features=(0, 32)),
     r"config.model_config.features=0 must be > 0"),
    (lambda: _supervised_cfg("bilateral", model_config={"max_radius": 0}),
     r"config.model_config.max_radius=0 must be > 0"),
], ids=["patch", "batch", "no-root", "missing-root", "source", "dicom-pair", "steps", "beta",
        "critic", "tap", "schedule", "mse", "redcnn-patch", "transct-patch", "transct-patch-0",
        "bilateral-no-lr-range", "bilateral-lr-range", "held-out-negative", "held-out-all",
        "held-out-one-pair", "anatomy-typo", "lr-nan", "seed", "features", "radius"])
def test_bad_config_fails_at_start(cfg, message, tmp_path):
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        job.run(cfg(), str(wd))
    # Nothing was built or written before the check.
    assert not os.path.exists(wd / "data") and not os.path.exists(wd / "checkpoints")


def test_patch_larger_than_given_scans(tmp_path):
    with pytest.raises(ValueError, match=r"config.patch_size=48 is larger than the images of "
                                         r"patient abdomen-0 \(32x32\)"):
        job.run(cnn10_cfg(patch_size=48), str(tmp_path), scans=phantom_scans(size=32))


def test_paper_preset_has_the_published_settings(tmp_path):
    """Yang et al. 2018: patches 64, batch 128, Adam 1e-5 with betas 0.5/0.9, 4 critic steps,
    perceptual weight 0.1, gradient penalty 10, VGG19 conv5_4."""
    c = wgan_config.get_config("paper")
    assert (c.patch_size, c.batch_size, c.wgan.n_critic) == (64, 128, 4)
    for opt in (c.optimizer, c.critic_optimizer):
        assert (opt.lr, opt.b1, opt.b2, opt.schedule) == (1e-5, 0.5, 0.9, "constant")
    assert (c.wgan.perceptual_weight, c.wgan.gp_weight, c.wgan.mse_weight) == (0.1, 10.0, 0.0)
    assert (c.vgg.arch, c.vgg.tap, c.data.source) == ("vgg19", "conv5_4", "mayo")
    for module in (cnn10_config, wgan_config):
        for preset in ("paper", "ldctbench"):
            c = module.get_config(preset)
            c.data.root = str(tmp_path)
            trainers.check_config(c)
            assert c.optimizer.schedule == "constant"


# ldct-benchmark's configs/<method>.yaml (not in its wheel): lr, max_iterations, mbs, patchsize
# (0: whole slices), seed.
LDCTBENCH_YAML = {
    "cnn10": (0.00015837006124497214, 86188, 68, 92, 1341),
    "redcnn": (9.583417460320728e-05, 92994, 73, 128, 1339),
    "resnet": (0.0001, 20000, 64, 64, 1332),
    "qae": (2.8427860979114494e-05, 94025, 125, 36, 1371),
    "bilateral": (4.001423666414552e-05, 74981, 2, 121, 1341),
    "transct": (2.3978185694166783e-05, 89378, 16, 0, 1341),
}
# configs/bilateral.yaml's lr_r, sigma_xyz_init and sigma_r_init.
BILATERAL_YAML = dict(lr_r=0.003555342304006777, sigma_xyz_init=0.486467020419764,
                      sigma_r_init=0.9526560444133276)


@pytest.mark.parametrize("method", sorted(LDCTBENCH_YAML))
def test_ldctbench_presets_are_the_package_settings(method, tmp_path):
    c = supervised_config.get_config(f"{method},ldctbench")
    lr, steps, batch, patch, seed = LDCTBENCH_YAML[method]
    assert (c.optimizer.lr, c.num_steps, c.batch_size, c.patch_size, c.seed) == (
        lr, steps, batch, patch or 512, seed)
    if method == "bilateral":
        assert c.optimizer.lr_range == BILATERAL_YAML["lr_r"]
    else:
        assert "lr_range" not in c.optimizer
    paper = supervised_config.get_config(f"{method},paper")
    assert paper.patch_size == (512 if method == "transct" else 64)
    assert paper.optimizer.get("lr_range", 1e-5) == paper.optimizer.lr == 1e-5
    paper.data.root = str(tmp_path)
    trainers.check_config(paper)
    assert (c.optimizer.b1, c.optimizer.b2, c.optimizer.schedule) == (0.9, 0.999, "constant")
    # The architecture at ldct-benchmark's defaults (e.g. RED-CNN's 96 channels).
    assert dict(c.model_config) == {} and c.data.source == "mayo" and c.model == method
    c.data.root = str(tmp_path)
    trainers.check_config(c)
    default = supervised_config.get_config(method)
    assert default.data.source == "synthetic" and default.optimizer.schedule == "cosine"
    with pytest.raises(AttributeError):
        default.not_a_field = 1
    assert cnn10_config.get_config().to_dict() == supervised_config.get_config("cnn10").to_dict()


@pytest.mark.parametrize("method, model_config", [
    ("redcnn", dict(features=4)), ("resnet", dict(features=8, blocks=2)), ("qae", dict())])
def test_every_mse_method_trains_and_saves_its_model(method, model_config, tmp_path):
    c = supervised_config.get_config(method)
    c.model_config = model_config
    c.num_steps, c.batch_size, c.patch_size = 4, 4, 24
    c.optimizer.lr = 1e-3
    c.checkpoint.every_steps, c.log_every_steps = 2, 1
    c.eval.slices_per_patient = 1
    c.progress_bar = False
    wd = str(tmp_path / "run")
    job.run(c, wd, scans=phantom_scans())
    trained = models.load(os.path.join(wd, "model"))
    assert trained.spec == models.spec(method, **model_config)
    losses = [r["loss"] for r in _records(wd) if r.get("split") == "train"]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    if not models.architecture(method).flax_default_init:
        # The module's own initialisers: Q-AE's quadratic weights W_g, W_b at 0 (as
        # ldct-benchmark's), BatchNorm's scale at 1 and statistics at 0 and 1.
        init = trainers._init_params(trained.spec.module, jax.random.key(0), 32, False)
        reference = trained.spec.module.init(
            jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))["params"]
        assert_trees_close(init, reference, tol=0.0)
    if method == "resnet":  # the running statistics are fixed: training leaves them
        assert np.all(np.asarray(trained.params["block0"]["bn1"]["mean"]) == 0.0)
        assert np.all(np.asarray(trained.params["block0"]["bn1"]["var"]) == 1.0)


def test_every_mse_method_trains_into_the_model_the_sweeps_read():
    """configs/supervised.py has a preset for each method the trainer trains with the MSE, and
    the sweeps' default checkpoint of each is where that preset's command writes its model."""
    from ldct_jax import jobs
    from ldct_jax.jobs import inputs
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert set(supervised_config.METHODS) == set(trainers.SUPERVISED)
    for method in trainers.SUPERVISED:
        path, command = inputs.TRAINED[method]
        arg = command.split("--config=")[1].split()[0]
        assert configs_lib.load(os.path.join(root, arg)).model == method
        assert os.path.normpath(path) == os.path.join(jobs.default_workdir(arg), "model")


def test_bilateral_range_sigmas_step_with_lr_range():
    """Adam with two learning rates, as ldct-benchmark's bilateral trainer sets up PyTorch's:
    three steps on known gradients against Adam's formula (bias-corrected moments, eps 1e-8),
    lr for the spatial sigmas, lr_range for the range sigmas (`color_sigma`).

    optax computes the bias corrections in float32, where 1 - 0.999 keeps 4 digits: its steps
    are within 1e-5 of the formula's, relative to lr, and the params are float32."""
    c = _supervised_cfg("bilateral", optimizer__lr=1e-3, optimizer__lr_range=0.1,
                        optimizer__schedule="constant")
    spec = models.spec("bilateral")
    params = trainers._init_params(spec.module, jax.random.key(0), 32, False)
    optimizer = trainers._optimizer(c)
    opt_state = optimizer.init(params)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    assert sum("color_sigma" in n for n in names) == 3 and len(names) == 12
    lr = np.array([0.1 if "color_sigma" in n else 1e-3 for n in names])
    rng = np.random.default_rng(0)
    m = v = np.zeros(len(names))
    x = np.array(jax.tree.leaves(params), np.float64)
    for t in (1, 2, 3):
        g = rng.choice([-1.0, 1.0], len(names)) * 10.0 ** rng.uniform(-2, 1, len(names))
        grads = jax.tree.unflatten(jax.tree.structure(params), list(g.astype(np.float32)))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        step = lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        if t == 1:  # Adam's first step is lr * sign(g)
            np.testing.assert_allclose(np.abs(step), lr, rtol=1e-6)
        x = x - step
        error = np.abs(np.array(jax.tree.leaves(params), np.float64) - x)
        assert np.all(error <= 1e-5 * t * lr + 2.0 ** -23 * np.abs(x)), (error / lr).max()


def test_ldctbench_bilateral_preset_starts_and_steps_as_ldct_benchmark():
    """The real package's bilateral Model, given the yaml's sigma_*_init as ldct-benchmark's
    training passes them, only warns and starts from 0.5 and 0.01: so does the preset. Its
    optimizer is the package's Trainer's: PyTorch's Adam with the params whose name holds
    "color" in a group of lr lr_r; two steps on the same gradients agree (to 1e-5 of lr: optax
    computes Adam's bias corrections in float32, PyTorch in float64)."""
    import argparse
    import warnings
    torch = pytest.importorskip("torch")
    from tests import optional
    optional.require("ldctbench", "pip install --no-deps ldct-benchmark")
    from benchmarks import ldctbench_reference
    network = ldctbench_reference.network("bilateral")
    args = argparse.Namespace(cuda=False, **{k: v for k, v in BILATERAL_YAML.items()
                                             if k.endswith("_init")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = network.Model(args)
    assert any("sigma_r_init=0.95" in str(w.message) for w in caught)
    reference = {k: float(v) for k, v in model.state_dict().items()}

    c = supervised_config.get_config("bilateral,ldctbench")
    spec = models.spec(c.model, **c.model_config)
    params = trainers._init_params(spec.module, jax.random.key(0), 32, False)

    def by_name(tree):  # 'filters.0.sigma_x' as PyTorch names the params
        return {f"filters.{int(p[0].key[-1]) - 1}.{p[1].key}": float(x)
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    assert by_name(params) == pytest.approx(reference, rel=1e-7)
    assert reference["filters.0.sigma_x"] == pytest.approx(0.5)
    assert reference["filters.2.color_sigma"] == pytest.approx(0.01)

    torch_opt = torch.optim.Adam([
        {"params": [p for n, p in model.named_parameters() if "color" not in n]},
        {"params": [p for n, p in model.named_parameters() if "color" in n],
         "lr": c.optimizer.lr_range}], lr=c.optimizer.lr, betas=(c.optimizer.b1, c.optimizer.b2))
    optimizer = trainers._optimizer(c)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(1)
    for _ in range(2):
        g = {n: float(rng.normal()) for n in reference}
        for n, p in model.named_parameters():
            p.grad = torch.tensor(g[n])
        torch_opt.step()
        grads = jax.tree_util.tree_map_with_path(
            lambda p, _: np.float32(g[f"filters.{int(p[0].key[-1]) - 1}.{p[1].key}"]), params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    moved = {k: float(v) for k, v in model.state_dict().items()}
    ours = by_name(params)
    for name, value in moved.items():
        lr = c.optimizer.lr_range if "color" in name else c.optimizer.lr
        assert abs(ours[name] - value) <= 2e-5 * lr + 2.0 ** -23 * abs(value), name
    assert moved["filters.0.color_sigma"] != pytest.approx(reference["filters.0.color_sigma"])


@pytest.mark.parametrize("method, size, batch, steps, devices", [
    ("bilateral", 32, 4, 6, 0),
    pytest.param("transct", 512, 1, 1, 1, marks=pytest.mark.slow)])
def test_bilateral_and_transct_train_and_improve(method, size, batch, steps, devices, tmp_path):
    """A few steps of the default preset (transct: one step on whole 512 x 512 slices, on one
    device) lower the held-out error below that of the initial params (numpy RMSE in HU)."""
    c = supervised_config.get_config(method)
    c.num_steps, c.batch_size, c.num_devices = steps, batch, devices
    if method == "bilateral":
        c.patch_size = 24
    c.checkpoint.every_steps, c.checkpoint.keep, c.log_every_steps = steps, 1, 1
    c.eval.slices_per_patient = 1
    c.progress_bar = False
    wd = str(tmp_path / "run")
    scans = phantom_scans(size=size, slices=2)
    job.run(c, wd, scans=scans)
    losses = [r["loss"] for r in _records(wd) if r.get("split") == "train"]
    assert len(losses) == steps and np.all(np.isfinite(losses))
    trained = models.load(os.path.join(wd, "model"))
    assert trained.spec == models.spec(method)
    spec = trained.spec
    arch = models.architecture(method)
    init = trainers._init_params(spec.module, trainers._keys(c.seed)["model"], arch.init_size,
                                 arch.flax_default_init)
    _, held_out = data_job.split_scans(c.data, scans)
    low = np.concatenate([s.low for s in held_out])
    full = np.concatenate([s.full for s in held_out])

    def rmse(params):
        out = np.asarray(models.denoise(spec, params, low, batch_size=1), np.float64)
        return np.sqrt(np.mean((out - full) ** 2))

    before, after = rmse(init), rmse(trained.params)
    assert after < before, (before, after)
    if method == "bilateral":  # from near identity to smoothing the 60 HU noise
        assert after < np.sqrt(np.mean((low - full) ** 2))

