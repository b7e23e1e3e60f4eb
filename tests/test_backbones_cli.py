"""Other backbones from the command line, on the small demo dataset (tiny settings, CPU):
torchvision's EfficientNetV2-S with trainable=last:2 and logit adjustment, and a timm
ConvNeXt trained and predicted end to end (skipped, saying why, when timm is absent)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import HANG, run_cli

from pixelplay_lib.data import load_challenge

try:
    import timm
except ImportError:
    timm = None

pytestmark = pytest.mark.slow


def common(demo_root, out, tmp_path) -> list[str]:
    return ["--data-root", str(demo_root), "--output-dir", str(out), "--input-root",
            str(tmp_path / "no-inputs"), "--num-workers", "0", "--vl-model", "",
            "--tta-votes", "1"]


def tiny_training(arch: str, trainable: str) -> list[str]:
    return ["--arch", arch, "--weights", "none", "--trainable", trainable, "--image-size", "32",
            "--epochs", "1", "--batch-size", "32", "--checkpoint-every-minutes", "0"]


def trained_parameters(out) -> set[str]:
    """Names of the parameters the run's checkpoint holds (it keeps the trainable ones and
    every buffer; BatchNorm statistics are buffers)."""
    (path,) = out.glob("ckpt-*.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {k for k in state if not k.endswith(buffers)}


def test_efficientnet_v2_s_last_2_with_logit_adjustment(demo_root, tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", *common(demo_root, out, tmp_path),
                   *tiny_training("efficientnet_v2_s", "last:2"),
                   "--loss-balance", "logit_adjust", timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loss_balance=logit_adjust: training logits + log(class prior)" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["trainable"], config["loss_balance"]) == ("last:2", "logit_adjust")
    # features.0 stem, 1..6 stages, 7 the final 1x1 conv: last:2 = stages 5, 6 (+ the conv)
    trained = trained_parameters(out)
    blocks = {".".join(k.split(".")[:3]) if k.startswith("body.") else k.split(".")[0]
              for k in trained}
    assert blocks == {"body.features.5", "body.features.6", "body.features.7", "head",
                      "attr_head"}, blocks
    assert (out / "model.pt").is_file()


@pytest.mark.skipif(timm is None, reason="timm is not installed (pip install timm)")
def test_timm_convnext_trains_and_predicts_from_the_cli(demo_root, tmp_path):
    out = tmp_path / "run"
    args = common(demo_root, out, tmp_path)
    done = run_cli("train", *args, *tiny_training("timm:convnext_atto", "last:1"), timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = {".".join(k.split(".")[:3]) for k in trained_parameters(out)}
    assert blocks == {"body.stages.3", "body.head.norm", "head.weight", "head.bias",
                      "attr_head.weight", "attr_head.bias"}, blocks
    done = run_cli("predict", *args, timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "submission.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(load_challenge(demo_root).test_files()) == 40
    assert all(r["class"] for r in rows)
