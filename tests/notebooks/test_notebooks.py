"""Every notebook in notebooks/ runs top to bottom (nbclient, a fresh kernel) on small settings
(INTERP_NOTEBOOK_SMALL=1), and is stored without outputs or widget state."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"
# The executed quickstart as JupyterLab saves it (without widget state): plotly.js inlined once (about 4.8 MB,
# so that its figures show in any viewer, offline), the figures themselves and short text.
QUICKSTART_MAX_BYTES = 7_000_000


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_patching", "03_sae_features", "04_circuit_tracing"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} cell {i} is stored with outputs"
    assert "widgets" not in nb.metadata, f"{path.name} is stored with widget state"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch, default_model):
    nb = nbformat.read(path, as_version=4)
    monkeypatch.setenv("INTERP_NOTEBOOK_SMALL", "1")
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors
    widgets = [o for o in _outputs(nb) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    if "01_" in path.name or "04_" in path.name:
        assert widgets, f"{path.name} displayed no widget"
    if "01_" in path.name:
        figures = [o for o in _outputs(nb) if PLOTLY in o.get("data", {})]
        assert len(figures) >= 6, f"the quickstart showed {len(figures)} plotly figures"
        assert all("text/html" in o.data for o in figures), "a figure has no HTML form for viewers without a kernel"
        size = len(nbformat.writes(nb).encode())
        assert size < QUICKSTART_MAX_BYTES, f"the executed quickstart takes {size / 1e6:.1f} MB"
        text = "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")
        assert "0 new compilations" in text  # a prompt of a new length reuses its bucket's programs
    if "04_" in path.name:
        assert (tmp_path / "circuit_report.html").stat().st_size > 3_000_000
