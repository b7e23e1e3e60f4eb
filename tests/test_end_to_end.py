"""The whole job through the public CLI, on generated data in the challenge's layout:
train, fit the fusion of the experts, predict, score against the hidden answer key.

The network is trained once (the `trained` fixture); the other runs continue from it.
Margins were measured on this machine with this exact fixture (see the README, "Accuracy",
for the figures and the command); they sit well below what was measured and far above
chance (2% for 50 classes, 10% among the unseen ten).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import HANG, run_cli

from pixelplay_lib.demo import write_demo_dataset

# The demo preset, shortened to 12 epochs (about 3 minutes here): as small as the margins
# below allow.
TRAIN = ["--preset", "demo", "--image-size", "48", "--epochs", "12", "--milestones", "8,10",
         "--num-workers", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e-data")
    write_demo_dataset(out, train_per_class=48, n_test=200, seed=7)
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e-run")
    done = run_cli("train", "--data-root", str(data), "--output-dir", str(out), *TRAIN,
                   "--input-root", str(out / "none"), timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def predict_and_score(data: Path, run: Path, name: str, *flags: str) -> dict:
    done = run_cli("predict", "--data-root", str(data), "--output-dir", str(run),
                   "--input-root", str(run / "none"), "--num-workers", "2", "--name", name,
                   *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = run_cli("score", "--submission", str(run / f"{name}.csv"), "--answers",
                     str(data / "answer_key.csv"), "--data-root", str(data))
    assert scored.returncode == 0, scored.stderr
    return json.loads(scored.stdout)["test"]


def test_training_beats_chance_and_reports_unreadable_files(trained):
    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 13))
    assert history[-1]["val_acc"] > 0.9  # measured 0.943; 40 seen classes: chance is 2.5%
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    summary = json.loads((trained / "summary.json").read_text())
    assert len(summary["unreadable"]) == 2  # the truncated and the empty file, skipped
    assert any("truncated" in reason for reason in summary["unreadable"].values())


def test_fusion_protocol_figures(trained):
    """Measured with this fixture (README "Accuracy"): resnet alone u 0.017 s 0.965 acc
    0.775; attributes alone u 0.292 s 0.949 acc 0.818; fused (weights 2 / 1) u 0.356
    s 0.958 H 0.519 acc 0.838; gamma 0: u 0.003; never unseen: acc 0.773."""
    report = json.loads((trained / "fusion.json").read_text())
    assert report["names"] == ["resnet", "attributes"]  # weights=none: no ImageNet head
    report = report["protocol"]
    assert len(report["folds"]) == 4 and sum(map(len, report["folds"])) == 40
    fused, alone = report["fusion"], report["experts"]
    assert fused["u"] > 0.3 and fused["s"] > 0.93 and fused["H"] > 0.45
    assert fused["acc"] >= max(r["acc"] for r in alone.values())
    assert fused["u"] > report["gamma0"]["u"] + 0.2  # the calibration at work
    assert fused["acc"] > report["never_unseen"]["acc"] + 0.04
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["special_package"]["overall"]["images"] == 10  # the demo's package


def test_predict_recognises_unseen_classes(data, trained):
    frame = pd.read_csv(data / "answer_key.csv")
    with_zs = predict_and_score(data, trained, "submission")
    submission = pd.read_csv(trained / "submission.csv")
    assert len(submission) == len(frame) == 200  # the corrupt test image still has its row
    assert list(submission.columns) == ["image_id", "class"]
    # measured: overall 0.805, seen 0.956, unseen 0.200 (chance among 50 classes: 2%)
    assert with_zs["unseen_accuracy"] >= 0.12 and with_zs["seen_accuracy"] > 0.92
    without = predict_and_score(data, trained, "votes", "--zero-shot", "off")  # measured 0.765
    assert without["unseen_accuracy"] == 0.0  # the baseline's blind spot
    assert with_zs["accuracy"] > without["accuracy"]
    uncalibrated = predict_and_score(data, trained, "gamma0", "--zs-gamma", "0")  # unseen 0.0
    assert with_zs["unseen_accuracy"] > uncalibrated["unseen_accuracy"] + 0.1


@pytest.mark.parametrize("damage, message", [
    ("rows", "has 3 rows; classes.txt lists 50"),
    ("text", "not a numeric matrix"),
])
def test_wrong_attribute_file_fails_before_training(data, tmp_path, damage, message):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data / "vlg-dataset", copy / "vlg-dataset")
    root = copy / "vlg-dataset" / "vlg-dataset"
    matrix = root / "predicate-matrix-continuous.txt"
    matrix.write_text("1 2\n3 4\n5 6\n" if damage == "rows" else "a b c\n")
    done = run_cli("train", "--data-root", str(copy), "--output-dir", str(tmp_path / "run"),
                   *TRAIN, "--input-root", str(tmp_path / "none"))
    assert done.returncode == 2 and message in done.stderr
    assert "predicate-matrix-continuous.txt" in done.stderr
    assert not (tmp_path / "run" / "model.pt").exists()


def test_unknown_class_without_attributes_fails_clearly(data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data / "vlg-dataset", copy / "vlg-dataset")
    root = copy / "vlg-dataset" / "vlg-dataset"
    for name in ("predicate-matrix-continuous.txt", "predicate-matrix-binary.txt"):
        (root / name).unlink()
    with open(root / "classes.txt", "a") as f:
        f.write("    51\tunicorn\n")
    done = run_cli("train", "--data-root", str(copy), "--output-dir", str(tmp_path / "run"),
                   *TRAIN, "--input-root", str(tmp_path / "none"))
    assert done.returncode == 2 and "unicorn" in done.stderr


def test_bad_files_without_the_cache_are_skipped_not_retried(demo_dir, tmp_path):
    """cache=false decodes during training: the truncated / empty files fail in the loader
    workers, are reported and skipped; the run neither hangs (timeout) nor crashes."""
    out = tmp_path / "nocache"
    done = run_cli("train", "--data-root", str(demo_dir), "--output-dir", str(out),
                   "--preset", "demo", "--image-size", "32", "--epochs", "1", "--cache",
                   "false", "--num-workers", "2", "--zero-shot", "off", "--input-root",
                   str(tmp_path / "none"), timeout=HANG)
    assert done.returncode == 0, done.stderr[-2000:]
    unreadable = json.loads((out / "summary.json").read_text())["unreadable"]
    assert sorted(Path(p).parent.name for p in unreadable) == ["deer", "hamster"]
    assert "skipped 2 unreadable training images" in done.stdout


def test_vision_language_experts_join_the_fusion(data, trained, tmp_path):
    """The trained run continued (as a later Kaggle version would: its output attached under
    input_root) with a tiny random-weight image-text model found in a Kaggle Models layout.
    An expert that knows nothing must not make the fusion worse."""
    from tiny_models import save_tiny

    inputs = tmp_path / "inputs"
    shutil.copytree(trained, inputs / "pixelplay-train", ignore=shutil.ignore_patterns(
        "cache", "embeddings"))
    save_tiny(inputs / "tiny-clip" / "transformers" / "default" / "1", "clip")
    out = tmp_path / "vl"
    args = ["--data-root", str(data), "--output-dir", str(out), "--input-root", str(inputs),
            "--num-workers", "2", "--vl-model", "tester/tiny-clip"]
    done = run_cli("train", *TRAIN, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "train loss" not in done.stdout  # no retraining
    with_vl = json.loads((out / "fusion.json").read_text())["protocol"]
    without = json.loads((trained / "fusion.json").read_text())["protocol"]
    assert set(with_vl["experts"]) == {"resnet", "attributes", "text", "probe"}
    assert with_vl["experts"]["text"]["acc"] < 0.5  # random weights: near chance alone
    assert with_vl["fusion"]["acc"] >= without["fusion"]["acc"] - 0.01
    done = run_cli("predict", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_csv(out / "submission.csv")
    assert len(rows) == 200 and rows["class"].notna().all()
    chosen = json.loads((out / "submission.fusion.json").read_text())["test_pool"]
    assert "200 test images" in chosen["skipped"]  # too few to choose: the protocol's rule
    # The transductive term needs the test images' embeddings whatever the weights: a
    # second submission with it on, under another name, leaves the first one untouched.
    before = (out / "submission.csv").read_bytes()
    done = run_cli("predict", *args, "--transductive", "on", "--name", "term")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(pd.read_csv(out / "term.csv")) == 200
    assert (out / "submission.csv").read_bytes() == before
    assert json.loads((out / "term.summary.json").read_text())["test_images"] == 200


def test_image_text_experts_alone_need_no_network(demo_dir, tmp_path):
    """experts=text,probe: nothing is fine-tuned; train fits the fusion, predict writes a
    complete submission, score reads the Special-Package scores beside it."""
    from tiny_models import save_tiny

    tiny = save_tiny(tmp_path / "tiny", "clip")
    out = tmp_path / "run"
    args = ["--data-root", str(demo_dir), "--output-dir", str(out), "--input-root",
            str(tmp_path / "none"), "--num-workers", "0", "--vl-model", str(tiny),
            "--experts", "text,probe", "--tta-votes", "2"]
    done = run_cli("train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "metrics.jsonl").exists() and (out / "fusion.pt").is_file()
    assert json.loads((out / "fusion.json").read_text())["names"] == ["text", "probe"]
    assert run_cli("predict", *args).returncode == 0
    rows = pd.read_csv(out / "submission.csv")
    assert len(rows) == 40
    refused = run_cli("predict", *args)  # nothing overwritten without asking
    assert refused.returncode == 2 and "submission.csv exists" in refused.stderr
    again = run_cli("predict", *args, "--name", "again")  # embeddings not computed twice
    assert again.returncode == 0 and "embedding test images: reusing" in again.stdout
    scored = run_cli("score", "--submission", str(out / "again.csv"))
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["special_package"]["overall"]["images"] == 10
    fused = run_cli("fuse", "--run-dir", str(out), "--name", "refit")  # from the arrays
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert len(pd.read_csv(out / "refit.csv")) == 40 and (out / "refit.special.csv").is_file()


def test_a_missing_image_text_model_is_one_clear_error(demo_dir, tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", "--data-root", str(demo_dir), "--output-dir", str(out),
                   "--input-root", str(tmp_path), "--experts", "text,probe", "--vl-model",
                   "nobody/no-such-model", timeout=HANG)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "nobody/no-such-model" in done.stderr and str(tmp_path) in done.stderr


def test_a_tiny_dataset_still_trains_and_predicts(tmp_path):
    """One image per seen class: nothing can be held out, so the zero-shot step falls back
    to untuned defaults (the bundled AwA2 attributes) instead of failing."""
    from test_data import make_layout

    root = make_layout(tmp_path / "data" / "c", ["antelope", "grizzly+bear", "killer+whale"],
                       {"antelope": 1, "grizzly+bear": 1}, n_test=3)
    out = tmp_path / "run"
    common = ["--data-root", str(root), "--output-dir", str(out), "--input-root",
              str(tmp_path / "none"), "--num-workers", "0"]
    trained = run_cli("train", *common, "--preset", "demo", "--image-size", "32",
                      "--epochs", "1", "--batch-size", "2")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "untuned" in trained.stdout
    predicted = run_cli("predict", *common, "--tta-votes", "2")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = pd.read_csv(out / "submission.csv")
    assert list(rows["image_id"]) == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert set(rows["class"]) <= {"antelope", "grizzly+bear", "killer+whale"}
