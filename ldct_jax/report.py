"""Figures and tables as CT researchers read them: images in display windows, written atomically."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldct_jax import ct  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Panel:
    """One image of a figure: `image` in HU shown in `window` (a name of ct.WINDOWS or (c, w))."""

    title: str
    image: np.ndarray
    window: ct.Window


def atomic_path(path: str) -> str:
    """A temporary path beside `path`; rename it onto `path` with os.replace when written."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{name}.tmp{os.getpid()}")


def save_panels(path: str, rows: Sequence[Sequence[Panel]], title: str | None = None,
                panel_size: float = 3.0) -> str:
    """Writes a grid of windowed CT images to `path` (PNG or PDF), atomically.

    Args:
      path: output file; its extension picks the format.
      rows: the grid, row by row; rows may differ in length.
      title: figure title (e.g. the model and the distance, or 'VGG RANDOM INIT').
      panel_size: inches per panel.

    Returns:
      `path`.
    """
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(panel_size * ncols, panel_size * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            panel = row[c]
            low, high = ct.window_bounds(panel.window)
            ax.imshow(np.asarray(panel.image, np.float32), cmap="gray", vmin=low, vmax=high,
                      interpolation="nearest")
            ax.set_title(f"{panel.title}\n[{low:g}, {high:g}] HU", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = atomic_path(path)
    fig.savefig(tmp, dpi=100, format=os.path.splitext(path)[1].lstrip(".") or "png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with aligned columns (floats to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    cells = [list(map(str, header))] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (floats to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: str, text: str) -> str:
    """Writes `text` to `path` atomically (temp file, then os.replace); returns `path`."""
    tmp = atomic_path(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: str, obj: object) -> str:
    """Writes `obj` as indented JSON to `path` atomically; returns `path`."""
    import json
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_plain) + "\n")


def write_csv(path: str, records: Sequence[dict]) -> str:
    """Writes dicts (one per row; columns in first-seen key order) as CSV, atomically."""
    import csv
    import io
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return write_text(path, buf.getvalue())


def _plain(v):
    """numpy scalars/arrays -> plain Python for json."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
