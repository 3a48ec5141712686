"""The training job: `run(config, workdir)`, as `python launch/main.py --config=configs/wgan.py`.

Resumable: a run started again with the same workdir continues from the newest readable
checkpoint with the same data order and RNG. SIGTERM/SIGINT save a checkpoint and return.
Writes to the workdir: config.json, metrics.jsonl, tensorboard/, checkpoints/, eval.json,
eval.png and, at the end, the trained denoiser in model/ (ldct_jax.models.save).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ldct_jax import ct, files, models, parallel
from ldct_jax.data import sampling
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import configs, report, trainers
from ldct_jax.jobs import data as data_job
from ldct_jax.jobs.metrics_log import MetricsLog
from ldct_jax.train import evaluate
from ldct_jax.train.checkpoint import CheckpointMismatchError, Checkpointer, StopSignals


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss; the newest checkpoint is the last good state."""


class ConfigChangedError(ValueError):
    """The workdir holds a training run with settings a restart may not change."""


# Fields a restart may change: they change how a run is watched and where it runs, not what it
# computes. num_steps may also grow when every learning-rate schedule is constant (a cosine
# schedule depends on it).
RESTART_FREE = ("progress_bar", "log_every_steps", "eval.every_steps", "eval.batch_size",
                "checkpoint.every_steps", "checkpoint.keep", "distributed", "num_devices")
CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"  # the orbax step directories, under the workdir

# Fields added to the training configs after runs were started without them, with the value
# those runs used: a restart of such a run with that value changes nothing.
BEFORE_ADDED = {
    "optimizer.schedule": "constant",
    "critic_optimizer.schedule": "constant",
    "wgan.mse_weight": 0.0,
    "data.synthetic.anatomies": ("chest", "abdomen", "head"),
    "data.synthetic.num_angles": 360,
    "data.synthetic.spacing_mm": 5.0,
    "data.synthetic.dose_fractions": {"chest": 0.1, "abdomen": 0.25, "head": 0.25},
}


def _has(record: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(record, dict) or part not in record:
            return False
        record = record[part]
    return True


def check_restart(config, workdir: str, free: Sequence[str] = RESTART_FREE) -> None:
    """Refuses to continue a run in `workdir` whose config differs in what the run computes.

    Args:
      config: the run's config.
      workdir: where it runs.
      free: the fields (and groups of fields: 'report' frees 'report.figures') a restart may
        change.

    Raises:
      ConfigChangedError: naming every field that differs, before anything is read or written.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    if not saved_steps(workdir):  # a run that failed before its first checkpoint: no run
        logging.info("%s holds no checkpoint: its recorded settings are replaced", workdir)
        return
    old = files.read_json(path)
    changes = files.diff(old, files.plain(config.to_dict()))
    constant = all(config[k].get("schedule", "constant") == "constant"
                   for k in ("optimizer", "critic_optimizer") if k in config)
    refused = [c for c in changes if not any(c.key == f or c.key.startswith(f + ".")
                                             for f in free) and not (
        c.key == "num_steps" and constant and isinstance(c.old, int) and c.new >= c.old)
        and not (not _has(old, c.key) and files.plain(BEFORE_ADDED.get(c.key)) == c.new)]
    if refused:
        raise ConfigChangedError(
            f"{workdir} holds a training run with other settings ({path}); changed: "
            f"{'; '.join(f'config.{c}' for c in refused)}. A restart continues that run, so "
            "these must stay as they were: use a new --workdir for the new settings (or delete "
            f"this one to start over). A restart may change {', '.join(free)}, and raise "
            "num_steps when every learning-rate schedule is 'constant'.")


def saved_steps(workdir: str) -> list[str]:
    """The step directories in workdir/checkpoints (orbax names them by their step)."""
    directory = os.path.join(workdir, CHECKPOINTS)
    return [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []


def _record_config(config, workdir: str) -> None:
    """Writes config.json (after `check_restart`); logs the fields a restart changed."""
    path = os.path.join(workdir, CONFIG_FILE)
    current = files.plain(config.to_dict())
    if os.path.exists(path):
        changed = files.diff(files.read_json(path), current)
        if changed:
            logging.info("restart with config.%s", "; config.".join(map(str, changed)))
    files.write_json(path, current)


def _check_finite(metrics: dict[str, float], step: int, ckpt: Checkpointer) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"non-finite training metrics at step {step}: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(bad.items()))}. "
            f"Training stopped. {_last_good(ckpt)}")


def _last_good(ckpt: Checkpointer) -> str:
    """Where a run stopped by a non-finite value stands, and what to do."""
    last = ckpt.latest_step()
    if last is None:
        return ("No checkpoint had been saved yet. Lower the learning rate "
                "(config.optimizer.lr) or check the data.")
    return (f"The last good checkpoint (step {last} in {ckpt.directory}) is kept; nothing was "
            "saved after it. Lower the learning rate (config.optimizer.lr) or check the data, "
            "in a new --workdir: a restart continues the saved run, with its settings.")


def _save(ckpt: Checkpointer, state) -> None:
    try:
        ckpt.save(state)
    except FloatingPointError as e:
        raise NonFiniteLossError(f"{e}. Training stopped. {_last_good(ckpt)}") from e


def run(config, workdir: str, *, scans: Optional[Sequence[Scan]] = None) -> dict[str, Any]:
    """Trains `config.model` in `workdir` (resuming if it holds checkpoints) and evaluates it.

    Args:
      config: a config from configs/cnn10.py or configs/wgan.py.
      workdir: the run's directory.
      scans: train on these (split into training and held-out patients as config.data says)
        instead of loading config.data, e.g. data already in memory in a notebook.

    Returns:
      `{'step', 'stopped' (a signal name or None), 'eval' (summarise's result or None),
      'state' (the final TrainState), 'wall_time_s', 'steps_per_s'}`.

    Raises:
      NonFiniteLossError: a step gave a non-finite loss or gradient; the newest checkpoint in
        `workdir/checkpoints` is the last good state.
      ValueError: a bad config value (the message names the key).
    """
    t_start = time.time()
    parallel.maybe_initialize_distributed(config.distributed)
    trainers.check_config(config)
    check_restart(config, workdir)
    vgg = trainers.perceptual_vgg(config)
    mesh, main, scans, train_scans, held_out = prepare(config, workdir, scans)
    logging.info("data: %d training and %d held-out patients (%s)", len(train_scans),
                 len(held_out), config.data.source)
    trainer = trainers.build(config, mesh, train_scans, vgg)
    for what, note in trainer.notes.items():
        logging.warning("%s: %s", what, note)

    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=config.checkpoint.keep)
    try:
        return _train(config, workdir, mesh, trainer, held_out, ckpt, t_start, main)
    finally:
        ckpt.close()


def prepare(config, workdir: str, scans: Optional[Sequence[Scan]] = None) -> tuple:
    """What a training run needs before its trainer: the mesh (the batch checked against it),
    whether this is process 0, the workdir created, the data (`scans`, or config.data loaded)
    and its split into training and held-out patients (the patches checked against it).

    Returns:
      `(mesh, main, scans, train_scans, held_out)`.
    """
    mesh = parallel.make_mesh(config.num_devices or None)
    with configs.naming("batch_size", config.batch_size):
        parallel.check_batch_divisible(config.batch_size, mesh)
    os.makedirs(workdir, exist_ok=True)
    if scans is None:
        scans = data_job.load_scans(config.data, workdir)
    train_scans, held_out = data_job.split_scans(config.data, scans)
    trainers.check_patch_fits(config, train_scans)
    for s in held_out:  # evaluated on whole slices, after the last step
        models.check_input_size(config.model, s.full.shape,
                                f"the held-out slices of patient {s.patient} (evaluated whole)")
    return mesh, jax.process_index() == 0, scans, train_scans, held_out


def _train(config, workdir, mesh, trainer, held_out, ckpt, t_start, main):
    """Resume, the step loop, checkpoints, the final evaluation: `run` after the set-up."""
    state, start = resume(config, workdir, trainer, ckpt, main)
    evals = evaluate.eval_set(held_out, config.eval.slices_per_patient, config.seed) \
        if held_out else None

    def run_eval(params) -> Optional[tuple[dict, np.ndarray]]:
        if evals is None:
            logging.warning("no held-out patients (config.data.held_out_patients=0): "
                            "evaluation skipped")
            return None
        out = models.denoise(trainer.denoiser.spec, params, evals.low, mesh=mesh,
                             batch_size=config.eval.batch_size)
        return evaluate.summarise(evals, out), out

    def periodic_eval(step: int, state, log: MetricsLog) -> None:
        if config.eval.every_steps and step % config.eval.every_steps == 0 \
                and step < config.num_steps:
            result = run_eval(state.params)
            if result is not None:
                log.write(step, evaluate.flat_metrics(result[0]), split="eval")

    with MetricsLog(workdir, enabled=main, resumed_at=start,
                    final_step=config.num_steps) as log:
        done = step_loop(config, mesh, trainer, ckpt, log, state, start, main,
                         config.checkpoint.every_steps, periodic_eval)
        state, step = done.state, done.step
        if done.stopped:
            return {"step": step, "stopped": done.stopped, "eval": None, "state": state,
                    "wall_time_s": time.time() - t_start, "steps_per_s": None}
        result = run_eval(state.params)
        summary = output = None
        if result is not None:
            summary, output = result
            log.write(step, evaluate.flat_metrics(summary), split="eval")
        steps_per_s = done.steps_per_s
        final = trainer.denoiser.replace(params=parallel.to_host(state.params))
        if main:
            _finish(config, workdir, trainer, final, step, summary, output, evals, steps_per_s,
                    time.time() - t_start)
    return {"step": step, "stopped": None, "eval": summary, "state": state,
            "wall_time_s": time.time() - t_start, "steps_per_s": steps_per_s}


def resume(config, workdir: str, trainer: trainers.Trainer, ckpt: Checkpointer,
           main: bool) -> tuple[Any, int]:
    """The state to start from and its step: the newest readable checkpoint in `ckpt`, else
    `trainer.init_state` at 0. Writes config.json (process 0) once the checkpoint is known to
    fit these settings.

    Raises:
      ConfigChangedError: the checkpoint does not fit the trainer's state (other settings).
    """
    try:
        state, start = ckpt.restore_latest(trainer.init_state)
    except CheckpointMismatchError as e:
        raise ConfigChangedError(f"{e} Run these settings in a new --workdir.") from None
    if state is None:
        state, start = trainer.init_state, 0
    else:
        logging.info("resuming from the checkpoint at step %d", start)
    if main:
        _record_config(config, workdir)
    return state, start


@dataclasses.dataclass
class LoopResult:
    """Where `step_loop` ended: the state after `step` updates, the signal that stopped it
    (None: it reached config.num_steps) and the training speed of this call."""

    state: Any
    step: int
    stopped: Optional[str]
    steps_per_s: Optional[float]


def step_loop(config, mesh, trainer: trainers.Trainer, ckpt: Checkpointer, log: MetricsLog,
              state, start: int, main: bool, checkpoint_every: int,
              after_step: Optional[Callable[[int, Any, MetricsLog], None]] = None
              ) -> LoopResult:
    """The training steps from `start` to `config.num_steps`: batches prefetched, metrics
    logged every `config.log_every_steps`, a checkpoint every `checkpoint_every` steps and at
    the end, SIGTERM/SIGINT saving a checkpoint and stopping (logged), a non-finite
    metric stopping with the last good checkpoint kept. `after_step(step, state, log)` runs
    after every step (periodic evaluation, sample images).

    Raises:
      NonFiniteLossError: a step gave a non-finite metric (logged as a 'non_finite' event).
    """
    num_steps = config.num_steps
    stopped = None
    t_train, steps_done = time.time(), 0
    with StopSignals() as stop:
        for bad in ckpt.skipped:
            log.event(bad["step"], "checkpoint_corrupt", error=bad["error"],
                      moved_to=bad["moved_to"])
        if start:
            log.event(start, "resumed")
        bar = _progress(config, main, start, num_steps)
        step = start
        # Each batch is sampled on a background thread while the previous step runs.
        batches = sampling.prefetch(trainer.local_batch, range(start, num_steps))
        try:
            for _, local in batches:
                state, metrics = trainer.step(state, parallel.global_batch(local, mesh))
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                step += 1
                steps_done += 1
                _check_finite(metrics, step, ckpt)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
                if step % config.log_every_steps == 0 or step == num_steps:
                    rate = steps_done / max(time.time() - t_train, 1e-9)
                    log.write(step, dict(metrics, steps_per_s=rate,
                                         patches_per_s=rate * trainer.patches_per_step))
                if step % checkpoint_every == 0:
                    _save(ckpt, state)
                if after_step is not None:
                    after_step(step, state, log)
                if stop.any_process_requested():
                    stopped = stop.received or "signal"
                    break
            train_time = time.time() - t_train
            _save(ckpt, state)
        except NonFiniteLossError as e:
            log.event(step, "non_finite", message=str(e))
            logging.error("%s", e)
            raise
        finally:
            batches.close()
            if bar is not None:
                bar.close()
    if stopped:
        log.event(step, "stopped", signal=stopped)
        logging.warning("stopped by %s at step %d; checkpoint saved in %s; run again with "
                        "the same workdir to resume", stopped, step, ckpt.directory)
    return LoopResult(state, step, stopped, steps_done / train_time if steps_done else None)


def _progress(config, main: bool, start: int, total: int):
    if not (main and config.progress_bar) or start >= total:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=f"{config.job} {config.model}", unit="step",
                dynamic_ncols=True)


def _finish(config, workdir, trainer, final, step, summary, output, evals, steps_per_s,
            wall_time) -> None:
    """Process 0: eval.json, the figure, the printed table and the saved model."""
    model_dir = os.path.join(workdir, "model")
    models.save(final, model_dir, overwrite=True)
    path = os.path.join(workdir, "eval.json")
    if steps_per_s is None and os.path.exists(path):  # a finished run again: no step timed
        steps_per_s = files.read_json(path).get("train_steps_per_s")
    record = {"step": step, "model": config.model, "model_dir": model_dir,
              "train_steps_per_s": steps_per_s,
              "train_patches_per_s": steps_per_s and steps_per_s * trainer.patches_per_step,
              "wall_time_s": wall_time, "devices": jax.device_count(),
              "platform": jax.devices()[0].platform, **trainer.notes}
    if summary is not None:
        record["eval"] = summary
        title = f"{config.model}, step {step}"
        if "vgg" in trainer.notes and "RANDOM INIT" in trainer.notes["vgg"]:
            title += " (VGG RANDOM INIT)"
        record["figure"] = save_figure(os.path.join(workdir, "eval.png"), evals, output, title)
        table = format_result(summary)
        print(f"\n{config.model} after {step} steps, held-out whole slices:\n{table}")
    files.write_json(path, record)
    for what, note in trainer.notes.items():
        print(f"{what}: {note}")
    print(f"model saved to {model_dir}; results in {path}")


def format_result(result: dict[str, Any]) -> str:
    """A table: one row per anatomy and one for all slices, network vs low dose."""
    rows = []
    for name, r in list(result["per_anatomy"].items()) + [("all", result)]:
        n, lo = r["network"], r["low_dose"]
        rows.append([name, r.get("num_slices", result["num_slices"]), lo["rmse_hu"], n["rmse_hu"],
                     f"{100 * r['rmse_reduction']:.1f} %", lo["psnr_db"], n["psnr_db"],
                     lo["ssim"], n["ssim"]])
    return report.format_table(
        ["anatomy", "slices", "RMSE low (HU)", "RMSE net (HU)", "RMSE reduction",
         "PSNR low (dB)", "PSNR net (dB)", "SSIM low", "SSIM net"], rows)


def save_figure(path: str, evals: evaluate.EvalSet, output: np.ndarray,
                title: Optional[str] = None) -> str:
    """One row per anatomy (its first held-out slice): low dose, network, routine dose, and
    network - routine dose, the images in the anatomy's window and the difference in 'diff'."""
    rows, seen = [], set()
    for i, a in enumerate(evals.anatomy):
        if a in seen:
            continue
        seen.add(a)
        w = ct.window_for(a)
        where = f"{evals.patient[i]} slice {evals.slice_index[i]}"
        rows.append([report.Panel(f"low dose ({where})", evals.low[i], w),
                     report.Panel("network", output[i], w),
                     report.Panel("routine dose", evals.full[i], w),
                     report.Panel("network - routine", output[i] - evals.full[i], "diff")])
    return report.save_panels(path, rows, title=title)
