"""`report/index.html`: a sweep's report as one self-contained page to browse.

No network and no server: the figures' images are embedded as deflated int16 arrays (0.1 HU
steps at most) that the page windows itself, so the anatomy window (as read, lung, abdomen,
head) and the difference window can be switched for every figure at once; plots are embedded
PNGs. The summary table sorts by any column (click its header). The address can set both:
`index.html#sort=-ratio&anatomy=lung&diff=20` (descending by ratio, lung window, +-10 HU
differences), and follows what is clicked. Perturbations have a window of their own, sized to
them (`report.perturbation_window`). Images wider than
`MAX_SIDE` pixels are shown block-averaged (the PNGs in figures/ keep every pixel).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import numbers
import os
import zlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ldct_jax import ct, files
from ldct_jax.jobs import report

MAX_SIDE = 256
# What a summary column holds, shown under the table for the columns a page has.
COLUMN_MEANINGS = {
    "distance": "d_in, the input distance the search rewards (mse, dssim, vgg16)",
    "lam": "lambda, the weight of d_in in L = D_out - lambda d_in",
    "n": "rows averaged (images x seeds)",
    "input_rms_hu": "RMS of the input change (x_inv, or an attack's delta), HU",
    "input_max_hu": "largest |input change|, HU",
    "input_ssim": "SSIM of x + x_inv against x",
    "output_rms_hu": "RMS of the output change f(x + x_inv) - f(x), HU",
    "output_max_hu": "largest |output change|, HU",
    "ratio": "input RMS / output RMS: HU of input change per HU of output change (higher: the "
             "network ignores more)",
    "rank": "by ratio, within a distance and lambda (1: ignores the most)",
    "epsilon_hu": "the attack's budget, largest |delta| in HU",
    "target_rms_hu": "RMS of f(x + delta) - target, HU",
    "target_rms_hu_clean": "RMS of f(x) - target, HU (before the attack)",
    "amplification": "output RMS / input RMS",
    "diversity": "RMS of the difference of two samples over the RMS of one (0: identical, "
                 "1.41: independent)",
    "spectral_distance": "how far x_inv's noise power spectrum is from the real noise's, in "
                         "octaves of power (0: the same)",
    "inside_outside_ratio": "mean |x_inv| deep inside gauss_ri's zeroed square over mean "
                            "|x_inv| outside it",
    "norm": "||J||, the largest singular value of the Jacobian (HU/HU)",
    "smallest_1": "the smallest singular value found",
    "sweep": "the workdir of the sweep the row comes from (this one, or one of report.compare)",
}
ANATOMY_WINDOWS = ("lung", "abdomen", "head")
DIFF_WINDOWS = (("±10 HU", 20.0), ("±50 HU", 100.0), ("±250 HU", 500.0))


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure of the page: a grid of `report.Panel`s (drawn and windowed by the page) or a
    PNG file (embedded as it is)."""

    title: str
    rows: Sequence[Sequence[report.Panel]] = ()
    png: Optional[str] = None


def _pixels(image: np.ndarray) -> tuple[np.ndarray, int]:
    """The image as shown: block-averaged to at most MAX_SIDE pixels a side; and the factor."""
    image = np.asarray(image, np.float32)
    factor = max(1, -(-max(image.shape) // MAX_SIDE))
    if factor > 1:
        h, w = (s // factor * factor for s in image.shape)
        image = image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean((1, 3))
    return image, factor


def _encode(image: np.ndarray) -> dict[str, Any]:
    """int16 steps of `scale` HU (max |image| / 32000: 0.1 HU for the HU range), deflated,
    base64."""
    image, factor = _pixels(image)
    if not np.all(np.isfinite(image)):
        raise ValueError("html report: a figure image is not finite")
    scale = max(float(np.max(np.abs(image))) / 32000.0, 1e-6)
    data = np.round(image / scale).astype("<i2")
    return dict(h=data.shape[0], w=data.shape[1], scale=scale, factor=factor,
                data=base64.b64encode(zlib.compress(data.tobytes(), 6)).decode("ascii"))


def _panel_window(panel: report.Panel) -> tuple[str, list[float]]:
    """('anatomy' | 'diff' | 'own', [low, high]) of a panel: a named window follows the page's
    buttons of its kind; a (centre, width) one (a perturbation's) stays as it is."""
    if isinstance(panel.window, str):
        kind = "diff" if panel.window == "diff" else "anatomy"
    else:
        kind = "own"
    return kind, list(ct.window_bounds(panel.window))


def _figure_html(fig: Figure, arrays: dict[str, dict]) -> str:
    caption = f"<figcaption>{html.escape(fig.title)}</figcaption>"
    if fig.png is not None:
        with open(fig.png, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        return (f'<figure class="plot">{caption}<img alt="{html.escape(fig.title)}" '
                f'src="data:image/png;base64,{data}"></figure>')
    out = [f'<figure class="grid">{caption}<table>']
    for row in fig.rows:
        out.append("<tr>")
        for panel in row:
            key = hashlib.sha1(np.ascontiguousarray(panel.image, np.float32).tobytes()
                               ).hexdigest()[:16]
            if key not in arrays:
                arrays[key] = _encode(panel.image)
            kind, bounds = _panel_window(panel)
            out.append(f'<td><canvas data-array="{key}" data-kind="{kind}" '
                       f'data-window="{json.dumps(bounds)}"></canvas>'
                       f'<div class="label">{html.escape(panel.title)} '
                       f'<span class="bounds"></span></div></td>')
        out.append("</tr>")
    return "".join(out) + "</table></figure>"


def _is_number(v: Any) -> bool:
    return isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_))


def _sort_value(v: Any) -> str:
    """A number as JavaScript's Number() reads it (inf -> Infinity, nan -> NaN)."""
    v = float(v)
    if np.isnan(v):
        return "NaN"
    return ("Infinity" if v > 0 else "-Infinity") if np.isinf(v) else repr(v)


def _meanings_html(columns: Sequence[str]) -> str:
    items = "".join(f"<dt>{html.escape(c)}</dt><dd>{html.escape(COLUMN_MEANINGS[c])}</dd>"
                    for c in columns if c in COLUMN_MEANINGS)
    if not items:
        return ""
    return f'<details class="meanings"><summary>columns</summary><dl>{items}</dl></details>'


def _table_html(columns: Sequence[str], table: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in table:
        cells = []
        for c in columns:
            v = r.get(c)
            sort = f' data-value="{_sort_value(v)}"' if _is_number(v) else ""
            cells.append(f"<td{sort}>{html.escape(report.format_cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
            f"</tbody></table>")


def write(report_dir: str, title: str, columns: Sequence[str],
          table: Sequence[Mapping[str, Any]], figures: Sequence[Figure],
          settings: Optional[Mapping[str, Any]] = None,
          links: Sequence[tuple[str, str]] = ()) -> str:
    """Writes `report_dir/index.html` atomically and returns its path.

    Args:
      report_dir: the report folder.
      title: the page title.
      columns, table: the summary table (records with those columns).
      figures: in page order.
      settings: shown under the title (e.g. the run's config), as JSON.
      links: (text, address relative to `report_dir`) of related pages, listed under the title.
    """
    arrays: dict[str, dict] = {}
    body = "".join(_figure_html(f, arrays) for f in figures)
    anatomy = "".join(f'<button data-anatomy="{name}">{name}</button>'
                      for name in ("as read",) + ANATOMY_WINDOWS)
    diff = "".join(f'<button data-diff="{width}">{html.escape(name)}</button>'
                   for name, width in DIFF_WINDOWS)
    related = ("<p>Reports: " + " ".join(
        f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in links)
        + "</p>") if links else ""
    config = related + (("<details><summary>settings</summary><pre>"
                         + html.escape(json.dumps(settings, indent=1, sort_keys=True,
                                                  default=str))
                         + "</pre></details>") if settings else "")
    controls = (f'<p class="controls">Anatomy window: {anatomy} &nbsp; Differences: {diff}</p>'
                if arrays else "")  # nothing to window on a page of plots
    page = _PAGE.format(
        title=html.escape(title), config=config,
        table=_table_html(columns, table) + _meanings_html(columns),
        figures=body, controls=controls, count=len(figures),
        arrays=json.dumps(arrays).replace("</", "<\\/"),
        windows=json.dumps({w: ct.window_bounds(w) for w in ANATOMY_WINDOWS + ("diff",)}),
        script=_SCRIPT)
    path = os.path.join(report_dir, "index.html")
    files.write_text(path, page)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table#summary {{ border-collapse: collapse; font-size: 13px; margin-bottom: 1.5em; }}
#summary th, #summary td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
#summary th {{ cursor: pointer; background: #f3f3f3; user-select: none; }}
#summary th.asc::after {{ content: " \\25B2"; }} #summary th.desc::after {{ content: " \\25BC"; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: 600; margin-bottom: 0.4em; }}
figure.grid td {{ vertical-align: top; padding: 2px; }}
canvas {{ width: 180px; image-rendering: pixelated; display: block; }}
.label {{ font-size: 11px; max-width: 180px; }} .bounds {{ color: #777; }}
.controls button {{ margin-right: 4px; }} .controls button.on {{ background: #246; color: #fff; }}
.plot img {{ max-width: 100%; }}
.meanings dt {{ font-weight: 600; float: left; clear: left; width: 12em; }}
.meanings dd {{ margin-left: 13em; }}
</style></head>
<body data-figures="{count}">
<h1>{title}</h1>
{config}
<h2>Summary</h2>
<p>Click a column header to sort.</p>
{table}
<h2>Figures</h2>
{controls}
{figures}
<script id="arrays" type="application/json">{arrays}</script>
<script id="windows" type="application/json">{windows}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
"use strict";
window.addEventListener("error", e => {
  document.body.dataset.errors = (document.body.dataset.errors || "") + e.message + "\n"; });
const arrays = JSON.parse(document.getElementById("arrays").textContent);
const WINDOWS = JSON.parse(document.getElementById("windows").textContent);
const DIFF = WINDOWS.diff[1] - WINDOWS.diff[0];  // the difference window's width, as read
const state = {anatomy: "as read", diff: DIFF, sort: ""};
const decoded = {};

async function decode(key) {
  const a = arrays[key];
  const bytes = Uint8Array.from(atob(a.data), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  const buffer = await new Response(stream).arrayBuffer();
  const ints = new Int16Array(buffer);
  const hu = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) hu[i] = ints[i] * a.scale;
  return {h: a.h, w: a.w, hu: hu};
}

function bounds(canvas) {
  if (canvas.dataset.kind === "own") return JSON.parse(canvas.dataset.window);
  if (canvas.dataset.kind === "diff") return [-state.diff / 2, state.diff / 2];
  return state.anatomy === "as read" ? JSON.parse(canvas.dataset.window) : WINDOWS[state.anatomy];
}

function draw(canvas) {
  const img = decoded[canvas.dataset.array];
  const [low, high] = bounds(canvas);
  canvas.width = img.w; canvas.height = img.h;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(img.w, img.h);
  for (let i = 0; i < img.hu.length; i++) {
    const v = Math.round(255 * Math.min(1, Math.max(0, (img.hu[i] - low) / (high - low))));
    out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = v; out.data[4 * i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  canvas.nextElementSibling.querySelector(".bounds").textContent = `[${low}, ${high}] HU`;
  canvas.dataset.drawn = "1";
}

function redraw() {
  document.querySelectorAll("canvas[data-array]").forEach(draw);
  document.querySelectorAll("button[data-anatomy]").forEach(
    b => b.classList.toggle("on", b.dataset.anatomy === state.anatomy));
  document.querySelectorAll("button[data-diff]").forEach(
    b => b.classList.toggle("on", Number(b.dataset.diff) === state.diff));
}

// The address follows the view, so that a copied link opens what is on the screen.
function remember() {
  const p = new URLSearchParams();
  if (state.sort) p.set("sort", state.sort);
  if (state.anatomy !== "as read") p.set("anatomy", state.anatomy);
  if (state.diff !== DIFF) p.set("diff", state.diff);
  try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* file: rules */ }
}

// Numbers by value (NaN after every number), text alphabetically.
function compare(x, y) {
  if (typeof x !== "number" || typeof y !== "number") return String(x).localeCompare(String(y));
  if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) - Number.isNaN(y);
  return x === y ? 0 : (x < y ? -1 : 1);
}

function sortBy(th) {
  const table = th.closest("table"), index = [...th.parentNode.children].indexOf(th);
  const ascending = !th.classList.contains("asc");
  table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
  th.classList.add(ascending ? "asc" : "desc");
  state.sort = (ascending ? "" : "-") + th.textContent;
  const key = row => {
    const cell = row.children[index];
    return cell.dataset.value !== undefined ? Number(cell.dataset.value) : cell.textContent;
  };
  const rows = [...table.tBodies[0].rows].sort((a, b) => {
    const x = key(a), y = key(b);
    return ascending ? compare(x, y) : -compare(x, y);
  });
  rows.forEach(r => table.tBodies[0].appendChild(r));
}

document.querySelectorAll("#summary th").forEach(
  th => th.addEventListener("click", () => { sortBy(th); remember(); }));
document.querySelectorAll("button[data-anatomy]").forEach(b => b.addEventListener("click", () => {
  state.anatomy = b.dataset.anatomy; redraw(); remember(); }));
document.querySelectorAll("button[data-diff]").forEach(b => b.addEventListener("click", () => {
  state.diff = Number(b.dataset.diff); redraw(); remember(); }));

// The address sets the view: #sort=column (-column: descending), &anatomy=lung|abdomen|head,
// &diff=<difference window width in HU: 20 is +-10 HU>; on opening and when it is edited.
function follow() {
  const address = new URLSearchParams(location.hash.slice(1));
  const wanted = (address.get("sort") || "").match(/^(-?)(.+)$/);
  const th = wanted && [...document.querySelectorAll("#summary th")].find(
    h => h.textContent === wanted[2]);
  if (th) {
    th.classList.remove("asc", "desc");
    sortBy(th);
    if (wanted[1]) sortBy(th);
  }
  const anatomy = address.get("anatomy");
  state.anatomy = Object.hasOwn(WINDOWS, anatomy) && anatomy !== "diff" ? anatomy : "as read";
  state.diff = Number(address.get("diff")) > 0 ? Number(address.get("diff")) : DIFF;
}
follow();
window.addEventListener("hashchange", () => {
  follow();
  if (document.body.dataset.ready) redraw();  // else the first redraw, once decoded, shows it
});
Promise.all(Object.keys(arrays).map(async k => { decoded[k] = await decode(k); }))
  .then(() => { redraw(); document.body.dataset.ready = "1"; });
"""
