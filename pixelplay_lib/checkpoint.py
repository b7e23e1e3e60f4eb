"""Atomic files and resumable checkpoints.

Every file that matters is written to a temporary name in the same folder, flushed,
fsynced and renamed over the target: a crash at any instant leaves either the old file or
the new one, never half of one. Checkpoints are named by progress
(`ckpt-e<epochs done>-s<steps into the next epoch>.pt`); while training the two newest are
kept, so a checkpoint that is unreadable anyway (a truncated upload, a full disk) falls back
to the previous one; a finished run keeps only its newest loadable one (keep_only_newest:
enough to extend it with more epochs, and a Kaggle output stays small). They load with
weights_only=True: a checkpoint from an attached dataset cannot run code.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .locate import walk_inputs

log = logging.getLogger("pixelplay")

CKPT_RE = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
KEEP = 2


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def checkpoint_name(epoch: int, step: int) -> str:
    return f"ckpt-e{epoch:04d}-s{step:07d}.pt"


def save_checkpoint(folder: str | Path, payload: dict[str, Any], epoch: int, step: int) -> Path:
    """Write a new checkpoint, then drop all but the KEEP newest of this folder's own
    (never those of runs in sub-folders or elsewhere)."""
    folder = Path(folder)
    path = folder / checkpoint_name(epoch, step)
    atomic_torch_save(payload, path)
    for old in list_checkpoints(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def progress_of(path: Path) -> tuple[int, int]:
    m = CKPT_RE.match(path.name)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def list_checkpoints(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Checkpoint files in `folder` (and below it when recursive: the bounded walk of
    locate.walk_inputs, as on /kaggle/input), newest progress first."""
    folder = Path(folder)
    if recursive:
        found = [d / f for d, files in walk_inputs(folder) for f in files if CKPT_RE.match(f)]
    else:
        found = [p for p in folder.glob("ckpt-e*-s*.pt") if CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: (progress_of(p), str(p)), reverse=True)


def load_file(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_newest(paths: Iterable[Path]) -> tuple[dict[str, Any], Path] | None:
    """The first of `paths` that loads; unreadable ones are skipped with a warning."""
    for path in paths:
        try:
            return load_file(path), path
        except Exception as e:
            log.warning("skipping unreadable checkpoint %s (%s: %s)", path, type(e).__name__, e)
    return None


def keep_only_newest(folder: str | Path) -> tuple[Path | None, list[Path], int]:
    """Delete every checkpoint of `folder` (its own, not its sub-folders') except the newest
    one that loads: older ones, and newer ones that are unreadable. For a finished run, whose
    model.pt is written: the one kept still extends the run with more epochs.
    Returns (the one kept, or None when none loads and nothing is deleted; the deleted paths;
    the bytes they held)."""
    found = list_checkpoints(folder)
    newest = load_newest(found)
    if newest is None:
        return None, [], 0
    kept = newest[1]
    deleted = [p for p in found if p != kept]
    freed = 0
    for path in deleted:
        freed += path.stat().st_size
        path.unlink()
    return kept, deleted, freed
