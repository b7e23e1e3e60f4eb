"""Finding files below `input_root` (on Kaggle `/kaggle/input`), whatever its layout.

Kaggle mounts inputs in several layouts, and a kernel sees whichever its session has:

    <root>/competitions/<slug>/...              the competition (today)
    <root>/datasets/<owner>/<slug>/...          an attached dataset (today)
    <root>/<slug>/...                           competition or dataset (older sessions)
    <root>/notebooks/<owner>/<kernel>/...       another kernel's output

Nothing here hard-codes one of them: every lookup is one bounded walk (`walk_inputs`) that
never enters the challenge's `train/` and `test/` image folders (thousands of files that
never hold a model or weights) nor a run's decoded-image `cache/`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("pixelplay")

# Deep enough for datasets/<owner>/<slug>/<folder>/<run>/file; bounded so that a
# symlink loop or a huge unrelated input cannot make a lookup walk forever.
MAX_DEPTH = 6
SKIPPED_DIRS = frozenset({"cache", "__pycache__", ".git"})
HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """True when the Hugging Face hub answers a TCP connect within `timeout` seconds and
    offline mode (HF_HUB_OFFLINE) is not set: checked first, so that an offline machine
    fails in seconds, not after the hub client's retries (about a minute)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def walk_inputs(root: str | Path, max_depth: int = MAX_DEPTH) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) for `root` and every folder up to `max_depth` levels below it.

    Folders come in sorted order. Skipped: `train/` and `test/` beside a `classes.txt` (the
    challenge's images), and `cache/`, `__pycache__/`, `.git/`. A missing root yields
    nothing. Symlinks are followed (Kaggle mounts may be links); the depth bound ends loops.
    """
    root = Path(root)
    if not root.is_dir():
        return
    base = len(root.parts)
    for folder, subdirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        yield here, sorted(files)
        skip = SKIPPED_DIRS | ({"train", "test"} if "classes.txt" in files else set())
        if len(here.parts) - base >= max_depth:
            subdirs[:] = []
        else:
            subdirs[:] = sorted(d for d in subdirs if d not in skip)


def find_files(root: str | Path, name: str, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every file called `name` below `root` (see walk_inputs), in walk order."""
    return [folder / name for folder, files in walk_inputs(root, max_depth) if name in files]


def find_weights_file(filename: str, input_root: str | Path) -> Path | None:
    """An attached copy of torchvision's weights file `filename` (e.g.
    `resnet101-cd907fc2.pth`) below `input_root`, in any layout; None when there is none."""
    found = find_files(input_root, filename)
    if len(found) > 1:
        log.info("several copies of %s below %s; using %s", filename, input_root, found[0])
    return found[0] if found else None


def find_model(model_path: str = "", output_dir: str | Path = "",
               input_root: str | Path = "/kaggle/input") -> Path:
    """The model to predict with.

    `model_path` if given, else `output_dir/model.pt`, else the newest (by mtime) model.pt
    below `input_root` (on Kaggle: the train kernel's output, attached as an input at
    `notebooks/<owner>/<kernel>/` or an older layout). Raises FileNotFoundError naming
    what was searched and what to attach or pass.
    """
    if model_path:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"model_path={path}: no such file (pass the path of a "
                                    "model.pt written by train, or leave it empty to search)")
        return path
    if output_dir and (Path(output_dir) / "model.pt").is_file():
        return Path(output_dir) / "model.pt"
    found = find_files(input_root, "model.pt")
    if not found:
        raise FileNotFoundError(
            f"no model.pt in {output_dir or '(no output_dir)'} nor below {input_root}. On "
            "Kaggle, attach the train kernel's output (`make push-kernel NB=infer` attaches "
            "<user>/pixelplay-train); locally, pass model_path or train into output_dir.")
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    if len(found) > 1:
        log.info("several models below %s; using the newest, %s (others: %s)", input_root,
                 found[0], ", ".join(map(str, found[1:])))
    return found[0]
