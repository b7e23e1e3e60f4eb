"""Write each notebooks/<name>.ipynb from its <name>.py; never the other way round.

The percent-format .py is the source (README, "Notebooks"): `make sync` and `make run-<nb>`
call this script instead of `jupytext --sync`, which takes whichever side is newer and so
rewrote an edited .py from an .ipynb that Jupyter autosave or `git checkout` had touched.

For each .py given: when the .ipynb is newer than the .py AND its cells differ from the
.py's, someone edited the .ipynb (or an old copy came back): stop (exit 2) and say how to
keep either side. Otherwise the .ipynb is (re)written from the .py: cells and metadata from
the .py, outputs cleared (committed notebooks carry none).

Usage: python tools/sync_notebooks.py notebooks/train.py [notebooks/infer.py ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
from jupytext.combine import combine_inputs_with_outputs


def cell_sources(path: Path) -> list[tuple[str, str]]:
    """(cell type, stripped source) of each cell: what an edit changes, not metadata."""
    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def ipynb_has_own_edits(py: Path, ipynb: Path) -> bool:
    """The .ipynb is newer than the .py and its cells differ from the .py's."""
    return (ipynb.is_file() and ipynb.stat().st_mtime > py.stat().st_mtime
            and cell_sources(ipynb) != cell_sources(py))


def conflict_message(py: Path, ipynb: Path) -> str:
    return (f"{ipynb} is newer than {py} and their cells differ: the .py is the source, so "
            f"nothing was written. Keep the .py (drop the .ipynb edits): `touch {py}` and run "
            f"again. Keep the .ipynb edits: `.venv/bin/jupytext --to py:percent {ipynb}` "
            f"(rewrites {py}; review it with git diff), then run again.")


def write_ipynb(py: Path, ipynb: Path) -> bool:
    """Write `ipynb` from `py` (outputs cleared); True when its content changed."""
    nb = jupytext.read(py)
    if ipynb.is_file():  # keep its cell ids (jupytext --update): no churn in git diffs
        nb = combine_inputs_with_outputs(nb, jupytext.read(ipynb), fmt="py:percent")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    text = jupytext.writes(nb, fmt="ipynb").rstrip("\n") + "\n"  # as jupytext --sync
    if ipynb.is_file() and ipynb.read_text(encoding="utf-8") == text:
        return False
    ipynb.write_text(text, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .py sources")
    args = parser.parse_args(argv)
    conflicts = []
    for py in args.notebooks:
        if py.suffix != ".py" or not py.is_file():
            print(f"error: {py} is not a notebook source (.py file)", file=sys.stderr)
            return 2
        ipynb = py.with_suffix(".ipynb")
        if ipynb_has_own_edits(py, ipynb):
            conflicts.append(conflict_message(py, ipynb))
        elif write_ipynb(py, ipynb):
            print(f"wrote {ipynb} from {py}")
    for message in conflicts:
        print(f"error: {message}", file=sys.stderr)
    return 2 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
