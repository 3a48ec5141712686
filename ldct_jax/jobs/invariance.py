"""The invariance sweep job: `python launch/main.py --config=configs/invariance.py:<model>`.

Runs `ldct_jax.analysis.search` over the grid distances x lambdas x images x seeds, cut into
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
    report/summary.csv|md|json  mean metrics per model, distance and lambda (csv and md with
                                the summaries of config.report.compare workdirs beside them)
    report/figures/image<i>_<distance>.png   one per image and distance, one row per lambda:
                                x, x + x_inv, f(x), f(x + x_inv), x_inv, f(x + x_inv) - f(x)
                                (the first seed; ..._seed<s>.png for config.report.figure_seed)
    report/changes.png          mean output against mean input change per distance and lambda,
                                a marker per model
    report/index.html           all of it on one self-contained page: the summary table
                                sortable, the figures with their anatomy and difference windows
                                switchable (open it in a browser)

A killed sweep started again with the same config continues with the first missing chunk.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging

from ldct_jax import distances, files, parallel
from ldct_jax.analysis import optimizers, search
from ldct_jax.jobs import chunks, configs, inputs, sweep_report


@dataclasses.dataclass
class Setup:
    """Everything a sweep computes from, checked and loaded."""

    inputs: inputs.Inputs
    compared: list[dict]        # the summaries of config.report.compare
    mask: Optional[np.ndarray]  # [N, H, W] or None
    rows: search.Rows
    slices: list[slice]
    options: search.SearchOptions
    vgg: Any
    notes: dict[str, str]


def options_from(config: Any, lambdas: Sequence[float] = ()) -> search.SearchOptions:
    """config.search as `SearchOptions`, checked against the sweep's `lambdas` (a ValueError
    names a bad field)."""
    fields = {f.name for f in dataclasses.fields(search.SearchOptions)}
    given = dict(config.search)
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"config.search: unknown field(s) {unknown}; expected {sorted(fields)}")
    try:
        options = search.SearchOptions(**given)
        optimizers.check_schedule(options.settings, lambdas)
    except ValueError as e:
        raise ValueError(f"config.search: {str(e).removeprefix('search: ')}") from None
    return options


def check_grid(config: Any) -> None:
    """The grid's values: known distances, finite lambdas >= 0, integer seeds."""
    configs.check_choices(config, "distances", distances.INPUT_DISTANCES, "input distance")
    configs.check_nonnegative(config, "lambdas", "values >= 0")
    seeds = list(config.seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"config.seeds={config.seeds}: expected a non-empty list of integers")
    if config.rows_per_chunk < 1:
        raise ValueError(f"config.rows_per_chunk={config.rows_per_chunk}; expected >= 1")
    if config.report.figure_seed >= 0 and config.report.figure_seed not in seeds:
        raise ValueError(f"config.report.figure_seed={config.report.figure_seed}: not among "
                         f"config.seeds={seeds}; expected one of them or -1 (the first)")


def prepare(config: Any, workdir: str, images: Optional[inputs.Images] = None) -> Setup:
    """Checks the config and loads the model, images (unless given) and mask; fails before any
    search."""
    check_grid(config)
    options = options_from(config, config.lambdas)
    compared = sweep_report.load_compared(config.report.compare, ("distance", "lam"))
    raw_mask = inputs.read_mask(config)
    notes = {}
    vgg = None
    if "vgg16" in config.distances:  # before the data: a wrong file fails before it is read
        from ldct_jax.models import vgg_weights
        vgg = vgg_weights.from_config(config.vgg16_weights, "vgg16", jax.random.key(config.seed))
        notes["vgg16"] = vgg.describe()
    loaded = inputs.load(config, workdir, images)
    with configs.naming(*(("images", config.images) if config.images else ("crop", config.crop))):
        search.check_image_size(loaded.images.shape, [str(d) for d in config.distances])
    mask = inputs.fit_mask(config, raw_mask, loaded.images.shape)
    rows = grid(config, len(loaded.images))
    return Setup(loaded, compared, mask, rows,
                 chunks.split(len(rows.lam), config.rows_per_chunk), options, vgg, notes)


def grid(config: Any, num_images: int) -> search.Rows:
    """The sweep's rows: distances x lambdas x images x seeds (`search.grid`)."""
    return search.grid(num_images, list(config.lambdas), [str(d) for d in config.distances],
                       list(config.seeds))


def run(config: Any, workdir: str, images: Optional[inputs.Images] = None) -> dict[str, Any]:
    """Runs (or finishes) the sweep in `workdir` and writes its report.

    Args:
      config: a config of configs/invariance.py.
      workdir: the sweep's directory.
      images: (images HU `[N, H, W]`, anatomy, source per image) to search instead of the
        config's (`ldct_jax.jobs.zoo` runs several models on the same images).

    Returns:
      {'computed': chunk indices computed by this call, 'chunks': their number,
       'summary': the summary records, 'report': the report directory}.
    """
    parallel.maybe_initialize_distributed(config.distributed)
    setup = prepare(config, workdir, images)
    loaded = setup.inputs
    vgg_digest = files.digest(setup.vgg.params) if setup.vgg is not None else None
    # The options as resolved (method defaults filled in): a changed default is a changed sweep.
    loaded.start(config, workdir, {"mask": setup.mask}, vgg16=vgg_digest,
                 rows=len(setup.rows.lam), search=setup.options.settings._asdict())
    mesh = parallel.make_mesh(config.num_devices or None)
    searcher = search.Searcher(loaded.denoiser.spec, [str(d) for d in config.distances],
                               setup.options, setup.vgg, mesh)
    todo = sum(not chunks.is_done(workdir, i) for i in range(len(setup.slices)))
    progress = chunks.Progress(len(setup.slices), todo, setup.options.settings.iterations,
                               f"invariance {config.model}", config.progress_bar)
    if todo < len(setup.slices):
        logging.info("%d of %d chunks already finished in %s", len(setup.slices) - todo,
                     len(setup.slices), workdir)

    def compute(index: int, rows: slice, callback):
        part = search.Rows(*(np.asarray(a)[rows] for a in setup.rows))
        result = searcher.run(loaded.denoiser.params, loaded.images, part, mask=setup.mask,
                              progress=callback, batch_size=config.rows_per_chunk)
        records = [dict(row=rows.start + j, chunk=index, model=config.model, **r)
                   for j, r in enumerate(search.result_table(result))]
        curves = np.stack([result.curves[k] for k in search.CURVES], axis=-1)
        return (dict(perturbation=result.perturbation.astype(np.float32),
                     curves=curves.astype(np.float32)),
                records, dict(seconds=result.seconds, iterations=setup.options.settings.iterations))

    check = chunks.FiniteCheck(
        ("row", "image_index", "distance", "lam", "seed"),
        "The search diverged: lower config.search.learning_rate, or check the model "
        "(config.checkpoint) and the images.",
        allow_inf=("ratio",))  # +inf where the output did not change at all
    computed = chunks.run_chunks(workdir, setup.slices, compute, progress, check)
    summary = None
    if jax.process_index() == 0:
        summary = sweep_report.invariance_report(workdir, loaded, setup.compared,
                                                 len(setup.slices), config, setup.notes)
    return {"computed": computed, "chunks": len(setup.slices), "summary": summary,
            "report": os.path.join(workdir, "report")}
