"""Write each notebooks/<name>.ipynb from its <name>.py; never the other way round.

The percent-format .py is the source (README, "Notebooks"): `make sync` and `make run-<nb>`
call this script instead of `jupytext --sync`, which takes whichever side is newer and so
rewrote an edited .py from an .ipynb that Jupyter autosave or `git checkout` had touched
(jupytext issues #63, #254). That is also why no Jupytext pairing is declared, neither in
jupytext.toml nor in a notebook's header (see jupytext.toml).

For each .py given, `pair_problem` (shared with tests/test_notebooks.py) stops it (exit 2,
nothing written, a message saying how to keep either side) when:
- the .py's header declares a Jupytext pairing (`formats:`), which `jupytext --sync`
  would follow;
- the .ipynb has edits of its own: its cells differ from the .py's and from the ones this
  script last wrote into it (their digest is kept in its metadata, SYNC_KEY), whatever
  the timestamps. Only touched (Jupyter autosave, git checkout) is no edit. An .ipynb
  without the digest (written before it existed) counts as edited when it is newer than
  the .py and its cells differ.
Otherwise the .ipynb is (re)written from the .py: cells and metadata from the .py (a pairing
left in the .ipynb's metadata is dropped), the digest of its cells, outputs cleared
(committed notebooks carry none).

Usage: python tools/sync_notebooks.py notebooks/train.py [notebooks/infer.py ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import jupytext
from jupytext.combine import combine_inputs_with_outputs
from nbformat import NotebookNode

# .ipynb metadata: {"cells": digest of the cells this script wrote}
SYNC_KEY = "pixelplay_sync"


def cell_sources(nb: NotebookNode) -> list[tuple[str, str]]:
    """(cell type, stripped source) of each cell: what an edit changes, not metadata."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def cells_digest(nb: NotebookNode) -> str:
    """SHA-256 (hex, 16 digits) of the notebook's cell_sources."""
    return hashlib.sha256(json.dumps(cell_sources(nb)).encode()).hexdigest()[:16]


def ipynb_has_own_edits(py: Path, ipynb: Path) -> bool:
    """The .ipynb's cells differ from the .py's and were changed after this script wrote
    them (digest in its metadata); without a digest: it is newer than the .py."""
    if not ipynb.is_file():
        return False
    nb = jupytext.read(ipynb)
    if cell_sources(nb) == cell_sources(jupytext.read(py)):
        return False  # nothing of its own to lose
    written = nb.metadata.get(SYNC_KEY, {}).get("cells")
    if written:
        return written != cells_digest(nb)
    return ipynb.stat().st_mtime > py.stat().st_mtime


def declared_pairing(path: Path) -> str | None:
    """The Jupytext pairing a notebook's own metadata declares (`formats`, e.g.
    "ipynb,py:percent"), or None."""
    return jupytext.read(path).metadata.get("jupytext", {}).get("formats") or None


def pair_problem(py: Path) -> str | None:
    """Why the .ipynb of `py` must not be written from it (a pairing declared in the .py;
    an .ipynb with its own edits), as a message naming the files and the fix; None when
    writing it loses nothing."""
    ipynb = py.with_suffix(".ipynb")
    formats = declared_pairing(py)
    if formats:
        return (f"{py} declares a Jupytext pairing in its header (formats: {formats}): "
                f"`jupytext --sync` would then rewrite {py} from {ipynb} whenever the .ipynb "
                f"is newer (see jupytext.toml). Delete the `formats:` line of its header "
                "and run again.")
    if ipynb_has_own_edits(py, ipynb):
        return conflict_message(py, ipynb)
    return None


def conflict_message(py: Path, ipynb: Path) -> str:
    return (f"{ipynb} has edits of its own (its cells differ from {py} and changed since "
            f"`make sync` wrote it): the .py is the source, so nothing was written. Keep the "
            f".py (drop the .ipynb edits): `rm {ipynb}` and run again. Keep the .ipynb edits: "
            f"`.venv/bin/jupytext --to py:percent {ipynb}` (rewrites {py}; review it with "
            "git diff), then run again.")


def write_ipynb(py: Path, ipynb: Path) -> bool:
    """Write `ipynb` from `py` (outputs cleared); True when its content changed."""
    nb = jupytext.read(py)
    if ipynb.is_file():  # keep its cell ids (jupytext --update): no churn in git diffs
        nb = combine_inputs_with_outputs(nb, jupytext.read(ipynb), fmt="py:percent")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata[SYNC_KEY] = {"cells": cells_digest(nb)}
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
        problem = pair_problem(py)
        if problem:
            conflicts.append(problem)
        elif write_ipynb(py, ipynb):
            print(f"wrote {ipynb} from {py}")
    for message in conflicts:
        print(f"error: {message}", file=sys.stderr)
    return 2 if conflicts else 0


if __name__ == "__main__":
    sys.exit(main())
