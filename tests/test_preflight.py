"""Fail fast: preflight.check finds every cheap problem at once, in seconds, before any
image is decoded or weight loaded; through the real CLI each stops with exit 2 and one
message, leaving nothing behind. Offline: tiny local models, no download."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import HANG, run_cli, tiny_config

from pixelplay_lib import preflight

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("clip"), "clip")


@pytest.fixture
def offline_downloads(tmp_path: Path, monkeypatch) -> None:
    """No torchvision file in the torch hub cache and download.pytorch.org played by a
    local port nobody listens on (a real refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(preflight, "DOWNLOAD_HOST", ("127.0.0.1", port))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def problems(cfg, command: str = "train") -> list[str]:
    """The problem lines preflight reports ([] when every check passes)."""
    try:
        preflight.check(cfg, command)
    except preflight.PreflightError as e:
        assert str(e).count("\n  - ") == len(e.problems)  # one line each
        return e.problems
    return []


def test_a_good_config_passes_in_seconds_and_leaves_nothing(demo_root: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    started = time.monotonic()
    assert problems(tiny_config(demo_root, out)) == []
    assert time.monotonic() - started < 10
    assert not (tmp_path / "new").exists()  # the probe's folders are removed again


@pytest.mark.parametrize("experts, typo, suggestion", [
    ("resnet,atributes", "atributes", "attributes"),
    ("text,prob", "prob", "probe"),
    ("imagnet", "imagnet", "imagenet"),
])
def test_expert_typos_get_a_suggestion(demo_root: Path, tmp_path: Path, tiny_clip: Path,
                                       experts, typo, suggestion) -> None:
    found = problems(tiny_config(demo_root, tmp_path / "out", experts=experts,
                                 vl_model=str(tiny_clip)))
    assert found == [f"experts={experts!r}: unknown expert {typo!r} (did you mean "
                     f"{suggestion}?). Fix: auto, or a comma list of resnet, attributes, "
                     "imagenet, text, probe"]


def test_every_problem_in_one_message(tmp_path: Path, offline_downloads) -> None:
    """A typo, missing data, an image-text expert without a model, ImageNet weights that
    cannot be had and an output_dir below a file: one error, five lines."""
    (tmp_path / "a-file").write_text("x")
    cfg = tiny_config(tmp_path / "no-data", tmp_path / "a-file" / "out",
                      experts="resnet,atributes,text", vl_model="", weights="imagenet")
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(cfg, "train")
    message = str(err.value)
    assert message.startswith("train: 5 problem(s) found before starting (nothing was run)")
    for part in ("unknown expert 'atributes'", f"data folder {tmp_path / 'no-data'} does not "
                 "exist", "vl_model is empty", "resnet18-f37072fd.pth (resnet18) is neither",
                 f"output_dir='{tmp_path / 'a-file' / 'out'}': cannot create or write"):
        assert part in message, part


@pytest.mark.parametrize("vl_model, message", [
    ("", "the text / probe experts need an image-text model but vl_model is empty"),
    ("{tmp}/kaggle/input/siglip2/transformers/default/1", "no such folder"),
    ("nobody/no-such-model", "image-text model 'nobody/no-such-model' not found"),
])
def test_image_text_experts_need_an_obtainable_model(demo_root: Path, tmp_path: Path,
                                                     monkeypatch, vl_model, message) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    cfg = tiny_config(demo_root, tmp_path / "out", experts="text,probe",
                      vl_model=vl_model.format(tmp=tmp_path))
    found = problems(cfg)
    assert len(found) == 1 and found[0].startswith("vl_model") and message in found[0]


def test_auto_leaves_the_default_model_to_open_sources(demo_root: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    """experts=auto with the default hub model offline: not an error (open_sources leaves
    text and probe out with a warning); a model the user named is checked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pixelplay_lib.config import Config

    assert problems(tiny_config(demo_root, tmp_path / "out", vl_model=Config.vl_model)) == []
    named = problems(tiny_config(demo_root, tmp_path / "out", vl_model="./no/such/model"))
    assert len(named) == 1 and "no such folder" in named[0]


@pytest.mark.parametrize("remove", ["processor_config.json", "tokenizer.json"])
def test_an_incomplete_model_folder_is_a_problem(demo_root: Path, tmp_path: Path,
                                                 tiny_clip: Path, remove) -> None:
    folder = Path(shutil.copytree(tiny_clip, tmp_path / "model"))
    (folder / remove).unlink()
    found = problems(tiny_config(demo_root, tmp_path / "out", experts="text,probe",
                                 vl_model=str(folder)))
    assert len(found) == 1 and f"{folder} is an incomplete model folder" in found[0]
    assert remove.split(".")[0] in found[0]


@pytest.mark.parametrize("arch, weights, attach, message", [
    ("resnet18", "imagenet", False, "resnet18-f37072fd.pth (resnet18) is neither in"),
    ("resnet18", "imagenet", True, ""),
    ("resnet18", "{tmp}/missing.pth", False, "weights='{tmp}/missing.pth': no such file"),
    ("resnet5O", "none", False, "arch='resnet5O': not a torchvision classifier (did you "
                                "mean resnet50?)"),
])
def test_imagenet_weights_are_found_without_loading(demo_root: Path, tmp_path: Path,
                                                    offline_downloads, arch, weights, attach,
                                                    message) -> None:
    """The network starts from ImageNet weights: torchvision's file below input_root (any
    layout, as model.load_weights finds it) passes; none anywhere and no download fails."""
    inputs = tmp_path / "inputs"
    if attach:
        (inputs / "datasets" / "me" / "weights").mkdir(parents=True)
        (inputs / "datasets" / "me" / "weights" / "resnet18-f37072fd.pth").write_bytes(b"x")
    cfg = tiny_config(demo_root, tmp_path / "out", arch=arch, weights=weights.format(
        tmp=tmp_path), trainable="layer4,fc", input_root=str(inputs))
    found = problems(cfg)
    assert found == [] if not message else (len(found) == 1 and message.format(tmp=tmp_path)
                                            in found[0]), found


def test_the_imagenet_expert_named_with_weights_none(demo_root: Path, tmp_path: Path,
                                                     tiny_clip: Path) -> None:
    found = problems(tiny_config(demo_root, tmp_path / "out", experts="imagenet,text",
                                 vl_model=str(tiny_clip)))
    assert found == ["experts: imagenet needs the pretrained 1000-way head but "
                     "weights='none'. Fix: weights=imagenet (or a state dict with that head), "
                     "or leave imagenet out of experts"]


def _read_only_dirs() -> list:
    cases = [pytest.param("file", id="an existing file"),
             pytest.param("below-file", id="below a file"),
             pytest.param("/sys/pixelplay-out", id="sysfs, read-only even for root",
                          marks=pytest.mark.skipif(not os.path.isdir("/sys/kernel"),
                                                   reason="no sysfs here")),
             pytest.param("chmod", id="a folder without write permission",
                          marks=pytest.mark.skipif(os.geteuid() == 0,
                                                   reason="root writes through permissions"))]
    return cases


def unwritable(tmp_path: Path, kind: str) -> Path:
    """An output_dir that cannot be created or written, of the given kind."""
    (tmp_path / "a-file").write_text("x")
    if kind == "file":
        return tmp_path / "a-file"
    if kind == "below-file":
        return tmp_path / "a-file" / "run"
    if kind == "chmod":
        (tmp_path / "locked").mkdir(mode=0o555)
        return tmp_path / "locked" / "run"
    return Path(kind)


@pytest.mark.parametrize("kind", _read_only_dirs())
def test_output_dir_must_be_writable(demo_root: Path, tmp_path: Path, kind: str) -> None:
    out = unwritable(tmp_path, kind)
    found = problems(tiny_config(demo_root, out))
    assert len(found) == 1 and found[0].startswith(f"output_dir='{out}': cannot create or "
                                                   "write there")
    assert "--output-dir (papermill: -p output_dir) a writable folder" in found[0]


@pytest.mark.parametrize("devices, batch, kaggle, message", [
    ("gpu", 16, False, "devices='gpu': auto, cpu or a number"),
    ("2", 15, False, "batch_size=15: the global batch must divide into the 2 devices"),
    ("auto", 16, True, "this Kaggle session has no GPU"),
])
def test_devices(demo_root: Path, tmp_path: Path, monkeypatch, devices, batch, kaggle,
                 message) -> None:
    """On this CPU machine: a value that is no choice, a batch that does not divide, and a
    Kaggle session given no GPU (runtime.make_runtime's check, before any process)."""
    if kaggle:
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        if __import__("torch").cuda.is_available():
            pytest.skip("a GPU is visible")
    found = problems(tiny_config(demo_root, tmp_path / "out", devices=devices,
                                 batch_size=batch))
    assert len(found) == 1 and message in found[0], found


@pytest.mark.parametrize("checkpoint, message", [
    (None, "no trained model at {out}/model.pt. Fix: train into output_dir first"),
    ("ckpt-e0003-s0000000.pt", "stopped before its end (newest checkpoint "
                               "ckpt-e0003-s0000000.pt)"),
])
def test_predict_needs_the_trained_model(demo_root: Path, tmp_path: Path, checkpoint,
                                         message) -> None:
    out = tmp_path / "run"
    out.mkdir()
    if checkpoint:
        (out / "ckpt-e0002-s0000000.pt").write_bytes(b"x")
        (out / checkpoint).write_bytes(b"x")
    found = problems(tiny_config(demo_root, out), "predict")
    assert len(found) == 1 and message.format(out=out) in found[0], found


# --------------------------------------------------------------------------- the CLI


def _incomplete(tmp_path: Path, tiny_clip: Path) -> str:
    folder = Path(shutil.copytree(tiny_clip, tmp_path / "uploaded"))
    (folder / "processor_config.json").unlink()
    return str(folder)


def _missing_kaggle_model(tmp_path: Path, tiny_clip: Path) -> str:
    (tmp_path / "kaggle" / "input" / "siglip2" / "keras").mkdir(parents=True)
    return str(tmp_path / "kaggle" / "input" / "siglip2" / "transformers" / "default" / "1")


CLI_CASES = {
    "typo'd expert": (["--experts", "resnet,atributes"],
                      "unknown expert 'atributes' (did you mean attributes?)"),
    "missing model folder": (["--experts", "text,probe", "--vl-model", _missing_kaggle_model],
                             "no such folder (a path is never looked up on the Hugging Face "
                             "hub). Nearest existing folder: {tmp}/kaggle/input/siglip2, "
                             "holding: keras"),
    "incomplete model folder": (["--experts", "text,probe", "--vl-model", _incomplete],
                                "{tmp}/uploaded is an incomplete model folder: missing "
                                "preprocessor_config.json or processor_config.json"),
    "read-only output dir": (["--output-dir", "/sys/pixelplay-out"],
                             "output_dir='/sys/pixelplay-out': cannot create or write there"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_stops_in_seconds_before_any_work(demo_dir: Path, tmp_path: Path,
                                              tiny_clip: Path, case: str) -> None:
    """`python -m pixelplay_lib train` with one mistake: exit 2, `error: ` and the line
    naming it, no traceback, and nothing of a run behind (no output folder: no config.json,
    checkpoint, decoded-image cache or embeddings)."""
    if case == "read-only output dir" and not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs here")
    flags, expected = CLI_CASES[case]
    flags = [f(tmp_path, tiny_clip) if callable(f) else f for f in flags]
    out = tmp_path / "run"
    args = ["train", "--data-root", str(demo_dir), "--output-dir", str(out), "--input-root",
            str(tmp_path / "none"), "--weights", "none", "--trainable", "all",
            "--num-workers", "0", "--epochs", "1", *flags]
    started = time.monotonic()
    done = run_cli(*args, timeout=HANG)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: train: 1 problem(s) found before starting")
    assert expected.format(tmp=tmp_path) in done.stderr and "Traceback" not in done.stderr
    assert seconds < 60, seconds  # python + torch start-up on a slow shared machine
    assert not out.exists() and not Path("/sys/pixelplay-out").exists()
