"""Crash-proof training: kill it anywhere, resume, land on the same bits (CPU)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG, REPO, run_cli
from spawn_driver import wait_until

from pixelplay_lib.checkpoint import list_checkpoints, load_file, load_newest, progress_of

EPOCHS = 3


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data-root", str(data), "--output-dir", str(out), "--arch", "resnet18",
            "--weights", "none", "--trainable", "all", "--image-size", "32", "--batch-size",
            "16", "--epochs", str(EPOCHS), "--lr", "0.05", "--momentum", "0.9",
            "--milestones", "2", "--checkpoint-every-minutes", "0", "--input-root",
            str(out) + "-no-inputs", *extra]


def final_state(out: Path) -> dict:
    model = torch.load(out / "model.pt", weights_only=True)
    last = torch.load(list_checkpoints(out)[0], weights_only=True)
    return {"model": model["state_dict"], "optimizer": last["optimizer"],
            "metrics": (out / "metrics.jsonl").read_text(),
            "fusion": torch.load(out / "fusion.pt", weights_only=True)}


def assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        # bit-identical; NaN (the fusion's "not in this group" cells) equals NaN
        assert a.shape == b.shape and a.dtype == b.dtype, f"tensors differ at {where}"
        assert torch.equal(a.nan_to_num(nan=0.0), b.nan_to_num(nan=0.0)) and torch.equal(
            a.isnan(), b.isnan()), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def reference(demo_dir, tmp_path_factory) -> dict:
    """An uninterrupted run (main-process loading), the thing every resumed run must equal."""
    out = tmp_path_factory.mktemp("reference")
    done = run_cli(*train_args(demo_dir, out, "--num-workers", "0"))
    assert done.returncode == 0, done.stderr[-3000:]
    return final_state(out)


def test_killed_anywhere_then_resumed_is_bit_identical(demo_dir, tmp_path, reference):
    """SIGKILL at random moments (mid-epoch, mid-checkpoint-write: checkpoints are written
    every step), resume each time; with 2 loader workers instead of none, for good measure."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pixelplay_lib",
           *train_args(demo_dir, out, "--num-workers", "2", "--checkpoint-every-steps", "1")]
    rng = random.Random(1234)
    kills, progress = 0, (-1, -1)
    while kills < 5:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        # Wait for fresh progress, then kill after a random delay: mid-step, mid-write...
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = list_checkpoints(out)
            if found and progress_of(found[0]) > progress:
                progress = progress_of(found[0])
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer (its loader workers, in their own
        # process group, end by torch's watchdog within 5 s)
        proc.wait()
        kills += 1
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=HANG).returncode == 0
    assert kills >= 2, "the kill schedule missed the training; adjust the delays"
    assert_identical(final_state(out), reference)


def test_corrupt_newest_checkpoint_falls_back(demo_dir, tmp_path, reference):
    """A run killed during epoch 3 holds two checkpoints (a finished one keeps one only)."""
    out = tmp_path / "corrupt"
    proc = subprocess.Popen([sys.executable, "-m", "pixelplay_lib",
                             *train_args(demo_dir, out, "--num-workers", "0")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_until(lambda: [p.name for p in list_checkpoints(out)][:1] == ["ckpt-e0002-s0000000.pt"]
               or proc.poll() is not None, HANG, "epoch 2's checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list_checkpoints(out)) == 2 and not (out / "model.pt").exists()
    newest = list_checkpoints(out)[0]
    assert newest.name.startswith("ckpt-e0002")
    newest.write_bytes(newest.read_bytes()[:1000])  # a truncated write / upload
    done = run_cli(*train_args(demo_dir, out, "--num-workers", "0"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping unreadable checkpoint" in done.stdout + done.stderr
    assert "resumed from" in done.stdout and "ckpt-e0001" in done.stdout
    assert_identical(final_state(out), reference)


def test_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    good = tmp_path / "ckpt-e0001-s0000000.pt"
    torch.save({"ok": torch.ones(1)}, good)
    with open(tmp_path / "ckpt-e0009-s0000000.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    loaded, path = load_newest(list_checkpoints(tmp_path))
    assert path == good and not (tmp_path / "pwned").exists()


def test_changed_config_is_refused_with_the_fields(demo_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--epochs", "1")
                   ).returncode == 0
    changed = run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--lr", "0.1",
                                  "--image-size", "40"))
    assert changed.returncode == 2
    assert "lr: 0.05 -> 0.1" in changed.stderr and "image_size: 32 -> 40" in changed.stderr
    # what does not change the result may change: workers, time limit, epochs
    more = run_cli(*train_args(demo_dir, out, "--num-workers", "1", "--epochs", "2"))
    assert more.returncode == 0 and "resumed from" in more.stdout


def test_time_limit_stops_cleanly_and_resumes(demo_dir, tmp_path, reference):
    out = tmp_path / "limited"
    stopped = run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--time-limit", "0.0001"))
    assert stopped.returncode == 0
    assert "stopped by time limit" in stopped.stdout
    assert "Run the same command again" in stopped.stdout
    assert not (out / "model.pt").exists() and list_checkpoints(out)
    done = run_cli(*train_args(demo_dir, out, "--num-workers", "0"))
    assert done.returncode == 0
    assert_identical(final_state(out), reference)


@pytest.mark.parametrize("workers, group", [("0", False), ("2", True)])
def test_sigterm_stops_cleanly_with_a_checkpoint(demo_dir, tmp_path, workers, group):
    """SIGTERM to the trainer alone, or to its whole process group (Jupyter's shutdown,
    `kill -- -PGID`): the loader workers must not die of it; the trainer checkpoints."""
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "-m", "pixelplay_lib",
                             *train_args(demo_dir, out, "--num-workers", workers, "--epochs",
                                         "50")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list_checkpoints(out) and time.monotonic() < deadline:
        time.sleep(0.2)  # wait for the end of the first epoch
    if group:
        time.sleep(0.5)  # into the next epoch: its loader workers are running
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=HANG)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by SIGTERM" in stdout
    assert progress_of(list_checkpoints(out)[0]) >= (1, 0)


# A process holding a training loader with live workers, then ending: the loader's pipeline
# settings (worker_settings: fewer workers when /dev/shm is short, its worker_init_fn).
ENDING_SCRIPT = """
import sys, numpy as np
from pixelplay_lib.pipeline import EpochBatches, Views, make_loader
class Pixels:
    errors = {}
    def __len__(self): return 64
    def get(self, i): return np.full((40, 40, 3), i, dtype=np.uint8)
loader = make_loader(Views(Pixels(), [0] * 64, 32, "train", seed=0),
                     EpochBatches(range(64), 4, seed=0), 2, pin=False)
assert loader.num_workers == 2
batches = iter(loader)
next(batches)
if sys.argv[1] == "error":
    raise RuntimeError("an error mid-epoch")
"""


@pytest.mark.parametrize("ending", ["error", "done"])
def test_a_process_ending_mid_epoch_does_not_wait_for_its_loader_workers(ending):
    """An error mid-epoch, or an exit with the epoch's iterator still held (the persistent
    workers after a shared-memory fallback): multiprocessing terminates the workers at exit
    and waits for them. Workers that ignored that SIGTERM (the previous release's way to
    survive a process-group SIGTERM) kept the process waiting forever (a CI run hung)."""
    done = subprocess.run([sys.executable, "-c", ENDING_SCRIPT, ending], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG)
    assert done.returncode == (1 if ending == "error" else 0), done.stderr[-2000:]
    assert ("an error mid-epoch" in done.stderr) == (ending == "error")


def test_resumes_from_an_earlier_run_attached_as_input(demo_dir, tmp_path, reference):
    """On Kaggle a previous kernel version's output appears under /kaggle/input; the new
    version re-saves what it resumed from at once (its own output continues the chain)."""
    earlier = tmp_path / "inputs" / "pixelplay-train"
    assert run_cli(*train_args(demo_dir, earlier, "--num-workers", "0", "--epochs", "2")
                   ).returncode == 0
    out = tmp_path / "fresh"
    args = train_args(demo_dir, out, "--num-workers", "0")
    args[args.index("--input-root") + 1] = str(tmp_path / "inputs")
    done = run_cli(*args)
    assert done.returncode == 0 and "resumed from" in done.stdout
    assert str(earlier) in done.stdout
    assert_identical(final_state(out), reference)
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-e0003-s0000000.pt"]  # finished
    assert (out / "model_best.pt").is_file()


def test_a_finished_run_resumed_leaves_its_checkpoint_in_the_new_output(demo_dir, tmp_path):
    """A version that finds training already complete still leaves a resumable checkpoint
    (and model_best.pt) in its own output, or the next version would start from zero.

    The earlier checkpoint is given what older releases saved and what crashed a resume on
    other hardware: per-GPU CUDA RNG states (2 entries on T4 x2) and an empty grad-scaler
    state (saved disabled). Nothing random depends on saved states now (every draw is a
    function of seed, epoch, step, sample), so it resumes anywhere."""
    earlier = tmp_path / "inputs" / "pixelplay-train"
    args = train_args(demo_dir, earlier, "--num-workers", "0", "--epochs", "1")
    assert run_cli(*args).returncode == 0
    path = list_checkpoints(earlier)[0]
    payload = torch.load(path, weights_only=True)
    payload.update(rng={"cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}, scaler={})
    torch.save(payload, path)
    out = tmp_path / "next"
    args[args.index("--output-dir") + 1] = str(out)
    args[args.index("--input-root") + 1] = str(tmp_path / "inputs")
    done = run_cli(*args)
    assert done.returncode == 0 and "resumed from" in done.stdout
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-e0001-s0000000.pt"]
    assert (out / "model_best.pt").is_file() and (out / "model.pt").is_file()


def test_an_earlier_run_in_a_sub_folder_is_neither_resumed_nor_pruned(demo_dir, tmp_path):
    out = tmp_path / "working"
    nested = out / "exp1"
    assert run_cli(*train_args(demo_dir, nested, "--num-workers", "0", "--epochs", "2")
                   ).returncode == 0
    before = list_checkpoints(nested)
    done = run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--epochs", "1"))
    assert done.returncode == 0 and "resumed from" not in done.stdout
    assert list_checkpoints(nested) == before and len(before) == 1
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-e0001-s0000000.pt"]


@pytest.mark.parametrize("saved_enabled, now_enabled", [(False, True), (True, False),
                                                        (True, True), (False, False)])
def test_grad_scaler_state_moves_between_precisions(saved_enabled, now_enabled):
    """A checkpoint from CPU / bf16 / amp=off (scaler disabled, empty state) resumes with
    fp16 (scaler enabled, e.g. on a T4), and the reverse. An enabled scaler runs on CPU
    too, which stands in here for the GPU case."""
    from pixelplay_lib.train import restore_scaler

    saved = torch.amp.GradScaler("cpu", enabled=saved_enabled, init_scale=1024.0)
    now = torch.amp.GradScaler("cpu", enabled=now_enabled)
    restore_scaler(now, saved.state_dict())
    if saved_enabled and now_enabled:
        assert now.get_scale() == 1024.0
    elif now_enabled:
        assert now.get_scale() == 2.0 ** 16  # the initial scale: re-tuned in a few steps


def start_training(*cli: str) -> tuple[subprocess.Popen, list[str]]:
    """A training process in a group of its own (a terminal's job: Ctrl-C reaches it and its
    loader workers) and the lines of its stdout, read as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "pixelplay_lib", *cli], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def test_ctrl_c_checkpoints_mid_epoch_and_resumes(demo_dir, tmp_path, reference):
    """Ctrl-C (SIGINT to the whole job, 2 loader workers included) during epoch 2: the step
    is saved, exit 0; the same command continues and lands on the uninterrupted bits."""
    out = tmp_path / "ctrl-c"
    cli = train_args(demo_dir, out, "--num-workers", "2")
    proc, lines = start_training(*cli)
    wait_until(lambda: list_checkpoints(out) or proc.poll() is not None, HANG, "epoch 1")
    time.sleep(0.5)  # into epoch 2
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=HANG) == 0, "".join(lines)[-3000:]
    text = "".join(lines)
    assert "SIGINT: saving a checkpoint and stopping; Ctrl-C again stops at once" in text
    assert "stopped by SIGINT at epoch 2 step" in text and "Run the same command again" in text
    epoch, step = progress_of(list_checkpoints(out)[0])
    assert epoch == 1 and step > 0, "a checkpoint of the partial epoch"
    assert not (out / "model.pt").exists()
    done = run_cli(*cli)
    assert done.returncode == 0, done.stdout[-2000:]
    assert f"(epoch 1, step {step})" in done.stdout
    assert_identical(final_state(out), reference)


def test_second_ctrl_c_stops_at_once(demo_dir, tmp_path):
    """The second Ctrl-C does not wait for the step: KeyboardInterrupt, exit 130, and the
    newest checkpoint stays whole (written atomically), no temporary file left behind.
    (64 px: slower steps, so that the second one surely comes before the step's end.)"""
    out = tmp_path / "twice"
    proc, lines = start_training(*train_args(demo_dir, out, "--num-workers", "2",
                                             "--image-size", "64"))
    wait_until(lambda: list_checkpoints(out) or proc.poll() is not None, HANG, "epoch 1")
    time.sleep(0.5)  # into epoch 2: the stop waits for the step in progress
    os.killpg(proc.pid, signal.SIGINT)
    wait_until(lambda: any("Ctrl-C again stops at once" in line for line in lines)
               or proc.poll() is not None, HANG, "the first Ctrl-C's message", poll=0.005)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=HANG) == 130, "".join(lines)[-3000:]
    text = "".join(lines)
    assert "interrupted. train: run the same command again to resume" in text
    assert "stopped by SIGINT" not in text
    newest = list_checkpoints(out)[0]
    assert load_file(newest)["progress"]["epoch"] >= 1
    assert not list(out.glob(".*.tmp"))


@pytest.fixture(scope="module")
def one_epoch(demo_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-epoch")
    done = run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--epochs", "1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def changed_images(demo_dir: Path, where: Path, change: str) -> Path:
    """A copy of the demo data with one training image removed or one added."""
    shutil.copytree(demo_dir, where)
    image = sorted((where / "vlg-dataset" / "vlg-dataset" / "train").glob("*/00001.jpg"))[0]
    folder = image.parent
    if change == "removed":
        image.unlink()
    else:
        shutil.copy(image, folder / f"added-{image.name}")
    return where


@pytest.mark.parametrize("change", ["removed", "added"])
def test_another_image_set_is_refused_with_the_fix(demo_dir, tmp_path, one_epoch, change):
    data = changed_images(demo_dir, tmp_path / "data", change)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(list_checkpoints(one_epoch)[0], out)
    done = run_cli(*train_args(data, out, "--num-workers", "0"))
    assert done.returncode == 2
    for part in ("was trained on another set of images than the", "files added, removed or "
                 "renamed", "resume=never", "`--resume never`", "`make push-kernel RESUME_FROM=`"):
        assert part in done.stderr, done.stderr[-2000:]


def test_the_same_images_elsewhere_still_resume(demo_dir, tmp_path, one_epoch):
    """The image set is identified by the files' paths below the challenge's folder: the
    same data copied elsewhere (another mount on Kaggle) is the same set."""
    data = tmp_path / "moved"
    shutil.copytree(demo_dir, data)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(list_checkpoints(one_epoch)[0], out)
    done = run_cli(*train_args(data, out, "--num-workers", "0", "--epochs", "1"))
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr[-2000:]


def test_a_finished_run_keeps_one_checkpoint_and_extends(demo_dir, tmp_path, reference):
    """Finished on "Kaggle" (the decoded-image cache goes to the temporary folder): the output
    holds model.pt and one checkpoint, no cache; run again with more epochs, it continues
    from that checkpoint to the bits of an uninterrupted run of that length."""
    out, tmp = tmp_path / "kernel-output", tmp_path / "tmp"
    tmp.mkdir()
    first = run_cli(*train_args(demo_dir, out, "--num-workers", "0", "--epochs", "2",
                                "--devices", "cpu"),
                    env={"KAGGLE_KERNEL_RUN_TYPE": "Batch", "TMPDIR": str(tmp)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-e0002-s0000000.pt"]
    assert "run finished: kept ckpt-e0002-s0000000.pt" in first.stdout
    assert "deleted 1 older checkpoint(s)" in first.stdout
    assert (out / "model.pt").is_file() and not (out / "cache").exists()
    assert list((tmp / "pixelplay-cache").iterdir()), "the cache went to the temporary folder"
    more = run_cli(*train_args(demo_dir, out, "--num-workers", "0"))
    assert more.returncode == 0 and "resumed from" in more.stdout
    assert_identical(final_state(out), reference)
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-e0003-s0000000.pt"]
