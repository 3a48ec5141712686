"""The report of a natural-invariance run, beside the image-domain search on the same images.

In `<workdir>/report/`:

    samples.npz         images [N, H, W] (x, HU), x_inv [N, S, H, W] (the generator's samples,
                        HU), noise [M, h, w] (low minus routine dose patches of the same data,
                        HU) and, when the search ran, search_x_inv [N, R, H, W]
                        (config.report.search_starts random starts): every number below can be
                        recomputed from it
    summary.json|csv|md per method (natural, search): input_rms_hu, output_rms_hu, ratio,
                        input_ssim, diversity, spectral_distance and, for gauss_ri,
                        inside_outside_ratio (`ldct_jax.analysis.invariance_metrics`)
    figures/image<i>.png  x, samples x + x_inv (and the search's), f(x), f(x + x_inv), x_inv and
                        f(x + x_inv) - f(x), the differences at 0/100 HU
    spectra.png         the radially averaged power spectra of x_inv (natural, search) and of
                        the real low-dose noise
    index.html          all of it on one page
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from ldct_jax import files, models
from ldct_jax.analysis import invariance_metrics, natural, search
from ldct_jax.data import sampling
from ldct_jax.data.scan import Scan
from ldct_jax.jobs import html_report, invariance, report, sweep_report
from ldct_jax.jobs.inputs import Images

COLUMNS = ("model", "method", "distance", "lam", "input_rms_hu", "output_rms_hu", "ratio",
           "input_ssim", "diversity", "spectral_distance", "inside_outside_ratio")
# Samples per image shown in a figure.
FIGURE_SAMPLES = 3


def noise_patches(scans: Sequence[Scan], n: int, size: int, seed: int) -> np.ndarray:
    """`n` patches of low minus routine dose, `[n, size, size]` HU, drawn like training
    patches (every patient equally likely)."""
    b = sampling.sample_batch(scans, 0, global_batch=n, patch_size=size, seed=seed + 0x7015E)
    return (b["low"] - b["full"]).astype(np.float32)


def search_samples(config: Any, denoiser: models.Denoiser, images: np.ndarray, samples: int,
                   mesh) -> np.ndarray:
    """The image-domain search's x_inv for the same images, loss (distance, lambda) and
    number of samples (random starts, seeds 0..S-1): `[N, S, H, W]` HU."""
    rows = search.grid(len(images), [config.loss.lam], [config.loss.distance],
                       list(range(samples)))
    searcher = search.Searcher(denoiser.spec, [config.loss.distance],
                               invariance.options_from(config), None, mesh)
    result = searcher.run(denoiser.params, images, rows)
    return result.perturbation.reshape((len(images), samples) + images.shape[1:])


def _outputs(denoiser: models.Denoiser, images: np.ndarray, x_inv: np.ndarray,
             mesh) -> np.ndarray:
    n, s = x_inv.shape[:2]
    perturbed = (images[:, None] + x_inv).reshape((n * s,) + images.shape[1:])
    y = models.denoise(denoiser.spec, denoiser.params, perturbed, mesh=mesh)
    return y.reshape(x_inv.shape)


def write(workdir: str, config: Any, denoiser: models.Denoiser, generator: natural.Generator,
          images: Images, scans: Sequence[Scan], mesh) -> list[dict]:
    """Samples the generator on `images`, runs the search beside it (config.report.search),
    writes report/ and prints its table.

    Returns:
      The summary records, one per method.
    """
    x, anatomy, source = images
    report_dir = os.path.join(workdir, "report")
    s = config.samples.num_samples
    x_inv = {"natural": natural.sample_sharded(generator, x, jax.random.key(config.samples.seed),
                                               s, mesh=mesh,
                                               batch_size=config.samples.batch_size)}
    if config.report.search:
        x_inv["search"] = search_samples(config, denoiser, x, config.report.search_starts, mesh)
    noise = noise_patches(scans, config.report.noise_patches, config.report.noise_patch_size,
                          config.seed)
    module = denoiser.spec.module  # gauss_ri's square and kernel radius: the known answer
    square = dict(square=module.square, margin=module.radius) if denoiser.name == "gauss_ri" \
        else {}
    out_x = models.denoise(denoiser.spec, denoiser.params, x, mesh=mesh)
    summary = []
    for method, inv in x_inv.items():
        out = _outputs(denoiser, x, inv, mesh)
        numbers = invariance_metrics.summary(x, inv, out_x, out, noise=noise, **square)
        summary.append(dict(model=config.model, method=method, distance=config.loss.distance,
                            lam=config.loss.lam, **numbers))
    os.makedirs(report_dir, exist_ok=True)
    arrays = dict(images=x, x_inv=x_inv["natural"], noise=noise)
    if "search" in x_inv:
        arrays["search_x_inv"] = x_inv["search"]
    with files.atomic_file(os.path.join(report_dir, "samples.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    files.write_json(os.path.join(report_dir, "summary.json"),
                     {"summary": summary, "images": list(source), "anatomy": list(anatomy)})
    files.write_csv(os.path.join(report_dir, "summary.csv"), summary)
    cells = [[r.get(c, "") for c in COLUMNS] for r in summary]
    title = f"Natural invariances of {config.model}"
    files.write_text(os.path.join(report_dir, "summary.md"),
                     f"# {title}\n\n" + report.markdown_table(COLUMNS, cells))
    figures = [_spectra(report_dir, x_inv, noise)]
    for i in range(len(x)):
        figures.append(_image_figure(report_dir, denoiser, x[i], x_inv, i,
                                     f"{config.model}: natural invariances, image {i} "
                                     f"({source[i]}, {anatomy[i]})", anatomy[i]))
    html_report.write(report_dir, title, COLUMNS, summary, figures, settings=config.to_dict())
    print(f"\n{title} (HU; ratio = input RMS / output RMS; {s} samples per image)\n"
          f"{report.format_table(COLUMNS, cells)}\nreport: {report_dir}")
    return summary


def _spectra(report_dir: str, x_inv: dict[str, np.ndarray], noise: np.ndarray
             ) -> html_report.Figure:
    curves = {f"x_inv ({method})": invariance_metrics.radial_power_spectrum(inv)
              for method, inv in x_inv.items()}
    curves["low - routine dose"] = invariance_metrics.radial_power_spectrum(noise)
    # Frequency 0 holds only what the per-image mean left: off a log axis.
    curves = {k: (f[1:], p[1:]) for k, (f, p) in curves.items()}
    path = os.path.join(report_dir, "spectra.png")
    plot = report.Plot("radially averaged power spectrum (HU^2 px)", curves,
                       xlabel="cycles / px", log_y=True)
    report.save_panels(path, [[plot]], panel_size=5.0)
    return html_report.Figure("Power spectra of x_inv and of the low-dose noise", png=path)


def _image_figure(report_dir: str, denoiser: models.Denoiser, x: np.ndarray,
                  x_inv: dict[str, np.ndarray], i: int, title: str,
                  anatomy: str) -> html_report.Figure:
    perturbed = [x + v for v in x_inv["natural"][i, :FIGURE_SAMPLES]]
    labels = [f"sample {k}" for k in range(len(perturbed))]
    if "search" in x_inv:
        perturbed.append(x + x_inv["search"][i, 0])
        labels.append("image-domain search")
    rows = sweep_report.figure_rows(denoiser, x, perturbed, labels, anatomy)
    report.save_panels(os.path.join(report_dir, "figures", f"image{i}.png"), rows, title=title)
    return html_report.Figure(title, rows)
