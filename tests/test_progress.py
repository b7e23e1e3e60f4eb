"""Progress bars where every redraw is kept (papermill issues #765, #426): a notebook run by
papermill, a log file or a pipe gets a redraw every progress.INTERVAL_S at most, however
fast the steps and however often the loop sets a postfix; a terminal redraws in place.

The non-interactive kinds are tested twice: a pipe, and the real training loop (25 short
epochs) in a notebook executed by papermill, whose .ipynb must stay small.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import nbformat
from conftest import HANG
from PIL import Image

from pixelplay_lib.progress import INTERVAL_S

REPO = Path(__file__).resolve().parents[1]
# A loop as fast as a training epoch on tiny images, setting a postfix at every step.
LOOP = """
import time
from pixelplay_lib.progress import bar, interactive
print("interactive" if interactive() else "not interactive", flush=True)
steps = bar(range({steps}), "epoch 1/1")
for i in steps:
    time.sleep({sleep})
    steps.set_postfix(loss=f"{{1 / (i + 1):.4f}}")
steps.close()
"""


def redraws(text: str, desc: str) -> int:
    """How many times a bar described `desc` was drawn in `text` (tqdm writes the
    description at every redraw)."""
    return len(re.findall(re.escape(desc) + r": +\d+%", text))


def run_loop(steps: int, sleep: float, stderr) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", LOOP.format(steps=steps, sleep=sleep)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=HANG,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout, time.monotonic() - started


def test_a_piped_bar_redraws_at_most_every_interval(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with open(log, "w") as f:  # a log file, as `python -m pixelplay_lib train 2> log`
        stdout, elapsed = run_loop(6000, 0.0005, f)
    assert stdout.strip() == "not interactive"
    n = redraws(log.read_text(), "epoch 1/1")
    # tqdm's defaults drew once per set_postfix: 6,000 lines here
    assert 1 <= n <= 2 + elapsed / INTERVAL_S, (n, elapsed)


def test_a_terminal_bar_is_interactive() -> None:
    """On a terminal the bar redraws in place, more often (nothing accumulates there)."""
    leader, follower = pty.openpty()
    # 24 x 80 characters (a new pseudo-terminal is 0 x 0: tqdm would draw nothing in it)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", LOOP.format(steps=1500, sleep=0.001)],
                            stdout=subprocess.PIPE, stderr=follower, cwd=REPO)
    os.close(follower)  # the child holds the terminal now
    text = b""
    try:
        while chunk := os.read(leader, 65536):  # read as it comes: a full terminal blocks
            text += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    finally:
        os.close(leader)
    assert proc.wait(timeout=HANG) == 0
    assert proc.stdout.read().decode().strip() == "interactive"
    assert redraws(text.decode(errors="replace"), "epoch 1/1") >= 2


# --------------------------------------------------------------------------- papermill
def tiny_challenge(root: Path, classes: int = 3, per_class: int = 14) -> Path:
    """classes.txt (real AwA2 names), train/<class>/ with small JPEGs, a 3-image test/."""
    names = ["antelope", "grizzly+bear", "killer+whale", "beaver"][:classes + 1]
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(names)))
    for k, name in enumerate(names[:classes]):
        (root / "train" / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (40, 32), (80 * k, 10 * j, 120)).save(
                root / "train" / name / f"{j:03d}.jpg")
    (root / "test").mkdir()
    for j in range(3):
        Image.new("RGB", (40, 32), (50 * j, 80, 120)).save(root / "test" / f"{j:05d}.jpg")
    return root


def output_text(nb: dict) -> str:
    """Every text the executed notebook stores: streams, text/plain results, tracebacks."""
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.append("".join(out.get("data", {}).get("text/plain", "")))
            parts.append("".join(out.get("traceback", [])))
    return "".join(parts)


def test_a_25_epoch_run_under_papermill_stays_small(tmp_path: Path) -> None:
    """The real training loop (25 epochs of 33 one-image steps, 'loss' set at each step)
    in a notebook executed by papermill: each epoch's bar is drawn a couple of times, not
    once a step, and the executed notebook holds well under 1 MB of text."""
    import papermill

    root = tiny_challenge(tmp_path / "data")
    out = tmp_path / "run"
    config = dict(data_root=str(root), output_dir=str(out), arch="resnet18", weights="none",
                  trainable="fc", image_size=32, batch_size=1, epochs=25, milestones=(30,),
                  num_workers=0, zero_shot="off", val_fraction=0.2, devices="cpu",
                  checkpoint_every_minutes=0, input_root=str(tmp_path / "no-inputs"))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "import torch\n"
        "torch.set_num_threads(1)  # tiny convolutions: threads only contend on a busy CPU\n"
        "from pixelplay_lib.config import make_config\n"
        "from pixelplay_lib.train import launch_train\n"
        f"summary = launch_train(make_config(**{config!r}))\n"
        "print(summary['status'])")]
    source, executed = tmp_path / "run25.ipynb", tmp_path / "run25-out.ipynb"
    nbformat.write(nb, source)
    started = time.monotonic()
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    elapsed = time.monotonic() - started
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 25
    text = output_text(json.loads(executed.read_text()))
    assert "done" in text
    epochs = [redraws(text, f"epoch {e}/25") for e in range(1, 26)]
    assert all(n >= 1 for n in epochs), epochs  # every epoch shows its bar
    # Before: one redraw per step (33 an epoch, 825 in all) from set_postfix.
    assert sum(epochs) <= 2 * 25 + elapsed / INTERVAL_S, (epochs, elapsed)
    assert len(text.encode()) < 100_000, len(text.encode())  # the budget: ~1 MB on Kaggle
    assert executed.stat().st_size < 200_000
