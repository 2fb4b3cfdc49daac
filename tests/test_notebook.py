"""paper_checks.ipynb executes top to bottom (nbclient), so the walkthrough cannot rot."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install .[test])")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install .[test])")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    nb = nbformat.read(ROOT / "paper_checks.ipynb", as_version=4)
    assert len(nb.cells) >= 2, "paper_checks.ipynb: expected a walkthrough with cells"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    os.environ.setdefault("MPLBACKEND", "Agg")
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_notebook_matches_its_generator():
    """The committed notebook holds exactly the cells of scripts/make_notebook.py (edit there, then rerun it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebook", ROOT / "scripts" / "make_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nb = nbformat.read(ROOT / "paper_checks.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == mod.CELLS, \
        "paper_checks.ipynb is out of date: run `python scripts/make_notebook.py`"
