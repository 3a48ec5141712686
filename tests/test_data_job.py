"""The data job: config presets, build into the workdir, preview figure and summary."""

import os
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

from configs import data as data_config
from ldct_jax import jobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(config):
    config.data.synthetic.update(size=32, slices=2, num_angles=24)
    return config


def test_presets():
    default = data_config.get_config()
    assert default.job == "data" and default.data.source == "synthetic"
    assert dict(default.data.synthetic)["size"] == 512
    small = data_config.get_config("small")
    assert small.data.synthetic.size == 128 and small.data.synthetic.patients_per_anatomy == 1
    assert data_config.get_config("mayo").data.source == "mayo"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        data_config.get_config("huge")


@pytest.mark.parametrize("arg,workdir", [
    ("configs/wgan.py", "runs/wgan"), ("configs/wgan.py:paper", "runs/wgan_paper"),
    ("configs/invariance.py:cnn10,paper", "runs/invariance_cnn10_paper"),
    ("/abs/configs/attack.py:wgan_vgg", "runs/attack_wgan_vgg")])
def test_default_workdir(arg, workdir):
    assert jobs.default_workdir(arg) == os.path.join(*workdir.split("/"))


@pytest.mark.slow
def test_job_builds_into_workdir_and_writes_preview(tmp_path):
    config = _tiny(data_config.get_config("small"))
    jobs.run(config, str(tmp_path))
    assert os.path.isfile(tmp_path / "data" / "manifest.json")
    image = matplotlib.image.imread(str(tmp_path / "preview.png"))
    assert image.ndim == 3 and image.shape[0] > 600 and image.shape[1] > 600   # 3 x 3 panels
    assert image[..., :3].std() > 0.1                                          # not blank
    summary = (tmp_path / "data_summary.txt").read_text()
    for patient in ("synthetic-chest-000", "synthetic-abdomen-000", "synthetic-head-000"):
        assert patient in summary
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


@pytest.mark.slow
def test_the_console_command_runs_the_data_job_from_any_directory(tmp_path):
    """`ldct-jax` (installed by `pip install -e .`) with the README's relative config path, run
    outside the repository: the path is found in the repository."""
    command = shutil.which("ldct-jax")
    assert command, "ldct-jax is not on PATH: pip install -e . installs it"
    cmd = [command, "--config=configs/data.py:small", f"--workdir={tmp_path / 'run'}",
           "--config.data.synthetic.size=32", "--config.data.synthetic.slices=1",
           "--config.data.anatomies=('head',)"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(tmp_path / "run" / "preview.png")
    assert "synthetic-head-000" in out.stdout


def test_unknown_config_key_is_one_line_naming_the_nearest_field(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "launch", "main.py"),
           "--config=" + os.path.join(ROOT, "configs", "cnn10.py"), "--config.num_stepz=5",
           "--config.optimizer.lrr=1e-3", f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: --config.num_stepz: the config has no field 'num_stepz'; did you mean "
        "--config.num_steps?",
        "       --config.optimizer.lrr: the config has no field 'optimizer.lrr'; did you mean "
        "--config.optimizer.lr?"]
    assert os.listdir(tmp_path) == []


def test_main_exits_143_or_130_when_a_signal_stopped_the_job(monkeypatch):
    from absl import flags

    from ldct_jax.jobs import cli
    try:
        flags.FLAGS(["main", "--config=" + os.path.join(ROOT, "configs", "cnn10.py")])
        for stopped, status in (("SIGTERM", 143), ("SIGINT", 130), (None, 0)):
            monkeypatch.setattr(cli.jobs, "run", lambda config, workdir, s=stopped: {
                "step": 3, "stopped": s})
            assert cli._main(["main"]) == status
    finally:
        flags.FLAGS.unparse_flags()
