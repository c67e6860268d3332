"""The four notebooks run top to bottom (small-data mode), and the committed ones are the
executed versions of ``notebooks/build.py`` (so they read on a code host without running)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "notebooks"))
import build  # noqa: E402


@pytest.mark.parametrize("name", list(build.NOTEBOOKS))
def test_notebook_runs_top_to_bottom_and_the_committed_copy_is_current(name):
    committed = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    fresh = build.notebook(build.NOTEBOOKS[name])
    assert [c.source for c in committed.cells] == [c.source for c in fresh.cells], \
        f"{name}.ipynb differs from notebooks/build.py: run `python notebooks/build.py --execute`"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code[1:]), f"{name}.ipynb is committed without its outputs"
    build.execute(fresh, timeout=300)  # raises CellExecutionError on any error
    errors = [o for c in fresh.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
