"""Every notebook in notebooks/ runs top to bottom (nbclient, a fresh kernel) on small settings
(INTERP_NOTEBOOK_SMALL=1), and is stored without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_patching", "03_sae_features", "04_circuit_tracing"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, default_model):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # stored clean: no outputs, no execution counts
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} is stored with outputs"
    monkeypatch.setenv("INTERP_NOTEBOOK_SMALL", "1")
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    widgets = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if "01_" in path.name or "04_" in path.name:
        assert widgets, f"{path.name} displayed no widget"
    if "04_" in path.name:
        assert (tmp_path / "circuit_report.html").stat().st_size > 3_000_000
