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

# The longest files, longest first (measured, serial, on the 2-core machine: about 310, 290,
# 140, 85, 48, 44 and 60 s): `make test` runs two pytest-xdist workers a file at a time in
# collection order (--dist loadfile --no-loadscope-reorder), so these start at once and the
# short files fill in around them instead of one long file running alone at the end.
LONGEST_FIRST = ("test_end_to_end.py", "test_resume.py", "test_distributed.py",
                 "test_notebooks.py", "test_wheel.py", "test_rehearsal.py", "test_testpool.py")


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread per process, this one and every CLI / notebook it starts: the
    # tests' models are tiny, and a second thread only contends with the other test worker
    # (measured: a 3-epoch CLI training run of tests/test_resume.py takes the same wall time
    # with 1 and 2 threads, 14.1 vs 14.6 s, and 23% less CPU). OMP_NUM_THREADS set by the
    # caller wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


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


# Seconds before a test gives up on a subprocess or a wait. A guard against hangs only: a
# busy 2-core machine (a CI neighbour, another pytest worker) ran a 3-minute training for
# 15 minutes, and nothing here should fail for being slow.
HANG = 2400


def run_cli(*args: str, timeout: float = HANG, env: dict | None = None):
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
