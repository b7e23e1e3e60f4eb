"""Data-parallel training on CPU: 2 gloo processes launched by the CLI through torchrun.

The trainable part here is the head only: with trainable BatchNorm layers, CPU processes
would each normalise with their own half-batch statistics (SyncBatchNorm, which the project
uses on GPUs, has no CPU kernels), and the two runs would legitimately differ.
Tolerance: 1e-5 absolute on the weights — the float sums of two half-batch gradients and one
full-batch gradient differ in their last bits, and a few SGD steps keep that small.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import HANG, REPO, run_cli
from spawn_driver import alive, descendants, wait_until

from pixelplay_lib.checkpoint import list_checkpoints, load_file, progress_of

TOL = 1e-5


def args(data: Path, out: Path, devices: str, epochs: int = 2) -> list[str]:
    return ["train", "--data-root", str(data), "--output-dir", str(out), "--arch", "resnet18",
            "--weights", "none", "--trainable", "fc", "--image-size", "32", "--batch-size",
            "16", "--epochs", str(epochs), "--lr", "0.05", "--momentum", "0.9",
            "--num-workers", "0", "--checkpoint-every-minutes", "0", "--input-root",
            str(out) + "-none", "--devices", devices]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def assert_close_models(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=TOL, msg=k)
    ha = pd.read_json(a / "metrics.jsonl", lines=True)
    hb = pd.read_json(b / "metrics.jsonl", lines=True)
    assert list(ha["train_images"]) == list(hb["train_images"])
    assert (ha["train_loss"] - hb["train_loss"]).abs().max() < 1e-4


@pytest.fixture(scope="module")
def single(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    done = run_cli(*args(demo_dir, out, "cpu"))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@contextlib.contextmanager
def holding(port: int):
    """A listening socket on `port` for the block (when another process holds it already,
    the port is just as taken)."""
    with socket.socket() as s:
        with contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            s.listen()
        yield


@pytest.fixture(scope="module")
def two(demo_dir, tmp_path_factory) -> Path:
    """Launched while torchrun's usual port 29500 is held and MASTER_PORT names it (an
    earlier run's workers still alive): --standalone's rendezvous picks its own port."""
    out = tmp_path_factory.mktemp("two")
    with holding(29500):
        done = run_cli(*args(demo_dir, out, "2"), env={"MASTER_PORT": "29500"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes, 8 images each per step" in done.stdout
    return out


def test_two_processes_match_one_with_the_same_global_batch(single, two):
    assert_close_models(single, two)


def test_a_two_process_checkpoint_resumes_in_one(demo_dir, tmp_path, single):
    out = tmp_path / "switch"
    first = run_cli(*args(demo_dir, out, "2", epochs=1))
    assert first.returncode == 0, first.stderr[-2000:]
    rest = run_cli(*args(demo_dir, out, "cpu", epochs=2))
    assert rest.returncode == 0 and "resumed from" in rest.stdout
    assert_close_models(single, out)


def test_sharded_prediction_is_gathered_complete_and_ordered(demo_dir, demo_root, two):
    """Plain voting (zero_shot=off) shards the test images over the processes."""
    common = ["predict", "--data-root", str(demo_dir), "--num-workers", "0", "--tta-votes",
              "2", "--input-root", str(two) + "-none", "--zero-shot", "off"]
    sharded = run_cli(*common, "--output-dir", str(two), "--devices", "2")
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    frame = pd.read_csv(two / "submission.csv", dtype=str)
    tests = sorted(p.name for p in (demo_root / "test").iterdir() if p.suffix == ".jpg")
    assert list(frame["image_id"]) == tests
    whole = run_cli(*common, "--output-dir", str(two), "--devices", "cpu", "--name", "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert frame.equals(pd.read_csv(two / "whole.csv", dtype=str))


def test_fused_prediction_under_torchrun_runs_once(demo_dir, demo_root, two, tmp_path):
    """The fused decision runs in one process (rank 0); the other ranks return at once: the
    submission is complete and equals the one-process one."""
    common = ["predict", "--data-root", str(demo_dir), "--num-workers", "0", "--tta-votes",
              "2", "--input-root", str(two) + "-none", "--model-path", str(two / "model.pt")]
    launched = run_cli(*common, "--output-dir", str(tmp_path / "a"), "--devices", "2")
    assert launched.returncode == 0, launched.stderr[-2000:]
    alone = run_cli(*common, "--output-dir", str(tmp_path / "b"), "--devices", "cpu")
    assert alone.returncode == 0, alone.stderr[-2000:]
    a = pd.read_csv(tmp_path / "a" / "submission.csv", dtype=str)
    assert len(a) == len([p for p in (demo_root / "test").iterdir() if p.suffix == ".jpg"])
    assert a.equals(pd.read_csv(tmp_path / "b" / "submission.csv", dtype=str))


# -- notebooks' launcher (distributed.spawn), driven by tests/spawn_driver.py as the parent

DRIVER = Path(__file__).with_name("spawn_driver.py")


def drive(mode: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), mode, str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def rank_records(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("mode", ["held", "race"])
def test_spawn_meets_on_a_free_port(tmp_path, mode):
    """held: MASTER_PORT names a port another socket listens on (a notebook cell run again
    while the earlier run's workers live on: accelerate #74). race: the port is taken
    between spawn's check and rank 0's listen: EADDRINUSE, and spawn starts again."""
    proc = drive(mode, tmp_path)
    stdout, stderr = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, stderr[-3000:]
    records = rank_records(tmp_path)
    assert [r["sum"] for r in records] == [3.0, 3.0]  # the all_reduce met both ranks
    assert records[0]["port"] == records[1]["port"]
    if mode == "held":
        held = int(re.search(r"holding port (\d+)", stdout).group(1))
        assert records[0]["port"] != held
        assert f"MASTER_PORT={held} is in use (an earlier run's processes?)" in stdout
    else:
        taken = int(re.search(r"took port (\d+)", stdout).group(1))
        assert records[0]["port"] != taken
        # (spawn starts again only on rank 0's EADDRINUSE, which the message names)
        assert f"port {taken} was taken between its check and the rendezvous " \
            "(EADDRINUSE)" in stdout


@pytest.mark.parametrize("mode, poke, expected", [
    ("interrupt", signal.SIGINT, "KeyboardInterrupt"),  # ranks ignore SIGTERM: killed
    ("raise", signal.SIGUSR1, "the parent failed while its ranks ran"),
    ("crash", None, "rank 1 crashed on purpose"),
])
def test_spawn_leaves_no_process_behind(tmp_path, mode, poke, expected):
    proc = drive(mode, tmp_path)
    wait_until(lambda: all((tmp_path / f"rank{r}.json").is_file() for r in (0, 1))
               or proc.poll() is not None, 120, "both ranks to start")
    pids = [r["pid"] for r in rank_records(tmp_path)]
    if poke is not None:
        assert all(alive(p) for p in pids)
        os.kill(proc.pid, poke)  # the parent only, as a notebook kernel gets it
    stdout, stderr = proc.communicate(timeout=HANG)
    assert proc.returncode != 0 and "spawn returned" not in stdout
    assert expected in stderr, stderr[-2000:]
    assert not [p for p in pids if alive(p)]
    if mode == "interrupt":
        assert "interrupted: the 2 processes save a checkpoint at their next step" in stdout


# -- the CLI's torchrun relaunch, interrupted like a terminal does (SIGINT to the job's group)

def start_cli(*cli: str) -> tuple[subprocess.Popen, list[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "pixelplay_lib", *cli], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out: list[str] = []
    err: list[str] = []
    for stream, sink in ((proc.stdout, out), (proc.stderr, err)):
        threading.Thread(target=lambda st=stream, si=sink: si.extend(st), daemon=True).start()
    return proc, out, err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_under_torchrun(demo_dir, tmp_path, presses):
    """One Ctrl-C: every worker saves its step and stops, exit 0. Two: all killed at once,
    exit 130, the newest checkpoint intact. Either way no process of the launch survives."""
    out = tmp_path / "run"
    proc, stdout, stderr = start_cli(*args(demo_dir, out, "2", epochs=50))
    wait_until(lambda: list_checkpoints(out) or proc.poll() is not None, HANG, "epoch 1")
    tree = descendants(proc.pid)
    assert len(tree) >= 3, "torchrun's agent and 2 workers"
    os.killpg(proc.pid, signal.SIGINT)
    if presses == 2:
        wait_until(lambda: any("Ctrl-C again stops them at once" in e for e in stderr), HANG,
                   "the first Ctrl-C's message")
        os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=HANG)
    text = "".join(stdout) + "".join(stderr)
    assert not [p for p in tree if alive(p)]
    newest = list_checkpoints(out)[0]
    load_file(newest)  # loads: never half-written
    if presses == 1:
        assert proc.returncode == 0, text[-3000:]
        assert "stopped by SIGINT" in text and "Run the same command again" in text
        assert progress_of(newest) > (1, 0)
    else:
        assert proc.returncode == 130, text[-3000:]
