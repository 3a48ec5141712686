"""Figures and tables as CT researchers read them: images in display windows, aligned tables.

Figures use matplotlib's object API (`Figure` with an Agg canvas), so importing or using this
module leaves a notebook's plotting backend alone. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from ldct_jax import ct, files


@dataclasses.dataclass(frozen=True)
class Panel:
    """One image of a figure: `image` in HU shown in `window` (a name of ct.WINDOWS or (c, w))."""

    title: str
    image: np.ndarray
    window: ct.Window


def perturbation_window(*images: np.ndarray) -> tuple[float, float]:
    """A window (centre 0, width) that shows perturbations of any size: +-3 RMS of the largest
    one (at most its largest |value|), rounded up to 1, 2 or 5 x 10^k HU.

    The difference window (+-50 HU) suits output changes; an invariance can be hundreds of HU
    RMS and an attack's delta 1 HU, and either is lost in it."""
    half = max(min(3.0 * float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))),
                   float(np.max(np.abs(a)))) for a in images)
    if not half > 0:
        return 0.0, 2.0
    unit = 10.0 ** np.floor(np.log10(half))
    return 0.0, 2.0 * next(m * unit for m in (1, 2, 5, 10) if m * unit >= half * (1 - 1e-9))


@dataclasses.dataclass(frozen=True)
class Plot:
    """A panel of curves: `{label: (x, y)}`, optionally on a log y axis."""

    title: str
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]]
    xlabel: str = ""
    log_y: bool = False


def save_panels(path: str, rows: Sequence[Sequence[Union[Panel, Plot]]],
                title: Optional[str] = None, panel_size: float = 3.0) -> str:
    """Writes a grid of windowed CT images (and plots) to `path` (PNG or PDF), atomically.

    Args:
      path: output file; its extension picks the format.
      rows: the grid, row by row, of `Panel`s and `Plot`s; rows may differ in length.
      title: figure title (e.g. the model and the distance, or 'VGG RANDOM INIT').
      panel_size: inches per panel.

    Returns:
      `path`.
    """
    ncols = max(len(r) for r in rows)
    fig = _figure(panel_size * ncols, panel_size * len(rows))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            panel = row[c]
            if isinstance(panel, Plot):
                ax.axis("on")
                for label, (x, y) in panel.curves.items():
                    ax.plot(x, y, ".-", label=label)
                if panel.log_y:
                    ax.set_yscale("log")
                ax.set_xlabel(panel.xlabel, fontsize=8)
                ax.legend(fontsize=7)
                ax.set_title(panel.title, fontsize=8)
                continue
            low, high = ct.window_bounds(panel.window)
            ax.imshow(np.asarray(panel.image, np.float32), cmap="gray", vmin=low, vmax=high,
                      interpolation="nearest")
            ax.set_title(f"{panel.title}\n[{low:g}, {high:g}] HU", fontsize=8)
    return _save(fig, path, title)


@dataclasses.dataclass(frozen=True)
class Point:
    """A point of a scatter plot: `marker` picks its marker (e.g. the model), `series` its
    colour (e.g. the distance), `label` is written next to it (e.g. lambda)."""

    x: float
    y: float
    marker: str
    series: str
    label: str = ""


def save_scatter(path: str, points: Sequence[Point], xlabel: str, ylabel: str,
                 title: str) -> str:
    """Writes `scatter_figure(points, xlabel, ylabel)` to `path` (PNG), atomically; returns
    `path`."""
    return _save(scatter_figure(points, xlabel, ylabel), path, title)


def scatter_figure(points: Sequence[Point], xlabel: str, ylabel: str):
    """A matplotlib Figure of `points`. An axis whose values span a decade or more is
    logarithmic. Points with a non-positive coordinate are named in a note above the plot
    instead of drawn."""
    fig = _figure(7.5, 5.5)
    ax = fig.subplots()
    markers = list(dict.fromkeys(p.marker for p in points))
    series = list(dict.fromkeys(p.series for p in points))
    shapes, colours = "os^Dvx*P", [f"C{i}" for i in range(10)]
    drawn = [p for p in points if p.x > 0 and p.y > 0]
    for p in drawn:
        ax.scatter(p.x, p.y, marker=shapes[markers.index(p.marker) % len(shapes)],
                   color=colours[series.index(p.series) % len(colours)], s=36)
        if p.label:
            ax.annotate(p.label, (p.x, p.y), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    handles = [ax.scatter([], [], marker=shapes[i % len(shapes)], color="k", label=m)
               for i, m in enumerate(markers)]
    handles += [ax.scatter([], [], marker="o", color=colours[i % len(colours)], label=s)
                for i, s in enumerate(series)]
    ax.legend(handles=handles, fontsize=8)
    # A log axis over less than a decade has no labelled decade: its ticks read "8x10^0".
    for values, set_scale in (([p.x for p in drawn], ax.set_xscale),
                              ([p.y for p in drawn], ax.set_yscale)):
        if values and max(values) >= 10 * min(values):
            set_scale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    skipped = [p for p in points if not (p.x > 0 and p.y > 0)]
    if skipped:
        ax.set_title("not drawn (zero or less): "
                     + ", ".join(f"{p.marker} {p.series} {p.label}" for p in skipped), fontsize=7)
    return fig


def _figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (the notebook's backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str, title: Optional[str]) -> str:
    """`fig` with `title`, laid out and written to `path` atomically (its extension picks
    the format)."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with files.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format=os.path.splitext(path)[1].lstrip(".") or "png")
    return path


def format_cell(v) -> str:
    """A table cell: floats to 4 significant digits, None as '-'."""
    if v is None:  # a metric that does not apply (e.g. the target distance of untargeted rows)
        return "-"
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns (floats to 4 significant digits)."""
    cells = [list(map(str, header))] + [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (floats to 4 significant digits)."""
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
