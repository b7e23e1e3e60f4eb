"""The command line: no abbreviated flags, unknown ones named with the closest known ones,
predict's help and its warnings about flags the trained model overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import HANG, run_cli

from pixelplay_lib.__main__ import COMMANDS, StrictParser, build_parser
from pixelplay_lib.config import PREDICT_FIELDS


@pytest.mark.parametrize("command, given, suggested", [
    ("train", ["--lr-gamm", "0.5"], "--lr-gamma"),  # argparse took it for --lr-gamma
    ("train", ["--epoch", "3"], "--epochs"),
    ("predict", ["--dataroot", "x"], "--data-root"),
    ("score", ["--submision", "s.csv"], "--submission"),  # named before "--submission required"
])
def test_an_unknown_flag_stops_with_the_closest_ones(command, given, suggested):
    done = run_cli(command, *given, timeout=HANG)
    assert done.returncode == 2
    assert f"unknown flag {given[0]} (did you mean {suggested}" in done.stderr, done.stderr
    assert f"`python -m pixelplay_lib {command} --help` lists every flag" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_subcommand_parses_strictly():
    """Generic: a subcommand added to COMMANDS gets the same parser class."""
    parser = build_parser()
    assert isinstance(parser, StrictParser) and not parser.allow_abbrev
    choices = parser._subparsers._group_actions[0].choices
    assert set(choices) == set(COMMANDS)
    for name, sub in choices.items():
        assert isinstance(sub, StrictParser) and not sub.allow_abbrev, name


def test_predict_help_names_exactly_the_flags_that_apply():
    done = run_cli("predict", "--help", timeout=HANG)
    text = " ".join(done.stdout.split())  # argparse wraps lines
    applies = ", ".join("--" + f.replace("_", "-") for f in PREDICT_FIELDS)
    assert f"Of the flags below only these apply: {applies}." in text
    assert "--vl-model applies when it names another image-text model" in text
    assert "--image-size" not in applies and "--arch" not in applies


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    done = run_cli("train", "--data-root", str(demo_dir), "--output-dir", str(out), "--arch",
                   "resnet18", "--weights", "none", "--trainable", "all", "--image-size", "32",
                   "--batch-size", "16", "--epochs", "1", "--num-workers", "0",
                   "--checkpoint-every-minutes", "0", "--input-root", f"{out}-none")
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.parametrize("given, warned", [
    (["--image-size", "64", "--tta-votes", "2"],  # tta_votes: predict's own, no warning
     "image_size=64 (--image-size) ignored: the model was trained with image_size=32"),
    (["--arch", "resnet50", "--image-size", "32"],  # the trained value again: no warning
     "arch=resnet50 (--arch) ignored: the model was trained with arch=resnet18"),
])
def test_predict_warns_about_model_flags_it_ignores(demo_dir, trained, tmp_path, given,
                                                    warned):
    done = run_cli("predict", "--data-root", str(demo_dir), "--model-path",
                   str(trained / "model.pt"), "--output-dir", str(tmp_path), "--num-workers",
                   "0", "--input-root", f"{trained}-none", *given)
    assert done.returncode == 0, done.stderr[-2000:]
    assert warned in done.stdout
    assert done.stdout.count("ignored: the model was trained with") == 1
    assert (tmp_path / "submission.csv").is_file()
