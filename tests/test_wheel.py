"""The three notebooks run from the library's wheel alone, as on Kaggle.

The wheel is built the way `make push-lib` builds it (kaggle_ops.build_wheel, from a copy of
the sources) and laid out under a fake input root in today's layout:

    <root>/datasets/tester/pixelplay-lib/pixelplay-<version>-py3-none-any.whl
    <root>/competitions/<slug>/vlg-dataset/vlg-dataset/...   (demo data, generated here)
    <root>/notebooks/tester/pixelplay-train/                 (the train notebook's output)

The notebooks run with papermill in a kernel where pixelplay is NOT installed: a fresh venv
(no pip) whose only link to this project's .venv is a .pth line naming its site-packages.
A plain path line adds that folder to sys.path without running the .pth files in it, so the
editable install's import hook never loads: `import pixelplay_lib` succeeds only through the
bootstrap cell finding the wheel (PIXELPLAY_INPUT_ROOT points it at the fake root).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from conftest import HANG, load_kaggle_ops

from pixelplay_lib.demo import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SLUG = "vlg-recruitment-24-challenge"
KERNEL = "pixelplay-from-wheel"

pytestmark = pytest.mark.slow


def build_wheel(tmp: Path) -> Path:
    """push-lib's build, from a copy of the sources (the shared tree's build/ stays as is)."""
    src = tmp / "src"
    shutil.copytree(REPO / "pixelplay_lib", src / "pixelplay_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    return load_kaggle_ops().build_wheel(sys.executable, src, tmp / "dist")


def kernel_without_pixelplay(tmp: Path, input_root: Path) -> Path:
    """A jupyter kernelspec folder whose kernel can import everything but pixelplay_lib."""
    env_dir = tmp / "kernel-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=HANG)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run([str(python), "-c", "import pixelplay_lib"], cwd=tmp,
                           capture_output=True, text=True, check=False)
    assert check.returncode != 0, "pixelplay_lib is importable without the wheel"
    spec_dir = tmp / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pixelplay from the wheel", "language": "python",
        "env": {"PIXELPLAY_INPUT_ROOT": str(input_root)},
    }))
    return tmp / "jupyter"


def test_notebooks_run_from_the_wheel_alone(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    root = tmp_path / "input"
    lib = root / "datasets" / "tester" / "pixelplay-lib"
    lib.mkdir(parents=True)
    wheel = Path(shutil.copy(build_wheel(tmp_path), lib))
    data = root / "competitions" / SLUG
    write_demo_dataset(data, train_per_class=4, n_test=12, width=(40, 64))
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_without_pixelplay(tmp_path, root)))
    monkeypatch.delenv("PYTHONPATH", raising=False)

    def run(name: str, output_dir: Path, **parameters) -> str:
        path = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(
            str(REPO / "notebooks" / f"{name}.ipynb"), str(path), kernel_name=KERNEL,
            parameters={"input_root": str(root), "output_dir": str(output_dir),
                        "num_workers": 0, **parameters},
            cwd=str(tmp_path), progress_bar=False)
        first = next(c for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
        return "".join(o.get("text", "") if isinstance(o.get("text"), str)
                       else "".join(o.get("text", [])) for o in first["outputs"])

    imported_from = f"from {wheel}/pixelplay_lib/__init__.py"
    assert imported_from in run("explore", tmp_path / "explore")
    train_dir = root / "notebooks" / "tester" / "pixelplay-train"  # a kernel output, attached
    assert imported_from in run("train", train_dir, preset="demo", image_size=32, epochs=1)
    assert (train_dir / "model.pt").is_file()
    infer_dir = tmp_path / "infer"
    assert imported_from in run("infer", infer_dir, tta_votes=1)

    sub = pd.read_csv(infer_dir / "submission.csv", dtype=str)
    tests = sorted(p.name for p in (data / "vlg-dataset" / "vlg-dataset" / "test").iterdir()
                   if p.suffix == ".jpg" and not p.name.startswith("."))
    assert list(sub.columns) == ["image_id", "class"]
    assert sorted(sub["image_id"]) == tests and sub["class"].notna().all()
