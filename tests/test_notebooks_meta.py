"""Every notebook is committed clean (no outputs, no execution counts) and opens with a markdown cell."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "01_tokenizer.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cells = notebook["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", f"{path.name}: open with a markdown cell saying what we build"
    dirty = [i for i, c in enumerate(cells)
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them (Kernel > Restart and Clear Outputs)"
    assert cells[-1]["cell_type"] == "markdown", f"{path.name}: close with what was learned and what comes next"
