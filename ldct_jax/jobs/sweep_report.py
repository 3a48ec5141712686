"""The end-of-sweep report: every row, a summary table, and figures in the slides' layout.

Figures: one per image and distance (attacks: per image and method), one row per lambda
(budget): x, x + x_inv, f(x), f(x + x_inv) in the image's anatomy window, then x_inv in a
window sized to it (`report.perturbation_window`) and f(x + x_inv) - f(x) in the difference
window (0/100 HU). A plot of output change against
input change for every summary row (report/changes.png), and report/index.html, the page that
holds it all (`html_report`).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ldct_jax import ct, files, models, parallel
from ldct_jax.analysis import search
from ldct_jax.jobs import chunks, html_report, report
from ldct_jax.jobs.inputs import Inputs
from ldct_jax.models.denoiser import Denoiser

INVARIANCE_COLUMNS = ("model", "distance", "lam", "n", "input_rms_hu", "input_max_hu",
                      "input_ssim", "output_rms_hu", "output_max_hu", "ratio")
ATTACK_COLUMNS = ("model", "method", "targeted", "epsilon_hu", "n", "input_max_hu",
                  "input_rms_hu", "output_rms_hu", "output_max_hu", "target_rms_hu",
                  "target_rms_hu_clean", "amplification")


def gather(workdir: str, num_chunks: int, arrays: Sequence[str]
           ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """All chunks' arrays (concatenated along rows) and records, in row order."""
    parts = [chunks.read_chunk(workdir, i, arrays) for i in range(num_chunks)]
    out = {k: np.concatenate([p[0][k] for p in parts]) for k in arrays}
    return out, _lam_as_written([r for p in parts for r in p[1]["rows"]])


def _lam_as_written(records: list[dict]) -> list[dict]:
    """`records` read from disk, lambda as written: files of earlier versions hold float32's
    0.009999999776 for 0.01."""
    for r in records:
        if "lam" in r:
            r["lam"] = search.lam_as_written(r["lam"])
    return records


def summarise(records: Sequence[Mapping[str, Any]], keys: Sequence[str],
              metrics: Sequence[str]) -> list[dict]:
    """Mean of `metrics` over every row of each group of equal `keys` (first-seen order), with
    the group's row count `n`. A metric no row of a group has is None.

    Raises:
      ValueError: a metric that is missing or not finite in some rows of a group (the chunks
        are checked when written, so this means a chunk was changed since).
    """
    groups: dict[tuple, list] = collections.OrderedDict()
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key), n=len(rs))
        for m in metrics:
            values = [r.get(m) for r in rs]
            if all(v is None for v in values):
                row[m] = None
                continue
            bad = [r["row"] for r, v in zip(rs, values) if v is None or not np.isfinite(v)]
            if bad:
                raise ValueError(f"{m} is missing or not finite in rows {bad} "
                                 f"({dict(zip(keys, key))}); were the chunks changed after "
                                 "they were written?")
            row[m] = float(np.mean(np.asarray(values, np.float64)))
        out.append(row)
    return out


def load_compared(workdirs: Sequence[str], keys: Sequence[str]) -> list[dict]:
    """The summary records of other sweeps of the same kind (their report/summary.json, each
    record with `keys` and a model, and `sweep`: the workdir it was read from), read before a
    sweep starts so that a wrong path fails at once."""
    out = []
    for w in workdirs:
        path = os.path.join(w, "report", "summary.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.report.compare: {path} does not exist (run that "
                                    "sweep to its end first)")
        try:
            records = _lam_as_written(files.read_json(path)["summary"])
            for r in records:
                missing = [k for k in ("model", *keys) if k not in r]
                if missing:
                    raise ValueError(f"a record without {missing}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"config.report.compare: {path} is not the summary of a sweep of "
                             f"this kind (records with model, {', '.join(keys)}): {e}") from None
        out += [dict(r, sweep=w) for r in records]
    return out


def with_compared(workdir: str, summary: Sequence[Mapping[str, Any]],
                  compared: Sequence[Mapping[str, Any]], columns: Sequence[str]
                  ) -> tuple[list[dict], tuple[str, ...]]:
    """The report's table and columns: this sweep's `summary` rows, then the `compared` rows of
    `load_compared`; with compared rows, a last column `sweep` names each row's workdir."""
    if not compared:
        return [dict(r) for r in summary], tuple(columns)
    return [dict(r, sweep=workdir) for r in summary] + list(compared), (*columns, "sweep")


def write_tables(report_dir: str, records: Sequence[Mapping[str, Any]],
                 summary: Sequence[Mapping[str, Any]], table: Sequence[Mapping[str, Any]],
                 columns: Sequence[str], title: str, extra: Optional[Mapping] = None) -> str:
    """results.csv/json (every row), summary.json (this sweep's `summary`: what another sweep's
    report.compare reads), summary.csv/md (the `table`: with the compared sweeps' rows, its
    `columns` first); returns the printed text table."""
    files.write_csv(os.path.join(report_dir, "results.csv"), list(records))
    files.write_json(os.path.join(report_dir, "results.json"), list(records))
    files.write_json(os.path.join(report_dir, "summary.json"),
                     {"summary": list(summary), **dict(extra or {})})
    files.write_csv(os.path.join(report_dir, "summary.csv"),
                    [{**{c: r[c] for c in columns if c in r}, **r} for r in table])
    cells = [[r.get(c, "") for c in columns] for r in table]
    files.write_text(os.path.join(report_dir, "summary.md"),
                     f"# {title}\n\n" + report.markdown_table(columns, cells))
    return report.format_table(columns, cells)


def figure_rows(denoiser: Denoiser, x: np.ndarray, perturbed: Sequence[np.ndarray],
                labels: Sequence[str], anatomy: str,
                names: Sequence[str] = ("x + x_inv", "x_inv"),
                target: Optional[np.ndarray] = None) -> list[list[report.Panel]]:
    """One figure's panels: one row per perturbed image, the slides' six panels.

    Args:
      denoiser: f.
      x: the image, HU `[H, W]`.
      perturbed: x + perturbation per row, HU `[H, W]` each.
      labels: a row label each (e.g. 'lambda=1e-4'), shown in the perturbed panel's title.
      anatomy: picks the window of the image panels.
      names: how the perturbed image and the perturbation are called.
      target: a targeted attack's output image (HU), shown as a seventh panel.
    """
    win = ct.window_for(anatomy)
    stack = np.stack([x] + list(perturbed)).astype(np.float32)
    # Process 0 draws alone: on its own devices, not in a collective over every host.
    y = models.denoise(denoiser.spec, denoiser.params, stack, mesh=parallel.local_mesh())
    rows = []
    for k, (xp, label) in enumerate(zip(perturbed, labels)):
        dx, dy = xp - x, y[k + 1] - y[0]
        rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
        rows.append([
            report.Panel("x", x, win),
            report.Panel(f"{names[0]}, {label}", xp, win),
            report.Panel("f(x)", y[0], win),
            report.Panel(f"f({names[0]})", y[k + 1], win),
            report.Panel(f"{names[1]}: {rms(dx):.3g} HU RMS", dx, report.perturbation_window(dx)),
            report.Panel(f"f({names[0]}) - f(x): {rms(dy):.3g} HU RMS", dy, "diff"),
        ] + ([report.Panel(f"target: {rms(y[k + 1] - target):.3g} HU RMS away", target, win)]
             if target is not None else []))
    return rows


def figure(path: str, rows: Sequence[Sequence[report.Panel]], title: str,
           figures: list[html_report.Figure], redraw: bool = False) -> None:
    """Writes `rows` to the PNG `path` unless it exists (a sweep's figures depend only on its
    finished chunks, written atomically) or `redraw`, and adds them to the page's `figures`."""
    if redraw or not os.path.exists(path):
        report.save_panels(path, rows, title=title)
    figures.append(html_report.Figure(title, rows))


def changes_plot(report_dir: str, table: Sequence[Mapping[str, Any]], series: Sequence[str],
                 label: Callable[[Mapping[str, Any]], str], title: str) -> html_report.Figure:
    """report/changes.png: mean output change against mean input change (RMS HU) of every
    summary row, a marker per model, a colour per `series` value."""
    path = report.save_scatter(
        os.path.join(report_dir, "changes.png"),
        [report.Point(r["input_rms_hu"], r["output_rms_hu"], r["model"],
                      " ".join(_series_name(k, r[k]) for k in series), label(r))
         for r in table],
        "input change, RMS HU (mean over images)", "output change, RMS HU", title)
    return html_report.Figure(title, png=path)


def _series_name(key: str, value: Any) -> str:
    """A legend's word for a value: a flag by its name ('targeted' / 'untargeted')."""
    if isinstance(value, (bool, np.bool_)):
        return key if value else f"un{key}"
    return str(value)


def invariance_report(workdir: str, study: Inputs, compared: Sequence[Mapping[str, Any]],
                      num_chunks: int, config: Any, notes: Mapping[str, str]) -> list[dict]:
    """Writes report/ for a finished invariance sweep and prints its table.

    Returns:
      The summary records of this sweep.
    """
    denoiser, images, anatomy, source = (study.denoiser, study.images, study.anatomy,
                                         study.source)
    report_dir = os.path.join(workdir, "report")
    arrays, records = gather(workdir, num_chunks, ["perturbation"])
    metrics = [c for c in INVARIANCE_COLUMNS[4:] if c != "ratio"]
    summary = summarise(records, ("model", "distance", "lam"), metrics)
    for s in summary:  # ratio of the means: robust where some outputs did not change at all
        s["ratio"] = s["input_rms_hu"] / s["output_rms_hu"] if s["output_rms_hu"] else float("inf")
    table, columns = with_compared(workdir, summary, compared, INVARIANCE_COLUMNS)
    table = sorted(table, key=lambda r: (r["distance"], r["lam"], r["model"]))
    random_vgg = "RANDOM INIT" in notes.get("vgg16", "")
    text = write_tables(report_dir, records, summary, table, columns,
                        "Invariances: how large an input change each network ignores",
                        {"notes": dict(notes)})
    print(f"\ninvariance sweep, {config.model}: mean over images and seeds "
          f"(input/output change in HU, ratio = input RMS / output RMS)\n{text}")
    if random_vgg:
        print(f"vgg16: {notes['vgg16']}")

    figures = [changes_plot(report_dir, table, ("distance",), lambda r: f"{r['lam']:.0e}",
                            "Output change against input change per distance and lambda")]
    if config.report.figures:
        seed = config.seeds[0] if config.report.figure_seed < 0 else config.report.figure_seed
        fig_dir = os.path.join(report_dir, "figures")
        for i in range(len(images)):
            for dist in config.distances:
                picked = sorted((r for r in records if r["image_index"] == i
                                 and r["distance"] == dist and r["seed"] == seed),
                                key=lambda r: r["lam"])
                if not picked:
                    continue
                title = (f"{denoiser.name}, d_in = {dist}, image {i} ({source[i]}, "
                         f"{anatomy[i]}), seed {seed}")
                if config.search.sensitivity:
                    title = "sensitivity search (sign of L turned): " + title
                if dist == "vgg16" and random_vgg:
                    title += " (VGG RANDOM INIT)"
                name = f"image{i}_{dist}" + ("" if seed == config.seeds[0] else f"_seed{seed}")
                rows = figure_rows(denoiser, images[i],
                                   [images[i] + arrays["perturbation"][r["row"]] for r in picked],
                                   [f"lambda={r['lam']:.3g}" for r in picked], anatomy[i])
                figure(os.path.join(fig_dir, name + ".png"), rows, title, figures)
    html_report.write(report_dir, f"Invariances of {config.model}", columns, table,
                      figures, settings=config.to_dict())
    print(f"report: {report_dir}")
    return summary


def attack_report(workdir: str, study: Inputs, compared: Sequence[Mapping[str, Any]],
                  target: Optional[np.ndarray], num_chunks: int, config: Any) -> list[dict]:
    """Writes report/ for a finished attack sweep and prints its table; returns its summary."""
    denoiser, images, anatomy, source = (study.denoiser, study.images, study.anatomy,
                                         study.source)
    report_dir = os.path.join(workdir, "report")
    arrays, records = gather(workdir, num_chunks, ["perturbation"])
    metrics = [c for c in ATTACK_COLUMNS[5:] if c != "amplification"]
    summary = summarise(records, ("model", "method", "targeted", "epsilon_hu"), metrics)
    for s in summary:
        s["amplification"] = (s["output_rms_hu"] / s["input_rms_hu"] if s["input_rms_hu"]
                              else float("nan"))
    table, columns = with_compared(workdir, summary, compared, ATTACK_COLUMNS)
    table = sorted(table, key=lambda r: (r["method"], r["targeted"], r["epsilon_hu"],
                                         r["model"]))
    text = write_tables(report_dir, records, summary, table, columns,
                        "Adversarial attacks: output change per input budget")
    kind = "targeted" if target is not None else "untargeted"
    print(f"\n{kind} attacks, {config.model}: mean over images (HU; amplification = output "
          f"RMS / input RMS)\n{text}")
    figures = [changes_plot(report_dir, table, ("method", "targeted"),
                            lambda r: f"{r['epsilon_hu']:g}",
                            "Output change against input change per method and budget (HU)")]
    if config.report.figures:
        fig_dir = os.path.join(report_dir, "figures")
        for i in range(len(images)):
            for method in config.methods:
                picked = sorted((r for r in records if r["image_index"] == i
                                 and r["method"] == method), key=lambda r: r["epsilon_hu"])
                title = (f"{denoiser.name}, {kind} {method.upper()}, image {i} ({source[i]}, "
                         f"{anatomy[i]})")
                adv = [np.clip(images[i] + arrays["perturbation"][r["row"]], ct.HU_MIN,
                               ct.HU_MAX) for r in picked]
                rows = figure_rows(denoiser, images[i], adv,
                                   [f"eps={r['epsilon_hu']:.3g} HU" for r in picked],
                                   anatomy[i], names=("x_adv", "delta"),
                                   target=None if target is None else target[i])
                figure(os.path.join(fig_dir, f"image{i}_{method}.png"), rows, title, figures)
    html_report.write(report_dir, f"{kind.capitalize()} attacks on {config.model}",
                      columns, table, figures, settings=config.to_dict())
    print(f"report: {report_dir}")
    return summary
