"""Finding things below input_root in each of Kaggle's mount layouts (built under tmp_path).

Layouts: today's `competitions/<slug>/`, `datasets/<owner>/<slug>/`, `notebooks/<owner>/<kernel>/`
and older sessions' `<slug>/`. Checked for each: the challenge (data.find_challenge_root), the
attached ImageNet weights file (model.load_weights), model.pt (locate.find_model) and the
notebooks' bootstrap cell (the wheel or a folder holding pixelplay_lib/).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jupytext
import pytest
import torch
from conftest import HANG

from pixelplay_lib import locate
from pixelplay_lib.data import find_challenge_root
from pixelplay_lib.locate import find_model
from pixelplay_lib.model import load_weights

REPO = Path(__file__).resolve().parents[1]
SLUG = "vlg-recruitment-24-challenge"
OWNER = "someone"
WEIGHTS = "resnet18-f37072fd.pth"  # torchvision's file name for resnet18's DEFAULT weights
LAYOUTS = ["today", "older"]


class Inputs:
    """A fake /kaggle/input in one layout."""

    def __init__(self, root: Path, layout: str) -> None:
        self.root, self.today = root, layout == "today"

    def competition(self) -> Path:
        return self.root / "competitions" / SLUG if self.today else self.root / SLUG

    def dataset(self, slug: str) -> Path:
        return self.root / "datasets" / OWNER / slug if self.today else self.root / slug

    def kernel(self, slug: str) -> Path:
        return self.root / "notebooks" / OWNER / slug if self.today else self.root / slug

    def challenge(self) -> Path:
        """The competition's files as Kaggle serves them; returns the challenge root."""
        comp = self.competition()
        (comp / "Special-Package").mkdir(parents=True)  # no classes.txt: not the challenge
        root = comp / "vlg-dataset" / "vlg-dataset"
        (root / "train" / "fox").mkdir(parents=True)
        (root / "train" / "fox" / "a.jpg").write_bytes(b"jpeg")
        (root / "test").mkdir()
        (root / "classes.txt").write_text("fox\nblue whale\n")
        return root


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(params=LAYOUTS)
def inputs(request: pytest.FixtureRequest, tmp_path: Path) -> Inputs:
    return Inputs(tmp_path / "input", request.param)


# --------------------------------------------------------------------------- the data
def test_challenge_is_found_in_each_layout(inputs: Inputs) -> None:
    root = inputs.challenge()
    write(inputs.dataset("pixelplay-lib") / "pixelplay-0.1.0-py3-none-any.whl")
    write(inputs.kernel("pixelplay-train") / "model.pt")
    assert find_challenge_root("", inputs.root) == root


# --------------------------------------------------------------------------- weights
def test_attached_imagenet_weights_in_each_layout(inputs: Inputs) -> None:
    challenge = inputs.challenge()
    # A same-named file among the challenge's images sorts first but is never looked at.
    torch.save({"decoy": torch.zeros(1)}, write(challenge / "train" / "fox" / WEIGHTS))
    attached = write(inputs.dataset("imagenet-weights") / "resnet" / WEIGHTS)
    torch.save({"fc.bias": torch.arange(3.0)}, attached)
    assert locate.find_weights_file(WEIGHTS, inputs.root) == attached
    state = load_weights("resnet18", "imagenet", str(inputs.root))
    assert torch.equal(state["fc.bias"], torch.arange(3.0))


def test_no_weights_file_and_missing_root(tmp_path: Path) -> None:
    assert locate.find_weights_file(WEIGHTS, tmp_path) is None
    assert locate.find_weights_file(WEIGHTS, tmp_path / "absent") is None


# --------------------------------------------------------------------------- model.pt
def test_model_of_the_train_kernel_in_each_layout(inputs: Inputs, tmp_path: Path) -> None:
    inputs.challenge()
    out = tmp_path / "working"
    out.mkdir()
    older = write(inputs.kernel("pixelplay-train") / "model.pt")
    newer = write(inputs.kernel("pixelplay-train") / "exp1" / "model.pt")
    os.utime(older, (1_000, 1_000))
    assert find_model("", out, inputs.root) == newer


def test_find_model(tmp_path: Path) -> None:
    inputs, out = tmp_path / "input", tmp_path / "working"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="pixelplay-train"):
        find_model("", out, inputs)
    challenge = inputs / "competition" / "vlg-dataset"
    (challenge / "train" / "fox").mkdir(parents=True)
    (challenge / "classes.txt").write_text("fox\n")
    (challenge / "train" / "model.pt").write_bytes(b"x")  # in the data's image folders: ignored
    write(inputs / "run" / "cache" / "model.pt")  # a decoded-image cache: ignored
    with pytest.raises(FileNotFoundError):
        find_model("", out, inputs)
    (inputs / "pixelplay-train").mkdir()
    (inputs / "pixelplay-train" / "model.pt").write_bytes(b"x")
    assert find_model("", out, inputs) == inputs / "pixelplay-train" / "model.pt"
    (out / "model.pt").write_bytes(b"x")  # the output folder's own model wins
    assert find_model("", out, inputs) == out / "model.pt"
    assert find_model(str(inputs / "pixelplay-train" / "model.pt"), out, inputs).parent.name \
        == "pixelplay-train"
    with pytest.raises(FileNotFoundError, match="model_path"):
        find_model(str(tmp_path / "nope.pt"), out, inputs)


# --------------------------------------------------------------------------- the walk
def test_walk_is_bounded_and_survives_a_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "input"
    shallow = write(root / "a" / "b" / "c" / "d" / "e" / "f" / "x.pth")  # 6 levels: found
    write(root / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "x.pth")  # 7 levels: not looked at
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    # (through the loop, x.pth would be 8 levels down: beyond the bound too)
    assert locate.find_files(root, "x.pth") == [shallow]
    assert locate.find_files(root, "x.pth", max_depth=5) == []


# --------------------------------------------------------------------------- bootstrap cell
def bootstrap_source(nb: str) -> str:
    cells = [c for c in jupytext.read(REPO / "notebooks" / f"{nb}.py").cells
             if c.cell_type == "code"]
    return cells[0].source


def fake_wheel(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pixelplay_lib/__init__.py", f"__version__ = {version!r}\n")
    return path


def run_bootstrap(root: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The cell in a python without site-packages (-S): only what it finds can be imported."""
    return subprocess.run([sys.executable, "-S", "-c", bootstrap_source("infer")], cwd=cwd,
                          env={**os.environ, "PIXELPLAY_INPUT_ROOT": str(root)},
                          capture_output=True, text=True, timeout=HANG, check=False)


def test_the_three_notebooks_share_one_bootstrap_cell() -> None:
    assert bootstrap_source("explore") == bootstrap_source("train") == bootstrap_source("infer")


@pytest.mark.parametrize("where", ["dataset", "kernel-output"])
def test_bootstrap_imports_the_wheel_in_each_layout(inputs: Inputs, tmp_path: Path,
                                                    where: str) -> None:
    challenge = inputs.challenge()
    fake_wheel(challenge / "test" / "pixelplay-0.0.0-py3-none-any.whl", "decoy")  # not walked
    folder = inputs.dataset("pixelplay-lib") if where == "dataset" else \
        inputs.kernel("pixelplay-build")
    wheel = fake_wheel(folder / "pixelplay-0.1.0-py3-none-any.whl", "from-wheel")
    write(inputs.dataset("pixelplay-src") / "src" / "pixelplay_lib" / "__init__.py",
          b"__version__ = 'from-folder'\n")  # a wheel wins over a folder
    result = run_bootstrap(inputs.root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"pixelplay_lib from-wheel from {wheel}" in result.stdout


def test_bootstrap_uses_a_folder_holding_the_package(inputs: Inputs, tmp_path: Path) -> None:
    package = write(inputs.dataset("pixelplay-src") / "src" / "pixelplay_lib" / "__init__.py",
                    b"__version__ = 'from-folder'\n")
    result = run_bootstrap(inputs.root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"pixelplay_lib from-folder from {package}" in result.stdout


def test_bootstrap_says_what_to_attach(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    result = run_bootstrap(tmp_path / "input", tmp_path)
    assert result.returncode != 0
    assert "Add Input" in result.stderr and "pixelplay-lib" in result.stderr
    assert "make push-lib" in result.stderr
