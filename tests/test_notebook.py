"""The quickstart notebook runs headless, top to bottom, on a small setting."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "examples", "quickstart.ipynb")


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


@pytest.mark.notebook
def test_quickstart_runs(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCIFAR_QUICK", "1")
    monkeypatch.setenv("FASTCIFAR_DATA", real_data)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    stderr = [
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("name") == "stderr"
    ]
    assert not [t for t in stderr if "Warning" in t and "fastcifar" in t], stderr  # no warnings from fastcifar
    images = [c for c in nb.cells if c.cell_type == "code" and any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert all(sum("image/png" in o.get("data", {}) for o in c.outputs) == 1 for c in images), "a plot shown twice"
    assert "Model parameters: 3,249,994" in text
    assert "Overall Accuracy" in text and "same logits: True" in text
    assert (tmp_path / "checkpoint.pth").exists() and (tmp_path / "best_model.pth").exists()
