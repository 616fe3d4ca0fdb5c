"""examples/sdedit.ipynb runs top to bottom, offline, on the bundled model (so that it never goes stale)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_example_notebook_runs_offline():
    nb = nbformat.read(EXAMPLES / "sdedit.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "kept pixels identical: True" in text
    assert "painting -> t0" in text and "photo -> t0" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 4  # the painting's outputs, the photo edits, the sweep's images and its plot
