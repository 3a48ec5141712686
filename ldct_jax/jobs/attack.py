"""The attack sweep job: `python launch/main.py --config=configs/attack.py:<model>`.

Runs `ldct_jax.analysis.attacks` over methods x images, every budget of `config.epsilons_hu`
at once, in chunks of one method and `config.images_per_chunk` images (one attack call each),
and writes, in the workdir:

    manifest.json               the settings; a run with other settings here is refused
    inputs/images.npy|json      the images attacked (HU), their anatomy and source
    inputs/target.npy           the target output images (targeted attacks)
    chunks/00000/               one finished chunk (atomic, never rewritten):
      perturbation.npy          delta, HU [rows, H, W]; x_adv = x + delta
      metrics.csv, metrics.json one record per row (image, method, budget): metrics
    report/results.csv|json, report/summary.csv|md|json   every row; means per model,
                                method, targeted and budget (plus config.report.compare)
    report/figures/image<i>_<method>.png   one per image and method, one row per budget:
                                x, x_adv, f(x), f(x_adv), delta, f(x_adv) - f(x) [, target]
    report/changes.png          mean output against mean input change per method and budget,
                                a marker per model
    report/index.html           all of it on one self-contained page (summary sortable,
                                windows switchable)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np

from ldct_jax import files, models, parallel
from ldct_jax.analysis import arrays, attacks
from ldct_jax.jobs import chunks, configs, inputs, sweep_report
from ldct_jax.models.denoiser import Denoiser

TARGETS = ("", "remove_center")


@dataclasses.dataclass
class Setup:
    inputs: inputs.Inputs
    compared: list[dict]             # the summaries of config.report.compare
    target: Optional[np.ndarray]     # [N, H, W] HU output images, or None
    units: list[tuple[str, int]]     # (method, image) in chunk order
    slices: list[slice]              # over units; a chunk never mixes methods


def check_config(config: Any) -> None:
    """Methods, budgets, steps and target settings (before anything is loaded)."""
    configs.check_choices(config, "methods", attacks.METHODS, "method")
    configs.check_nonnegative(config, "epsilons_hu", "budgets >= 0 HU")
    if config.steps < 1:
        raise ValueError(f"config.steps={config.steps}; expected >= 1")
    if config.step_size_hu < 0:
        raise ValueError(f"config.step_size_hu={config.step_size_hu}; expected > 0 HU, or 0 "
                         "for 2.5 * epsilon / steps")
    if config.images_per_chunk < 1:
        raise ValueError(f"config.images_per_chunk={config.images_per_chunk}; expected >= 1")
    if config.target not in TARGETS and not str(config.target).endswith(".npy"):
        raise ValueError(f"config.target={config.target!r}; expected '' (untargeted), "
                         "'remove_center' or a .npy of output images in HU")


def remove_center(output: np.ndarray, radius: int) -> np.ndarray:
    """`[N, H, W]` outputs with the central disc of `radius` px set to the median of the ring
    between `radius` and `2 radius` around it: the output with whatever lay there removed."""
    h, w = output.shape[-2:]
    if not 1 <= radius <= min(h, w) // 4:
        raise ValueError(f"config.target_radius_px={radius}; expected 1..{min(h, w) // 4} for "
                         f"images of {h}x{w}")
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    disc, ring = r <= radius, (r > radius) & (r <= 2 * radius)
    out = np.array(output, np.float32)
    for k in range(len(out)):
        out[k][disc] = np.median(out[k][ring])
    return out


def read_target(config: Any) -> Optional[np.ndarray]:
    """config.target's .npy as it is on disk (None for '' or 'remove_center'): read before
    anything else of the sweep."""
    if not config.target or config.target == "remove_center":
        return None
    return inputs.load_npy("target", config.target, "a .npy of output images in HU")


def load_target(config: Any, raw: Optional[np.ndarray], denoiser: Denoiser,
                images: np.ndarray) -> Optional[np.ndarray]:
    """The target output images `[N, H, W]` HU: f(x) with its centre removed, or `raw`
    (`read_target`) checked against the images."""
    if not config.target:
        return None
    if config.target == "remove_center":
        return remove_center(models.denoise(denoiser.spec, denoiser.params, images),
                             config.target_radius_px)
    path = config.target
    t = arrays.check_images(raw, f"config.target={path!r}")
    t = inputs.crop(t, config.crop) if config.crop and t.shape[1:] != images.shape[1:] else t
    if t.shape[1:] != images.shape[1:] or len(t) not in (1, len(images)):
        raise ValueError(f"config.target={path!r}: shape {t.shape} does not fit the images "
                         f"{images.shape}; expected [H, W] or [N, H, W]")
    return np.ascontiguousarray(np.broadcast_to(t, images.shape))


def prepare(config: Any, workdir: str) -> Setup:
    """Checks the config, loads the model, images and target; fails before any attack."""
    check_config(config)
    compared = sweep_report.load_compared(config.report.compare, ("method", "epsilon_hu"))
    raw_target = read_target(config)
    loaded = inputs.load(config, workdir)
    target = load_target(config, raw_target, loaded.denoiser, loaded.images)
    n = len(loaded.images)
    units, slices = [], []
    for m in config.methods:
        base = len(units)
        units += [(m, i) for i in range(n)]
        slices += [slice(base + s.start, base + s.stop)
                   for s in chunks.split(n, config.images_per_chunk)]
    return Setup(loaded, compared, target, units, slices)


def _kwargs(config: Any, method: str) -> dict:
    kw: dict[str, Any] = {"seed": config.attack_seed}
    if method != "fgsm":
        kw["steps"] = config.steps
        kw["step_size_hu"] = config.step_size_hu or None
    if method != "pgd" and config.probe_hu >= 0:
        kw["probe_hu"] = config.probe_hu
    return kw


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Runs (or finishes) the attack sweep in `workdir` and writes its report.

    Returns:
      {'computed': chunk indices computed by this call, 'chunks', 'summary', 'report'}.
    """
    parallel.maybe_initialize_distributed(config.distributed)
    setup = prepare(config, workdir)
    loaded = setup.inputs
    loaded.start(config, workdir, {"target": setup.target}, units=len(setup.units))
    if setup.target is not None and jax.process_index() == 0:
        files.write_npy(os.path.join(workdir, "inputs", "target.npy"), setup.target)
    mesh = parallel.make_mesh(config.num_devices or None)
    eps = np.asarray(config.epsilons_hu, np.float32)
    todo = sum(not chunks.is_done(workdir, i) for i in range(len(setup.slices)))
    progress = chunks.Progress(len(setup.slices), todo, 1, f"attack {config.model}",
                               config.progress_bar, unit="chunk")

    def compute(index: int, units: slice, callback):
        picked = setup.units[units]
        method = picked[0][0]
        idx = np.array([i for _, i in picked])
        target = None if setup.target is None else setup.target[idx]
        result = attacks.attack(method, loaded.denoiser, loaded.images[idx], eps, target=target,
                                mesh=mesh, image_ids=idx, **_kwargs(config, method))
        callback(1)
        records = []
        first_row = units.start * len(eps)
        for j, r in enumerate(attacks.result_table(result)):
            r["image_index"] = int(idx[r["image_index"]])
            records.append(dict(row=first_row + j, chunk=index, model=config.model, **r))
        return ({"perturbation": result.perturbation.astype(np.float32)}, records,
                {"method": method})

    check = chunks.FiniteCheck(("row", "image_index", "method", "epsilon_hu"),
                               "Check the model (config.checkpoint) and the images.")
    computed = chunks.run_chunks(workdir, setup.slices, compute, progress, check)
    summary = None
    if jax.process_index() == 0:
        summary = sweep_report.attack_report(workdir, loaded, setup.compared, setup.target,
                                             len(setup.slices), config)
    return {"computed": computed, "chunks": len(setup.slices), "summary": summary,
            "report": os.path.join(workdir, "report")}
