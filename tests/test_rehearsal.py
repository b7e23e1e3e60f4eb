"""bench/rehearsal.py (the Kaggle rehearsal `bash bench/gpu.sh` runs at the challenge's size
on a GPU), checked here at --small size on the CPU: every phase runs through the real CLI,
the SIGTERM to the whole process group leaves a mid-epoch checkpoint, the resume continues
from it, and the JSON holds every figure and check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import HANG

REPO = Path(__file__).resolve().parents[1]
PHASES = ["data", "vl-model", "train-killed", "train-resumed", "predict", "fuse"]


def rehearse(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "rehearsal.py"), "--small",
                           "--out", str(out), "--json", str(out.parent / "copy.json")],
                          capture_output=True, text=True, timeout=HANG)


def test_small_rehearsal_passes_every_check(tmp_path):
    done = rehearse(tmp_path / "r")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    res = json.loads((tmp_path / "r" / "rehearsal.json").read_text())
    assert res == json.loads((tmp_path / "copy.json").read_text())
    assert list(res["phases"]) == PHASES
    assert all(p["exit"] == 0 and p["wall_s"] >= 0 for p in res["phases"].values())
    killed = res["phases"]["train-killed"]
    assert killed["sigterm_sent"] and any(e == 0 and s > 0 for e, s in killed["checkpoints_left"])
    assert res["checks"] and all(res["checks"].values())
    assert {"train.vl", "test.vl", "test.resnet", "classes.text"} <= set(res["arrays_checked"])
    assert res["submission_rows"] == {"submission": 60, "fused": 60}
    assert "| train-resumed |" in done.stdout and "FAIL" not in done.stdout


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("mine")
    done = rehearse(tmp_path / "r")
    assert done.returncode != 0 and "not empty" in done.stderr
    assert (tmp_path / "r" / "keep.txt").read_text() == "mine"
