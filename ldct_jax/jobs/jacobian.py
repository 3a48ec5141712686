"""The Jacobian job: `python launch/main.py --config=configs/jacobian.py:<model>[,quick]`.

For every image, both ends of the singular spectrum of the denoiser's Jacobian
(`ldct_jax.analysis.jacobian`), in chunks of `config.images_per_chunk` images that a restarted
run does not redo, then in the workdir:

    manifest.json, inputs/      as the sweeps (a run with other settings here is refused)
    chunks/00000/               values, vectors and residuals of the chunk's images
    report/spectrum.npz         images [N, H, W] (HU); smallest_values, largest_values [N, k];
                                smallest_vectors, largest_vectors [N, k, H, W] (unit vectors);
                                residuals [N, 2k] (||J^T J v - s^2 v|| / ||J||^2, largest first)
    report/summary.csv|md|json  per image: ||J||, the k-th largest and the smallest singular
                                value, the pairs converged, iterations, J products, seconds
    report/figures/image<i>.png x, f(x), the first smallest and largest singular vectors, and
                                the two ends of the spectrum on a log axis
    report/index.html           the summary table (sortable) and the figures on one page
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from ldct_jax import ct, files, models, parallel
from ldct_jax.analysis import jacobian
from ldct_jax.jobs import chunks, html_report, inputs, report, sweep_report

COLUMNS = ("model", "image_index", "source", "norm", "largest_k", "smallest_1", "smallest_k",
           "converged", "iterations_largest", "iterations_smallest", "products", "seconds")
ARRAYS = ("largest_values", "largest_vectors", "smallest_values", "smallest_vectors",
          "residuals")


def options_from(config: Any) -> jacobian.SpectrumOptions:
    """config's k, extra, iterations, tolerances and seed as `SpectrumOptions`."""
    try:
        return jacobian.SpectrumOptions(
            k=config.k, extra=config.extra, iterations=config.iterations,
            tolerance=config.tolerance, smallest_tolerance=config.smallest_tolerance or None,
            seed=config.seed)
    except ValueError as e:
        raise ValueError(f"config (k, extra, iterations, tolerance, smallest_tolerance): {e}"
                         ) from None


def run(config: Any, workdir: str) -> dict[str, Any]:
    """Runs (or finishes) the spectra in `workdir` and writes the report.

    Returns:
      {'computed': chunk indices computed by this call, 'chunks', 'summary', 'report'}.
    """
    parallel.maybe_initialize_distributed(config.distributed)
    options = options_from(config)
    if config.images_per_chunk < 1:
        raise ValueError(f"config.images_per_chunk={config.images_per_chunk}; expected >= 1")
    raw_mask = inputs.read_mask(config)
    loaded = inputs.load(config, workdir)
    mask = inputs.fit_mask(config, raw_mask, loaded.images.shape)
    try:
        jacobian.check_inputs(loaded.images.shape, options.k, options.extra, mask)
    except ValueError as e:
        raise ValueError(f"config.k={config.k}: {e}") from None
    loaded.start(config, workdir, {"mask": mask})
    mesh = parallel.make_mesh(config.num_devices or None)
    slices = chunks.split(len(loaded.images), config.images_per_chunk)
    todo = sum(not chunks.is_done(workdir, i) for i in range(len(slices)))
    progress = chunks.Progress(len(slices), todo, 1, f"jacobian {config.model}",
                               config.progress_bar, unit="chunk")

    def compute(index: int, rows: slice, callback):
        idx = np.arange(rows.start, rows.stop)
        s = jacobian.spectrum(loaded.denoiser, loaded.images[idx],
                              mask=None if mask is None else mask[idx], options=options,
                              mesh=mesh, image_ids=idx)
        callback(1)
        records = [dict(row=int(i), image_index=int(i), model=config.model,
                        source=loaded.source[i], norm=float(s.largest_values[j, 0]),
                        largest_k=float(s.largest_values[j, -1]),
                        smallest_1=float(s.smallest_values[j, 0]),
                        smallest_k=float(s.smallest_values[j, -1]),
                        converged=f"{int(s.converged[j].sum())}/{2 * options.k}",
                        iterations_largest=int(s.iterations[j, 0]),
                        iterations_smallest=int(s.iterations[j, 1]),
                        products=int(s.products[j]), seconds=s.seconds / len(idx))
                   for j, i in enumerate(idx)]
        arrays = {k: getattr(s, k).astype(np.float32) for k in ARRAYS}
        return arrays, records, {"seconds": s.seconds}

    check = chunks.FiniteCheck(("row", "image_index"),
                               "Check the model (config.checkpoint) and the images.")
    computed = chunks.run_chunks(workdir, slices, compute, progress, check)
    summary = None
    if jax.process_index() == 0:
        summary = write_report(workdir, loaded, len(slices), config)
    return {"computed": computed, "chunks": len(slices), "summary": summary,
            "report": os.path.join(workdir, "report")}


def write_report(workdir: str, study: inputs.Inputs, num_chunks: int, config: Any
                 ) -> list[dict]:
    """report/spectrum.npz, the summary table and a figure per image; returns the records."""
    report_dir = os.path.join(workdir, "report")
    arrays, records = sweep_report.gather(workdir, num_chunks, ARRAYS)
    with files.atomic_file(os.path.join(report_dir, "spectrum.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=study.images, **arrays)
    text = sweep_report.write_tables(report_dir, records, records, records, COLUMNS,
                                     "Jacobian spectrum: what the network keeps and ignores")
    print(f"\nJacobian spectrum, {config.model}, k={config.k} (singular values of J in HU/HU)"
          f"\n{text}")
    figures = []
    if config.report.figures:
        fig_dir = os.path.join(report_dir, "figures")
        y = models.denoise(study.denoiser.spec, study.denoiser.params, study.images,
                           mesh=parallel.local_mesh())
        for i, x in enumerate(study.images):
            path = os.path.join(fig_dir, f"image{i}.png")
            win = ct.window_for(study.anatomy[i])
            small, large = arrays["smallest_vectors"][i, 0], arrays["largest_vectors"][i, 0]
            vec = lambda v: (0.0, 2.0 * float(np.abs(v).max()) or 1.0)  # noqa: E731
            s_small, s_large = arrays["smallest_values"][i], arrays["largest_values"][i]
            title = f"{config.model}: Jacobian at image {i} ({study.anatomy[i]})"
            report.save_panels(path, [[
                report.Panel(f"x ({study.source[i]})", x, win),
                report.Panel("f(x)", y[i], win),
                report.Panel(f"smallest: s = {s_small[0]:.3g}", small, vec(small)),
                report.Panel(f"largest: s = {s_large[0]:.3g}", large, vec(large)),
                report.Plot("singular values of J", {
                    "largest": (np.arange(1, len(s_large) + 1), s_large),
                    "smallest": (np.arange(1, len(s_small) + 1), s_small)},
                    xlabel="rank from each end", log_y=True),
            ]], title=title)
            figures.append(html_report.Figure(title, png=path))
    html_report.write(report_dir, f"Jacobian spectrum of {config.model}", COLUMNS, records,
                      figures, settings=config.to_dict())
    print(f"report: {report_dir}")
    return records

