"""The natural-invariance job: `python launch/main.py --config=configs/natural.py:<model>`.

Trains the generator of natural invariances (`ldct_jax.train.natural`) for the denoiser
`config.model` with the training job's loop (`jobs.train.step_loop`: data-parallel steps over
every device, checkpoints, resume, SIGTERM, progress bar, TensorBoard), then samples it on the
report's images and writes the report (`jobs.natural_report`). In the workdir:

    config.json, metrics.jsonl, tensorboard/ (scalars and sample images), checkpoints/
                                as the training job writes them (every
                                config.checkpoints.every_steps); a restart with other
                                settings is refused, except the fields of NATURAL_FREE
    denoiser.json               the denoiser trained against (name, params digest); a restart
                                with another one is refused
    generator/                  the trained generator (`ldct_jax.analysis.natural.load`)
    report/                     figures, spectra, summary.json|csv|md, samples.npz, index.html
    data/                       the synthetic data set, built on first use
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ldct_jax import ct, distances, files, models, parallel
from ldct_jax.analysis import invariance_metrics, natural
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import configs, inputs, invariance, natural_report, trainers
from ldct_jax.jobs import train as train_job
from ldct_jax.jobs.metrics_log import MetricsLog
from ldct_jax.models import natural as natural_models
from ldct_jax.train import natural as natural_train
from ldct_jax.train.checkpoint import Checkpointer

DENOISER_FILE = "denoiser.json"
# A restart may change these too: they change what is sampled and reported, not the training.
NATURAL_FREE = train_job.RESTART_FREE + ("checkpoints.every_steps", "checkpoints.keep",
                                         "samples", "report", "search", "images", "anatomy",
                                         "num_images", "image_seed", "crop")


def check_config(config: Any) -> None:
    """Raises ValueError naming the key for a value that cannot work, before any heavy work."""
    model = inputs.denoiser_name(config.model)
    trainers.check_loop(config, "checkpoints")
    trainers.check_adam(config, "optimizer")
    trainers.check_adam(config, "critic_optimizer")
    for key in ("generator.features", "generator.levels", "generator.noise_channels",
                "generator.out_scale", "critic.features", "critic.n_critic",
                "samples.num_samples", "samples.batch_size", "report.search_starts",
                "report.noise_patches", "report.noise_patch_size"):
        check_positive(config, key)
    if config.report.search:  # the report's search runs after the training: checked now
        invariance.options_from(config)
    for key in ("critic.gp_weight", "loss.lam", "loss.alpha",
                "loss.beta", "loss.lam_start", "loss.lam_steps",
                "samples.every_steps"):
        check_positive(config, key, allow_zero=True)
    if config.loss.distance not in ("mse", "dssim"):
        raise ValueError(f"config.loss.distance={config.loss.distance!r}; expected 'mse' or "
                         f"'dssim' (of {', '.join(distances.INPUT_DISTANCES)}, the generator "
                         "trains with the ones that need no VGG16)")
    natural_models.check_scales(config.critic.scales, config.patch_size)
    levels = 2 ** config.generator.levels
    if config.patch_size < levels:
        raise ValueError(f"config.patch_size={config.patch_size} is smaller than the "
                         f"generator's {config.generator.levels} downsamplings need "
                         f"({levels} px)")
    with configs.naming("patch_size", config.patch_size):
        models.check_input_size(model, (config.patch_size,) * 2, "patches")
    trainers.check_data(config)


def check_noise_patches(config: Any, scans: Sequence[Scan]) -> None:
    """The report's noise patches fit the slices, and hold a frequency in every band of the
    spectral distance (a ValueError naming config.report.noise_patch_size)."""
    size = config.report.noise_patch_size
    with configs.naming("report.noise_patch_size", size):
        smallest = min(min(s.full.shape[1:]) for s in scans)
        if size > smallest:
            raise ValueError(f"noise patches larger than the smallest slices ({smallest} px)")
        patch = np.random.default_rng(0).standard_normal((1, size, size))
        invariance_metrics.spectral_distance(patch, patch)


def check_denoiser(config: Any, workdir: str, denoiser: models.Denoiser, main: bool) -> None:
    """Refuses to continue a run trained against another denoiser than config.checkpoint
    holds now (retrained in place, say); records the denoiser of a new run (process 0)."""
    path = os.path.join(workdir, DENOISER_FILE)
    record = {"model": denoiser.name, "params": files.digest(denoiser.params)}
    if os.path.exists(path) and train_job.saved_steps(workdir):
        old = files.read_json(path)
        if old != record:
            where = config.checkpoint or inputs.TRAINED.get(denoiser.name, ("",))[0]
            raise train_job.ConfigChangedError(
                f"{workdir} holds a generator trained against another {old['model']} (params "
                f"digest {old['params'][:12]}) than the one at {where!r} (config.checkpoint; "
                f"{record['model']}, {record['params'][:12]}): point config.checkpoint at the "
                "denoiser it was trained against, or use a new --workdir")
    elif main:
        os.makedirs(workdir, exist_ok=True)
        files.write_json(path, record)


def check_positive(config: Any, key: str, allow_zero: bool = False) -> None:
    trainers.check_positive(config, key, trainers.field(config, key), allow_zero=allow_zero)


def settings_from(config: Any) -> natural_train.NaturalSettings:
    """The loss weights and critic settings of `config`."""
    return natural_train.NaturalSettings(
        lam=config.loss.lam, lam_start=config.loss.lam_start, lam_steps=config.loss.lam_steps,
        distance=config.loss.distance, alpha=config.loss.alpha,
        beta=config.loss.beta, scales=config.critic.scales,
        n_critic=config.critic.n_critic, gp_weight=config.critic.gp_weight)


def modules(config: Any) -> tuple[natural_models.InvarianceGenerator, natural_models.PatchCritic]:
    return (natural_models.InvarianceGenerator(**dict(config.generator)),
            natural_models.PatchCritic(features=config.critic.features))


def build(config: Any, mesh, train_scans: Sequence[Scan],
          denoiser: models.Denoiser) -> trainers.Trainer:
    """The trainer of the generator for `denoiser` (frozen), on `mesh`, from `train_scans`."""
    settings = settings_from(config)
    generator, critic = modules(config)
    root = jax.random.PRNGKey(config.seed)
    p = config.patch_size
    x = np.zeros((1, p, p, 1), np.float32)
    c = np.zeros((1, p, p, 1 + generator.condition_on_output), np.float32)
    z = np.zeros((1, p, p, generator.noise_channels), np.float32)
    g_params = jax.jit(generator.init)(jax.random.fold_in(root, 0), c, z)["params"]
    init_critic = jax.jit(critic.init)
    c_params = {f"stage{i}": init_critic(jax.random.fold_in(root, 1 + i), x)["params"]
                for i in range(settings.scales)}
    g_opt = trainers.make_adam(config.optimizer, config.num_steps)
    c_opt = trainers.critic_adam(config.critic_optimizer, config.num_steps, settings.n_critic)
    state = natural_train.init_state(g_params, c_params, g_opt, c_opt, config.seed)
    step = natural_train.make_step(denoiser.spec, generator, critic, g_opt, c_opt, settings)
    jitted = parallel.data_parallel_step(step, mesh, extra_args=1)
    f_params = parallel.replicate(denoiser.params, mesh)
    n = settings.n_critic
    return trainers.Trainer(
        denoiser, parallel.replicate(state, mesh),
        lambda state, batch: jitted(state, batch, f_params),
        lambda i: natural_train.local_batch(
            train_scans, i, batch_size=config.batch_size, patch_size=p, seed=config.seed,
            n_critic=n, process_index=jax.process_index(), process_count=jax.process_count()),
        config.batch_size * n, {})


def run(config: Any, workdir: str, *, scans: Optional[Sequence[Scan]] = None) -> dict[str, Any]:
    """Trains (or resumes) the generator in `workdir`, samples it and writes the report.

    Args:
      config: a config of configs/natural.py.
      workdir: the run's directory.
      scans: the data (training and held-out patients as config.data says) instead of
        loading config.data.

    Returns:
      `{'step', 'stopped' (a signal name or None), 'state', 'generator' (None if stopped),
      'summary' (the report's records), 'report', 'wall_time_s'}`.
    """
    t_start = time.time()
    parallel.maybe_initialize_distributed(config.distributed)
    check_config(config)
    train_job.check_restart(config, workdir, NATURAL_FREE)
    denoiser = inputs.load_denoiser(config.model, config.checkpoint, dict(config.model_config),
                                    config.seed)
    check_denoiser(config, workdir, denoiser, jax.process_index() == 0)
    mesh, main, scans, train_scans, held_out = train_job.prepare(config, workdir, scans)
    check_noise_patches(config, scans)
    images = inputs.load_images(config, workdir, list(held_out or train_scans))
    with configs.naming("model", config.model):
        models.check_input_size(denoiser.name, images[0].shape)
    logging.info("data: %d training patients; report on %d images of %s", len(train_scans),
                 len(images[0]), "held-out patients" if held_out else "the training patients")
    trainer = build(config, mesh, train_scans, denoiser)
    generator_module = modules(config)[0]
    watch = _sample_images(config, generator_module, denoiser, images)

    ckpt = Checkpointer(os.path.join(workdir, train_job.CHECKPOINTS),
                        keep=config.checkpoints.keep)
    try:
        state, start = train_job.resume(config, workdir, trainer, ckpt, main)
        with MetricsLog(workdir, enabled=main, resumed_at=start) as log:
            done = train_job.step_loop(config, mesh, trainer, ckpt, log, state, start, main,
                                       config.checkpoints.every_steps, watch)
    finally:
        ckpt.close()
    result = {"step": done.step, "stopped": done.stopped, "state": done.state,
              "generator": None, "summary": None, "report": os.path.join(workdir, "report")}
    if done.stopped:
        return dict(result, wall_time_s=time.time() - t_start)
    generator = natural.Generator(generator_module, parallel.to_host(done.state.params),
                                  denoiser)
    if main:
        natural.save(generator, os.path.join(workdir, "generator"), overwrite=True)
        result["summary"] = natural_report.write(workdir, config, denoiser, generator, images,
                                                 scans, mesh)
    return dict(result, generator=generator, wall_time_s=time.time() - t_start)


def _sample_images(config: Any, module, denoiser: models.Denoiser, images: inputs.Images):
    """`after_step(step, state, log)`: every `config.samples.every_steps` steps, x + x_inv and
    x_inv of the first report image (one sample) to TensorBoard."""
    every = config.samples.every_steps
    x = images[0][:1]
    window = ct.window_for(images[1][0])
    key = jax.random.key(config.samples.seed)

    def after_step(step: int, state, log: MetricsLog) -> None:
        if not every or step % every:
            return
        params = parallel.to_host(state.params)
        x_inv = np.asarray(natural.sample(module, params, x, key, 1, denoiser))[0, 0]
        log.image(step, "samples/x_plus_x_inv", ct.apply_window(x[0] + x_inv, window))
        log.image(step, "samples/x_inv", ct.apply_window(x_inv, "diff"))

    return after_step
