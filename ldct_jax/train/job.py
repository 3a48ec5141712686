"""The training job: `run(config, workdir)`, as `python launch/main.py --config=configs/wgan.py`.

Resumable: a run started again with the same workdir continues from the newest readable
checkpoint with the same data order and RNG. SIGTERM/SIGINT save a checkpoint and return.
Writes to the workdir: config.json, metrics.jsonl, tensorboard/, checkpoints/, eval.json,
eval.png and, at the end, the trained denoiser in model/ (ldct_jax.models.save).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ldct_jax import data, models, parallel
from ldct_jax.data.scan import Scan
from ldct_jax.train import evaluate, trainers
from ldct_jax.train.checkpoint import Checkpointer, StopSignals
from ldct_jax.train.metrics_log import MetricsLog


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss; the newest checkpoint is the last good state."""


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _record_config(config, workdir: str) -> None:
    """Writes config.json; on a resume, logs which values differ from the first start."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        changed = _diff(previous, current)
        if changed:
            logging.warning("config differs from the earlier start of this workdir: %s",
                            "; ".join(changed))
    _write_json(path, current)


def _diff(a: Any, b: Any, prefix: str = "config") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in _diff(a.get(k), b.get(k), f"{prefix}.{k}")]
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def _host(tree: Any) -> Any:
    """Replicated global arrays -> numpy (works on every host of a multi-host run)."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def _check_finite(metrics: dict[str, float], step: int, ckpt: Checkpointer) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"non-finite training metrics at step {step}: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(bad.items()))}. "
            f"Training stopped. {_last_good(ckpt)} Lower the learning rate "
            "(config.optimizer.lr) or check the data.")


def _last_good(ckpt: Checkpointer) -> str:
    last = ckpt.latest_step()
    if last is None:
        return "No checkpoint had been saved yet."
    return (f"The last good checkpoint (step {last} in {ckpt.directory}) is kept; nothing was "
            "saved after it.")


def _save(ckpt: Checkpointer, state) -> None:
    try:
        ckpt.save(state)
    except FloatingPointError as e:
        raise NonFiniteLossError(f"{e}. Training stopped. {_last_good(ckpt)}") from e


def run(config, workdir: str, *, scans: Optional[Sequence[Scan]] = None,
        on_step: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Trains `config.model` in `workdir` (resuming if it holds checkpoints) and evaluates it.

    Args:
      config: a config from configs/cnn10.py or configs/wgan.py.
      workdir: the run's directory.
      scans: train on these (split into training and held-out patients as config.data says)
        instead of loading config.data: for notebooks and tests.
      on_step: called with the step number after each step (tests use it to send signals).

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
    mesh = parallel.make_mesh(config.num_devices or None)
    parallel.check_batch_divisible(config.batch_size, mesh, key="batch_size")
    main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if main:
        _record_config(config, workdir)

    if scans is None:
        scans = data.load_scans(config.data, workdir)
    train_scans, held_out = data.split_scans(scans, config.data.held_out_patients)
    trainers.check_patch_fits(config, train_scans)
    logging.info("data: %d training and %d held-out patients (%s)", len(train_scans),
                 len(held_out), config.data.source)
    trainer = trainers.build(config, mesh, train_scans)
    for what, note in trainer.notes.items():
        logging.warning("%s: %s", what, note)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    try:
        return _train(config, workdir, mesh, trainer, held_out, ckpt, on_step, t_start, main)
    finally:
        ckpt.close()


def _train(config, workdir, mesh, trainer, held_out, ckpt, on_step, t_start, main):
    """Resume, the step loop, checkpoints, the final evaluation: `run` after the set-up."""
    state, start = ckpt.restore_latest(trainer.init_state)
    if state is None:
        state, start = trainer.init_state, 0
    else:
        logging.info("resuming from the checkpoint at step %d", start)

    evals = evaluate.eval_set(held_out, config.eval.slices_per_patient, config.seed) \
        if held_out else None
    denoise_fn = evaluate.make_denoise_fn(trainer.denoiser.apply, mesh)

    def run_eval(params) -> Optional[tuple[dict, np.ndarray]]:
        if evals is None:
            logging.warning("no held-out patients (config.data.held_out_patients=0): "
                            "evaluation skipped")
            return None
        out = evaluate.denoise_all(denoise_fn, params, evals.low, mesh, config.eval.batch_size)
        return evaluate.summarise(evals, out), out

    num_steps = config.num_steps
    stopped = None
    t_train, steps_done = time.time(), 0
    with MetricsLog(workdir, enabled=main) as log, StopSignals() as stop, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        for bad in ckpt.skipped:
            log.event(bad["step"], "checkpoint_corrupt", error=bad["error"],
                      moved_to=bad["moved_to"])
        if start:
            log.event(start, "resumed")
        bar = _progress(config, main, start, num_steps)
        step = start
        upcoming = pool.submit(trainer.local_batch, step) if step < num_steps else None
        try:
            while step < num_steps:
                batch = parallel.global_batch(upcoming.result(), mesh)
                if step + 1 < num_steps:
                    upcoming = pool.submit(trainer.local_batch, step + 1)
                state, metrics = trainer.step(state, batch)
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
                if step % config.checkpoint.every_steps == 0:
                    _save(ckpt, state)
                if config.eval.every_steps and step % config.eval.every_steps == 0 \
                        and step < num_steps:
                    result = run_eval(state.params)
                    if result is not None:
                        log.write(step, evaluate.flat_metrics(result[0]), split="eval")
                if on_step is not None:
                    on_step(step)
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
            if bar is not None:
                bar.close()
        if stopped:
            log.event(step, "stopped", signal=stopped)
            logging.warning("stopped by %s at step %d; checkpoint saved in %s; run again with "
                            "the same workdir to resume", stopped, step, ckpt.directory)
            return {"step": step, "stopped": stopped, "eval": None, "state": state,
                    "wall_time_s": time.time() - t_start, "steps_per_s": None}

        result = run_eval(state.params)
        summary = output = None
        if result is not None:
            summary, output = result
            log.write(step, evaluate.flat_metrics(summary), split="eval")
        steps_per_s = steps_done / train_time if steps_done else None
        final = trainer.denoiser.replace(params=_host(state.params))
        if main:
            _finish(config, workdir, trainer, final, step, summary, output, evals, steps_per_s,
                    time.time() - t_start)
    return {"step": step, "stopped": None, "eval": summary, "state": state,
            "wall_time_s": time.time() - t_start, "steps_per_s": steps_per_s}


def _progress(config, main: bool, start: int, total: int):
    if not (main and config.progress_bar) or start >= total:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=f"train {config.model}", unit="step",
                dynamic_ncols=True)


def _finish(config, workdir, trainer, final, step, summary, output, evals, steps_per_s,
            wall_time) -> None:
    """Process 0: eval.json, the figure, the printed table and the saved model."""
    model_dir = os.path.join(workdir, "model")
    models.save(final, model_dir, overwrite=True)
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
        record["figure"] = evaluate.save_figure(os.path.join(workdir, "eval.png"), evals,
                                                output, title)
        table = evaluate.format_result(summary)
        print(f"\n{config.model} after {step} steps, held-out whole slices:\n{table}")
    _write_json(os.path.join(workdir, "eval.json"), record)
    for what, note in trainer.notes.items():
        print(f"{what}: {note}")
    print(f"model saved to {model_dir}; results in {os.path.join(workdir, 'eval.json')}")
