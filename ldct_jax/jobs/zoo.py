"""The zoo comparison: `python launch/main.py --config=configs/zoo.py[:quick]`.

Runs the same invariance grid (distances x lambdas x images x seeds, the same search options)
over several denoisers on the same images, each as an invariance sweep of its own, and
compares them by what they ignore. In the workdir:

    inputs/images.npy, images.json   the images every model is searched on (HU)
    models/<model>/                  that model's invariance sweep (ldct_jax.jobs.invariance:
                                     chunks, report/); resumable, and refused when its
                                     settings change
    report/ranking.csv|json|md       per distance and lambda, the models ranked by `ratio`:
                                     the input change they ignore (RMS HU) per HU of output
                                     change, so at equal output change
    report/summary.json              every model's summary records, as its sweep wrote them
    report/figures/image<i>_<distance>.png   x and every model's x_inv on the same image, one
                                     row per lambda (config.report.figure_image)
    report/changes.png               output change against input change, a marker per model
    report/index.html                all of it on one self-contained page, linking each
                                     model's own report

Every model is loaded and checked against the images before the first search starts.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from ldct_jax import ct, files, models, parallel
from ldct_jax.jobs import chunks, html_report, inputs, invariance, report, sweep_report
from ldct_jax.jobs import configs as configs_lib

RANKING_COLUMNS = ("distance", "lam", "rank", "model", "n", "input_rms_hu", "output_rms_hu",
                   "ratio", "input_ssim", "input_max_hu", "output_max_hu")
# The fields of a zoo config that a per-model sweep config does not have.
_ZOO_ONLY = ("models", "checkpoints")


def model_config(config: Any, model: str) -> ml_collections.ConfigDict:
    """The invariance sweep config of `model` within the zoo `config` (its grid, search and
    data, the model's checkpoint)."""
    d = config.to_dict()
    for k in _ZOO_ONLY:
        d.pop(k)
    d["report"].pop("figure_image")
    d.update(job="invariance", model=model, checkpoint=config.checkpoints.get(model, ""),
             model_config={})
    d["report"]["compare"] = ()
    c = ml_collections.ConfigDict(d)
    c.lock()
    return c


def check_models(config: Any) -> list[str]:
    """config.models: a non-empty list of distinct registered denoisers (or aliases)."""
    given = [str(m) for m in config.models]
    if not given:
        raise ValueError("config.models is empty; name the denoisers to compare, e.g. "
                         "--config.models='(\"cnn10\", \"redcnn\")'")
    for m in given:
        try:
            models.canonical(m)
        except ValueError as e:
            raise ValueError(f"config.models: {e}") from None
    names = [models.canonical(m) for m in given]
    if len(set(names)) < len(names):
        raise ValueError(f"config.models={tuple(given)} names a model twice")
    unknown = sorted(set(config.checkpoints) - set(models.ARCHITECTURES))
    if unknown:
        raise ValueError(f"config.checkpoints: {unknown} are not denoisers")
    return names


def prepare(config: Any, workdir: str) -> tuple[list[str], dict[str, Any], inputs.Images]:
    """Checks every model and the grid and loads the images, before any search.

    Returns:
      (model names, their per-model sweep configs, the images).
    """
    names = check_models(config)
    configs = {m: model_config(config, m) for m in names}
    invariance.check_grid(configs[names[0]])
    invariance.options_from(configs[names[0]], configs[names[0]].lambdas)
    for m in names:  # before the images: a wrong checkpoint fails before the data is read
        c = configs[m]
        inputs.load_denoiser(m, c.checkpoint, {}, c.seed, key=f"checkpoints.{m}")
    images = inputs.load_images(configs[names[0]], workdir)
    for m in names:
        with configs_lib.naming("models", tuple(config.models)):
            models.check_input_size(m, images[0].shape)
    return names, configs, images


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Runs (or finishes) every model's sweep in `workdir/models/` and writes the comparison.

    Returns:
      {'models': the names, 'ranking': the ranking records, 'report': the report directory}.
    """
    parallel.maybe_initialize_distributed(config.distributed)
    names, configs, images = prepare(config, workdir)
    if jax.process_index() == 0:
        files.write_npy(os.path.join(workdir, "inputs", "images.npy"), images[0])
        files.write_json(os.path.join(workdir, "inputs", "images.json"),
                         {"anatomy": list(images[1]), "source": list(images[2])})
    for m in names:
        print(f"\n== {m}")
        invariance.run(configs[m], os.path.join(workdir, "models", m), images)
    ranking = None
    if jax.process_index() == 0:
        ranking = write_report(workdir, names, configs, images, config)
    return {"models": names, "ranking": ranking, "report": os.path.join(workdir, "report")}


def rank(summaries: Sequence[dict]) -> list[dict]:
    """Per (distance, lambda), the summary records ranked by `ratio`, largest first (rank 1:
    the model that ignores the largest input change per HU of output change)."""
    groups: dict[tuple, list[dict]] = {}
    for s in summaries:
        groups.setdefault((s["distance"], s["lam"]), []).append(s)
    out = []
    for key in sorted(groups):
        for i, s in enumerate(sorted(groups[key], key=lambda s: -s["ratio"])):
            out.append({**{c: s.get(c) for c in RANKING_COLUMNS}, "rank": i + 1})
    return out


def write_report(workdir: str, names: Sequence[str], configs: dict[str, Any],
                 images: inputs.Images, config: Any) -> list[dict]:
    """report/ of the comparison from the models' finished sweeps; returns the ranking."""
    report_dir = os.path.join(workdir, "report")
    summaries = []
    for m in names:
        path = os.path.join(workdir, "models", m, "report", "summary.json")
        summaries += files.read_json(path)["summary"]
    ranking = rank(summaries)
    files.write_json(os.path.join(report_dir, "summary.json"), {"summary": summaries})
    files.write_json(os.path.join(report_dir, "ranking.json"), ranking)
    files.write_csv(os.path.join(report_dir, "ranking.csv"), ranking)
    cells = [[r[c] for c in RANKING_COLUMNS] for r in ranking]
    title = "Which network ignores the most: input change per HU of output change"
    files.write_text(os.path.join(report_dir, "ranking.md"),
                     f"# {title}\n\n" + report.markdown_table(RANKING_COLUMNS, cells))
    print(f"\n{title} (ratio = input RMS / output RMS, mean over images and seeds)\n"
          + report.format_table(RANKING_COLUMNS, cells))

    figures = [sweep_report.changes_plot(
        report_dir, summaries, ("distance",), lambda r: f"{r['lam']:.0e}",
        "Output change against input change per distance and lambda, every model")]
    i = config.report.figure_image
    if config.report.figures and 0 <= i < len(images[0]):
        for dist in config.distances:
            rows = side_by_side(workdir, names, configs, images, i, str(dist))
            fig_title = (f"x_inv of every model, d_in = {dist}, image {i} ({images[2][i]}, "
                         f"{images[1][i]})")
            # Redrawn on every run: the models shown may have changed since the last.
            sweep_report.figure(os.path.join(report_dir, "figures", f"image{i}_{dist}.png"),
                                rows, fig_title, figures, redraw=True)
    html_report.write(report_dir, "Invariances of " + ", ".join(names), RANKING_COLUMNS,
                      ranking, figures, settings=config.to_dict(),
                      links=[(m, f"../models/{m}/report/index.html") for m in names])
    print(f"report: {report_dir}")
    return ranking


def side_by_side(workdir: str, names: Sequence[str], configs: dict[str, Any],
                 images: inputs.Images, image: int, distance: str
                 ) -> list[list[report.Panel]]:
    """One row per lambda: x, then each model's x_inv on image `image` (the first seed)."""
    x, anatomy = images[0][image], images[1][image]
    # Each sweep's records and x_inv, read from its finished chunks.
    found = {}
    for m in names:
        c = configs[m]
        sweep = os.path.join(workdir, "models", m)
        n = len(invariance.grid(c, len(images[0])).lam)
        arrays, records = sweep_report.gather(
            sweep, len(chunks.split(n, c.rows_per_chunk)), ["perturbation"])
        for r in records:
            if (r["image_index"], r["distance"], r["seed"]) == (image, distance, c.seeds[0]):
                found[(r["lam"], m)] = (arrays["perturbation"][r["row"]], r)
    rows = []
    for lam in sorted({lam for lam, _ in found}):
        row = [report.Panel(f"x (x_inv of lambda={lam:.3g} beside it)", x,
                            ct.window_for(anatomy))]
        shown = [m for m in names if (lam, m) in found]
        # One window for the row, so that the models' x_inv compare by eye.
        window = report.perturbation_window(*(np.asarray(found[(lam, m)][0]) for m in shown))
        for m in shown:
            dx, r = found[(lam, m)]
            row.append(report.Panel(
                f"{m}: x_inv {r['input_rms_hu']:.3g} HU RMS, output change "
                f"{r['output_rms_hu']:.3g}", np.asarray(dx), window))
        rows.append(row)
    return rows
