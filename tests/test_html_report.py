"""report/index.html: one self-contained page, checked in headless Chromium as a reader opens
it (tests/browser.py), and its image encoding against scikit-image's block mean."""

import base64
import os
import zlib

import numpy as np
import pytest
from skimage.measure import block_reduce

from ldct_jax.jobs import html_report, report
from tests.browser import check_report

ROWS = [dict(model="cnn10", distance="mse", lam=1e-4, input_rms_hu=40.0, output_rms_hu=2.0,
             ratio=20.0),
        dict(model="qae", distance="mse", lam=1e-2, input_rms_hu=8.0, output_rms_hu=0.5,
             ratio=16.0),
        dict(model="redcnn", distance="mse", lam=1e-3, input_rms_hu=20.0, output_rms_hu=10.0,
             ratio=2.0),
        dict(model="dugan", distance="mse", lam=1e-3, input_rms_hu=5.0, output_rms_hu=0.0,
             ratio=float("inf"))]
COLUMNS = ("model", "distance", "lam", "input_rms_hu", "output_rms_hu", "ratio")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page with a 300 x 300 image figure (shown block-averaged) and a plot."""
    d = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    x = rng.normal(40, 30, (300, 300)).astype(np.float32)
    dx = rng.normal(0, 5, (300, 300)).astype(np.float32)
    rows = [[report.Panel("x", x, "abdomen"), report.Panel("f difference", dx, "diff"),
             report.Panel("x_inv", dx, report.perturbation_window(dx))]] * 2
    plot = report.save_scatter(str(d / "changes.png"), [
        report.Point(r["input_rms_hu"], r["output_rms_hu"], r["model"], r["distance"],
                     f"{r['lam']:g}") for r in ROWS], "input", "output", "changes")
    figures = [html_report.Figure("changes", png=plot), html_report.Figure("image 0", rows)]
    return html_report.write(str(d), "a sweep", COLUMNS, ROWS, figures, settings=dict(k=1))


@pytest.mark.slow
def test_page_shows_every_figure_and_row_in_its_window(page):
    shown = check_report(page, figures=2, rows=4)
    assert shown.canvases == 6 and shown.images == 1
    # Each panel drawn in its own window until another is picked; a perturbation's window
    # (+-3 RMS of 5 HU, rounded up to 20) follows no button.
    assert shown.bounds == ["[-150, 250] HU", "[-50, 50] HU", "[-20, 20] HU"] * 2
    shown = check_report(page, figures=2, rows=4, fragment="#anatomy=lung&diff=20")
    assert shown.bounds == ["[-1350, 150] HU", "[-10, 10] HU", "[-20, 20] HU"] * 2
    shown = check_report(page, figures=2, rows=4, fragment="#anatomy=diff")
    assert shown.bounds == ["[-150, 250] HU", "[-50, 50] HU", "[-20, 20] HU"] * 2


@pytest.mark.parametrize("images, window", [
    ((np.full((4, 4), 5.0),), (0.0, 10.0)),               # max |x| = 5 < 3 RMS: +-5
    ((np.array([[0.0, 0.0, 0.0, 7.0]]),), (0.0, 20.0)),   # 3 RMS = 10.5 > 7: +-10 (1-2-5)
    ((np.full((2, 2), 300.0), np.full((2, 2), -40.0)), (0.0, 1000.0)),  # the largest: +-500
    ((np.zeros((2, 2)),), (0.0, 2.0)),
])
def test_perturbation_window_is_three_rms_at_most_the_peak_rounded_up(images, window):
    assert report.perturbation_window(*images) == pytest.approx(window)


def test_scatter_axes_are_logarithmic_only_over_a_decade_or_more():
    # One budget: every input RMS near 8 HU (a log axis would label its ticks "8x10^0"), the
    # outputs over three decades; a zero output is named above the plot, not drawn.
    points = [report.Point(x, y, "cnn10", "pgd") for x, y in
              [(7.99, 0.05), (8.1, 50.0), (8.0, 3.0), (8.05, 0.0)]]
    ax = report.scatter_figure(points, "input", "output").axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    assert len(ax.collections) - 2 == 3 and "cnn10 pgd" in ax.get_title()  # 2 legend handles


@pytest.mark.slow
def test_page_sorts_numbers_by_value_and_text_alphabetically(page):
    # As text, "10" < "2" and "inf" would sort anywhere; as numbers: 0.5 < 2 < 10, inf last.
    shown = check_report(page, figures=2, rows=4, fragment="#sort=-output_rms_hu")
    assert [r[4] for r in shown.rows] == ["10", "2", "0.5", "0"]
    shown = check_report(page, figures=2, rows=4, fragment="#sort=ratio")
    assert [r[5] for r in shown.rows] == ["2", "16", "20", "inf"]
    shown = check_report(page, figures=2, rows=4, fragment="#sort=-model")
    assert [r[0] for r in shown.rows] == ["redcnn", "qae", "dugan", "cnn10"]


@pytest.mark.slow
def test_the_check_fails_on_a_missing_figure_or_a_script_error(page, tmp_path):
    text = open(page).read()
    missing = tmp_path / "missing.html"
    start = text.index('<figure class="grid">')
    missing.write_text(text[:start] + text[text.index("</figure>", start) + 9:])
    with pytest.raises(AssertionError):
        check_report(str(missing), figures=2, rows=4)
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("<script>", "<script>undefinedFunction();", 1))
    with pytest.raises(AssertionError):
        check_report(str(broken), figures=2, rows=4)


def test_the_page_says_what_its_columns_hold(page):
    text = open(page).read()
    assert ("<dt>ratio</dt><dd>input RMS / output RMS: HU of input change per HU of output "
            "change") in text
    meanings = text[text.index('<details class="meanings">'):]
    meanings = meanings[:meanings.index("</details>")]
    assert [c for c in COLUMNS if f"<dt>{c}</dt>" in meanings] == [
        "distance", "lam", "input_rms_hu", "output_rms_hu", "ratio"]  # model needs none


def test_embedded_images_are_the_block_means_to_a_tenth_of_a_hu():
    x = np.random.default_rng(1).normal(-300, 400, (520, 520)).astype(np.float32)
    a = html_report._encode(x)
    data = np.frombuffer(zlib.decompress(base64.b64decode(a["data"])), "<i2")
    shown = data.reshape(a["h"], a["w"]) * a["scale"]
    expected = block_reduce(x[:519, :519].astype(np.float64), (3, 3), np.mean)  # 520 -> 173
    assert a["factor"] == 3 and shown.shape == expected.shape == (173, 173)
    assert a["scale"] <= 0.1
    np.testing.assert_allclose(shown, expected, atol=a["scale"] / 2 + 1e-3)


def test_a_non_finite_image_is_refused(tmp_path):
    bad = np.zeros((8, 8), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        html_report.write(str(tmp_path), "t", COLUMNS, ROWS, [html_report.Figure(
            "f", [[report.Panel("x", bad, "abdomen")]])])
    assert not os.path.exists(tmp_path / "index.html")
