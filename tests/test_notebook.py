"""examples/sdedit.ipynb runs top to bottom, offline, on the bundled model (so that it never goes stale), and its
committed outputs are clean: no warning and no path of the machine that ran it.

The committed outputs are made as this test runs it (nbclient in examples/), then saved with nbformat.write.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MACHINE_PATHS = ("/root", "/tmp", "/home", "/work")


def output_text(nb: nbformat.NotebookNode) -> str:
    """Every text a notebook's code cells printed or displayed (streams, errors, text/plain)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts += [out.get("text", ""), out.get("data", {}).get("text/plain", ""), *out.get("traceback", [])]
    return "\n".join(parts)


def assert_clean(text: str) -> None:
    """No warning and no absolute path of the machine in a notebook's outputs."""
    assert "Warning" not in text and "warn" not in text.lower(), text
    assert not [p for p in MACHINE_PATHS if p in text], text


def test_the_example_notebook_runs_offline():
    nb = nbformat.read(EXAMPLES / "sdedit.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    text = output_text(nb)
    assert "kept pixels identical: True" in text
    assert "painting -> t0" in text and "photo -> t0" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= 4  # the painting's outputs, the photo edits, the sweep's images and its plot
    assert_clean(text)


def test_the_committed_outputs_show_no_warning_and_no_machine_path():
    nb = nbformat.read(EXAMPLES / "sdedit.ipynb", as_version=4)
    text = output_text(nb)
    assert "kept pixels identical: True" in text  # the outputs are there
    assert_clean(text)
    assert all(o.get("output_type") != "error" for c in nb.cells for o in c.get("outputs", []))
