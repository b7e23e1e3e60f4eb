"""Data-parallel training on CPU: 2 gloo processes launched by the CLI through torchrun.

The trainable part here is the head only: with trainable BatchNorm layers, CPU processes
would each normalise with their own half-batch statistics (SyncBatchNorm, which the project
uses on GPUs, has no CPU kernels), and the two runs would legitimately differ.
Tolerance: 1e-5 absolute on the weights — the float sums of two half-batch gradients and one
full-batch gradient differ in their last bits, and a few SGD steps keep that small.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli

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


@pytest.fixture(scope="module")
def two(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    done = run_cli(*args(demo_dir, out, "2"))
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
    (two / "submission.csv").rename(two / "sharded.csv")
    whole = run_cli(*common, "--output-dir", str(two), "--devices", "cpu")
    assert whole.returncode == 0
    assert frame.equals(pd.read_csv(two / "submission.csv", dtype=str))


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
