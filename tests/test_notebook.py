"""notebooks/colab.ipynb runs top to bottom at its smoke size (outside Colab: no install, no
Drive), shows its figures inline, and a second run in a fresh kernel (a runtime reset)
resumes: training and sweeps find their work done."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab.ipynb")


def execute(workdir: str) -> nbformat.NotebookNode:
    """The notebook executed in a fresh kernel at the smoke size with `workdir`, as papermill
    would: a cell of parameters injected after the one tagged 'parameters'."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f'SIZE = "smoke"\nWORKDIR = {workdir!r}', metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
    return nb


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_the_notebook_runs_at_smoke_size_and_resumes(tmp_path):
    workdir = str(tmp_path / "work")
    nb = execute(workdir)
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "image/png" in o.get("data", {}))
    # Training's eval figure; per sweep its changes plot and two figures (the Jacobian: one).
    assert images == 1 + 3 + 3 + 3 + 1, images
    train = next(c for c in nb.cells if "jobs.run(train" in c.source)
    assert "'step': 60" in text_of(train)
    runs = [text_of(c) for c in nb.cells if "chunks computed now" in c.source]
    assert len(runs) == 4 and not any("chunks computed now: []" in t for t in runs), runs
    for sweep in ("invariance_gauss_ri", "invariance_cnn10", "attack_cnn10", "jacobian_cnn10"):
        assert os.path.isfile(os.path.join(workdir, sweep, "report", "index.html")), sweep

    again = execute(workdir)  # a fresh kernel: as after a runtime reset
    train = next(c for c in again.cells if "jobs.run(train" in c.source)
    assert "'step': 60" in text_of(train)
    with open(os.path.join(workdir, "cnn10", "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f if '"event"' in line]
    assert [(e["event"], e["step"]) for e in events] == [("resumed", 60)]  # nothing retrained
    runs = [text_of(c) for c in again.cells if "chunks computed now" in c.source]
    assert len(runs) == 4 and all("chunks computed now: []" in t for t in runs), runs
