"""Opens a page in headless Chromium and returns what a reader would see: the DOM after its
scripts ran, and the console errors. Chromium is the Debian `chromium` package (`.ci/run`
installs it); without it the browser tests are skipped (`tests.optional`)."""

import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

from tests import optional


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        optional.missing("chromium", "apt-get install chromium")
    return path


def open_page(path: str, fragment: str = "") -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, its console errors)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=20000", "--dump-dom",
               "file://" + os.path.abspath(path) + fragment]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    console = [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if re.search(r"error|uncaught", line, re.I)]
    return out.stdout, errors


class Page(HTMLParser):
    """The parts of a dumped report page the tests look at."""

    def __init__(self, dom: str):
        super().__init__()
        self.body: dict[str, str] = {}
        self.figures = self.canvases = self.drawn = self.images = 0
        self.rows: list[list[str]] = []
        self.bounds: list[str] = []  # the window of every drawn panel, as its label says
        self._in_summary = self._in_body_row = self._in_bounds = False
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "figure":
            self.figures += 1
        elif tag == "canvas":
            self.canvases += 1
            self.drawn += a.get("data-drawn") == "1"
        elif tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.images += 1
        elif tag == "table" and a.get("id") == "summary":
            self._in_summary = True
        elif tag == "tbody" and self._in_summary:
            self._in_body_row = True
        elif tag == "tr" and self._in_body_row:
            self.rows.append([])
        elif tag == "td" and self._in_body_row:
            self._cell = []
        elif tag == "span" and a.get("class") == "bounds":
            self._in_bounds = True
            self.bounds.append("")

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_bounds = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table" and self._in_summary:
            self._in_summary = self._in_body_row = False

    def handle_data(self, data):
        if self._in_bounds:
            self.bounds[-1] += data
        if self._cell is not None:
            self._cell.append(data)


def check_report(path: str, figures: int, rows: int, fragment: str = "") -> Page:
    """Asserts that the report page at `path` loads without a script or console error, shows
    `figures` figures with every image panel drawn and every plot embedded, and `rows` summary
    rows; returns the page."""
    dom, errors = open_page(path, fragment)
    page = Page(dom)
    assert not errors, errors
    assert "data-errors" not in page.body, page.body["data-errors"]
    assert page.body.get("data-ready") == "1", "the page's script did not finish"
    assert page.figures == figures == int(page.body["data-figures"])
    assert page.drawn == page.canvases
    assert len(page.rows) == rows
    return page
