"""Shared fixtures: a small generated dataset in the challenge's layout, and tiny configs.

Nothing here downloads: models use weights=none and images are a few dozen pixels.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pixelplay_lib.config import make_config
from pixelplay_lib.demo import write_demo_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset (odd files included); tests must not modify it."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, train_per_class=8, n_test=40, width=(40, 64), seed=1)
    return out


@pytest.fixture(scope="session")
def demo_root(demo_dir) -> Path:
    return demo_dir / "vlg-dataset" / "vlg-dataset"


def tiny_config(data_root, output_dir, **overrides):
    """resnet18 at 32 px, everything trains: seconds per epoch on a CPU."""
    values = dict(data_root=str(data_root), output_dir=str(output_dir), arch="resnet18",
                  weights="none", trainable="all", image_size=32, batch_size=16, epochs=1,
                  lr=0.05, momentum=0.9, milestones=(5,), num_workers=0,
                  checkpoint_every_minutes=0, input_root=str(output_dir) + "-no-inputs")
    values.update(overrides)
    return make_config(**values)


def run_cli(*args: str, timeout: float = 600, env: dict | None = None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "pixelplay_lib", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def load_kaggle_ops():
    """tools/kaggle_ops.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kaggle_ops", REPO / "tools" / "kaggle_ops.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kaggle_ops"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
