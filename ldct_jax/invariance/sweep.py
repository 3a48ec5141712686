"""The invariance sweep job: `python launch/main.py --config=configs/invariance.py:<model>`.

Runs `ldct_jax.invariance.search` over the grid distances x lambdas x images x seeds, cut into
chunks of `config.rows_per_chunk` rows (one search call each, one compiled program for all),
and writes, in the workdir:

    manifest.json               the settings (config, digests of images/mask/model); a run with
                                other settings in this workdir is refused
    inputs/images.npy           the images searched, HU [N, H, W]; inputs/images.json: their
                                anatomy and source
    chunks/00000/               one finished chunk (written atomically, never rewritten):
      perturbation.npy          x_inv, HU [rows, H, W]
      curves.npy                loss, d_out, d_in per iteration [rows, iterations, 3]
      metrics.csv, metrics.json one record per row: settings and metrics
    report/results.csv|json     every row
    report/summary.csv|md|json  mean metrics per model, distance and lambda (plus the
                                summaries of config.report.compare workdirs)
    report/figures/image<i>_<distance>.png   one per image and distance, one row per lambda:
                                x, x + x_inv, f(x), f(x + x_inv), x_inv, f(x + x_inv) - f(x)
                                (the first seed; ..._seed<s>.png for config.report.figure_seed)

A killed sweep started again with the same config continues with the first missing chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging

from ldct_jax import losses, parallel
from ldct_jax.invariance import chunks, inputs, search, sweep_report
from ldct_jax.models.denoiser import Denoiser

@dataclasses.dataclass
class Setup:
    """Everything a sweep computes from, checked and loaded."""

    denoiser: Denoiser
    images: np.ndarray          # [N, H, W] HU
    anatomy: list[str]
    source: list[str]
    mask: Optional[np.ndarray]  # [N, H, W] or None
    rows: search.Rows
    slices: list[slice]
    options: search.SearchOptions
    vgg: Any
    notes: dict[str, str]


def options_from(config: Any) -> search.SearchOptions:
    """config.search as `SearchOptions` (a ValueError names a bad field)."""
    fields = {f.name for f in dataclasses.fields(search.SearchOptions)}
    given = dict(config.search)
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"config.search: unknown field(s) {unknown}; expected {sorted(fields)}")
    try:
        return search.SearchOptions(**given)
    except ValueError as e:
        raise ValueError(f"config.search: {e}") from None


def check_grid(config: Any) -> None:
    """The grid's values: known distances, finite lambdas >= 0, integer seeds."""
    distances = [str(d) for d in config.distances]
    unknown = sorted(set(distances) - set(losses.INPUT_DISTANCES))
    if unknown or not distances:
        raise ValueError(f"config.distances={tuple(distances)}: unknown input distance(s) "
                         f"{unknown}; expected some of {', '.join(losses.INPUT_DISTANCES)}")
    lam = np.asarray(config.lambdas, np.float64)
    if lam.ndim != 1 or not lam.size or not np.all(np.isfinite(lam)) or lam.min() < 0:
        raise ValueError(f"config.lambdas={config.lambdas}: expected a non-empty list of finite "
                         "values >= 0")
    seeds = list(config.seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"config.seeds={config.seeds}: expected a non-empty list of integers")
    if config.rows_per_chunk < 1:
        raise ValueError(f"config.rows_per_chunk={config.rows_per_chunk}; expected >= 1")


def prepare(config: Any, workdir: str) -> Setup:
    """Checks the config and loads the model, images and mask; fails before any search."""
    check_grid(config)
    options = options_from(config)
    denoiser = inputs.load_denoiser(config.model, config.checkpoint,
                                    dict(config.model_config), config.seed)
    images, anatomy, source = inputs.load_images(config, workdir)
    mask = inputs.load_mask(config.mask, images.shape, config.crop)
    notes = {}
    vgg = None
    if "vgg16" in config.distances:
        from ldct_jax.models import vgg as vgg_lib
        vgg = vgg_lib.from_config(config.vgg16_weights, "vgg16", jax.random.key(config.seed))
        notes["vgg16"] = vgg.describe()
    rows = search.grid(len(images), list(config.lambdas), [str(d) for d in config.distances],
                       list(config.seeds))
    return Setup(denoiser, images, anatomy, source, mask, rows,
                 chunks.split(len(rows.lam), config.rows_per_chunk), options, vgg, notes)


def make_searcher(denoiser: Denoiser, distances: tuple[str, ...], options: search.SearchOptions,
                  vgg: Any, mesh: Any) -> search.Searcher:
    """A `Searcher`; without VGG one per architecture, distances, options and mesh is kept, so
    that a sweep resumed in the same process (a notebook, the tests) does not compile again."""
    if vgg is not None:
        return search.Searcher(denoiser, distances, options, vgg, mesh)
    return _cached_searcher(denoiser.name, denoiser.module, float(denoiser.shift),
                            float(denoiser.scale), distances, options, mesh)


@functools.lru_cache(maxsize=8)
def _cached_searcher(name, module, shift, scale, distances, options, mesh) -> search.Searcher:
    # The searcher uses the denoiser's architecture and normalisation only; params are
    # arguments of every call.
    d = Denoiser(name=name, module=module, params=None, shift=shift, scale=scale)
    return search.Searcher(d, distances, options, None, mesh)


def run(config: Any, workdir: str, *, on_chunk: Optional[Callable[[int], None]] = None
        ) -> dict[str, Any]:
    """Runs (or finishes) the sweep in `workdir` and writes its report.

    Args:
      config: a config of configs/invariance.py.
      workdir: the sweep's directory.
      on_chunk: called with the chunk index after each chunk is written (tests).

    Returns:
      {'computed': chunk indices computed by this call, 'chunks': their number,
       'summary': the summary records, 'report': the report directory}.
    """
    parallel.maybe_initialize_distributed(config.distributed)
    setup = prepare(config, workdir)
    inputs.log_inputs(setup.images, setup.anatomy, setup.source)
    os.makedirs(workdir, exist_ok=True)
    vgg_digest = chunks.digest(setup.vgg.params) if setup.vgg is not None else None
    chunks.claim(workdir, inputs.settings(config, setup.denoiser,
                                          {"images": setup.images, "mask": setup.mask},
                                          vgg16=vgg_digest, rows=len(setup.rows.lam)))
    inputs.save_inputs(workdir, setup.images, setup.anatomy, setup.source)
    mesh = parallel.make_mesh(config.num_devices or None)
    searcher = make_searcher(setup.denoiser, tuple(str(d) for d in config.distances),
                             setup.options, setup.vgg, mesh)
    todo = sum(not chunks.is_done(workdir, i) for i in range(len(setup.slices)))
    progress = chunks.Progress(len(setup.slices), todo, setup.options.iterations,
                               f"invariance {config.model}", config.progress_bar)
    if todo < len(setup.slices):
        logging.info("%d of %d chunks already finished in %s", len(setup.slices) - todo,
                     len(setup.slices), workdir)

    def compute(index: int, rows: slice, callback):
        part = search.Rows(*(np.asarray(a)[rows] for a in setup.rows))
        result = searcher.run(setup.denoiser.params, setup.images, part, mask=setup.mask,
                              progress=callback, batch_size=config.rows_per_chunk)
        records = [dict(row=rows.start + j, chunk=index, model=config.model, **r)
                   for j, r in enumerate(search.result_table(result))]
        curves = np.stack([result.curves[k] for k in search.CURVES], axis=-1)
        return (dict(perturbation=result.perturbation.astype(np.float32),
                     curves=curves.astype(np.float32)),
                records, dict(seconds=result.seconds, iterations=setup.options.iterations))

    computed = chunks.run_chunks(workdir, setup.slices, compute, progress, on_chunk)
    summary = None
    if jax.process_index() == 0:
        summary = sweep_report.invariance_report(
            workdir, setup.denoiser, setup.images, setup.anatomy, setup.source,
            len(setup.slices), config, setup.notes)
    return {"computed": computed, "chunks": len(setup.slices), "summary": summary,
            "report": os.path.join(workdir, "report")}
