"""A Kaggle rehearsal at the challenge's size: every phase of the full recipe through the CLI.

    python bench/rehearsal.py --out /tmp/rehearsal            # the challenge's size (a GPU)
    python bench/rehearsal.py --out /tmp/r --small            # minutes on a CPU (the check)

`bash bench/gpu.sh` runs it on CUDA after rows a-e. Phases, each a real CLI process, timed
(wall seconds), with the peak GPU memory while it ran (nvidia-smi's memory.used sampled
every 0.25 s: the whole card, CUDA context included; null without nvidia-smi):
  data           demo-data: generated photo-like JPEGs in the challenge's layout (40 seen x
                 ~150 = ~6,000 training images, 3,000 test images from 40 + 10 classes,
                 300-500 px wide)
  vl-model       a random-weight SigLIP at the So400m/16 @256 dims of the default vl_model
                 saved as a folder (tests/tiny_models.py; nothing is downloaded)
  train-killed   one epoch of the recipe (ResNet101, layer4 + fc, 300 px, fp16 AMP on a GPU;
                 weights=none: the device machine has no internet), mid-epoch checkpoints
                 every third of the epoch, SIGTERM to the process group once the first exists
  train-resumed  the same command: resumes mid-epoch, finishes the epoch, fits the experts
                 (resnet, attributes, text, probe) and the fusion protocol, saves the arrays
  predict        7-vote TTA + the experts' embeddings of the test pool + the fusion
  fuse           `fuse --run-dir` on the saved arrays (CPU)
Checks (each true or false in the JSON): the kill exited 0 leaving a mid-epoch checkpoint,
the resume said "resumed from", every float array saved is finite (fp16 on a T4 overflows:
openai/CLIP #222), no log line reports a float32 recompute of non-finite embeddings, and each
submission has one row per test image. `--small` (resnet18 at 64 px, a tiny SigLIP, 240
training images) checks the script itself; its figures say nothing about a GPU.
Writes <out>/rehearsal.json (and --json PATH) and prints a table. Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from pixelplay_lib.checkpoint import list_checkpoints, progress_of  # noqa: E402
from pixelplay_lib.experts.arrays import FOLDER  # noqa: E402

FULL = dict(train_per_class=150, n_test=3000, width=(300, 500), arch="resnet101",
            image_size=300, batch_size=32, vl_size="so400m", vl_batch_size=64)
SMALL = dict(train_per_class=6, n_test=60, width=(72, 128), arch="resnet18",
             image_size=64, batch_size=16, vl_size="tiny", vl_batch_size=16)
NONFINITE = "non-finite"  # imagetext's warning when a batch is recomputed in float32


class GpuPeak:
    """Peak memory.used (MiB) of GPU 0 while the block runs, from nvidia-smi every 0.25 s."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self.smi = shutil.which("nvidia-smi")
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            out = subprocess.run([self.smi, "--query-gpu=memory.used", "--format=csv,noheader,"
                                  "nounits", "-i", "0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.peak = max(self.peak or 0.0, float(out.stdout.split()[0]))

    def __enter__(self) -> GpuPeak:
        if self.smi:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.smi:
            self._thread.join()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pixelplay_lib", *args]


def run_phase(name: str, cmd: list[str], log_dir: Path, results: dict[str, Any],
              kill_when: Any = None) -> str:
    """Run cmd (its own process group), log to log_dir/<name>.log, record wall seconds,
    exit code and GPU peak in results["phases"][name]; with kill_when (a callable), send
    SIGTERM to the group once it returns true. Returns the log's text."""
    log_path = log_dir / f"{name}.log"
    print(f"[rehearsal] {name}: {' '.join(cmd[2:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with GpuPeak() as gpu, open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        killed = False
        while proc.poll() is None:
            if kill_when is not None and not killed and kill_when():
                os.killpg(proc.pid, signal.SIGTERM)
                killed = True
            time.sleep(0.2)
    text = log_path.read_text(errors="replace")
    results["phases"][name] = {"wall_s": round(time.perf_counter() - started, 1),
                               "exit": proc.returncode, "gpu_peak_mib": gpu.peak,
                               "sigterm_sent": killed if kill_when is not None else None}
    if proc.returncode != 0:
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"[rehearsal] {name} failed (exit {proc.returncode}); log: {log_path}")
    return text


def finite_arrays(folder: Path) -> dict[str, bool]:
    """Every float array of every <pool>.npz (and classes.npz) in folder: all finite?"""
    report = {}
    for npz in sorted(folder.glob("*.npz")):
        with np.load(npz, allow_pickle=False) as z:
            for key in z.files:
                a = z[key]
                if np.issubdtype(a.dtype, np.floating):
                    report[f"{npz.stem}.{key}"] = bool(np.isfinite(a).all())
    return report


def submission_rows(path: Path) -> int:
    return sum(1 for _ in open(path)) - 1


def rehearse(out: Path, size: dict[str, Any], device: str) -> dict[str, Any]:
    from tiny_models import save_tiny

    from pixelplay_lib.demo import write_demo_dataset

    res: dict[str, Any] = {"size": size, "phases": {}, "checks": {},
                           "python": platform.python_version()}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data, model_dir, run = out / "data", out / "vl-model", out / "run"

    t = time.perf_counter()
    root = write_demo_dataset(data, train_per_class=size["train_per_class"],
                              n_test=size["n_test"], width=tuple(size["width"]),
                              workers=min(16, os.cpu_count() or 1))
    res["phases"]["data"] = {"wall_s": round(time.perf_counter() - t, 1), "exit": 0,
                             "images": sum(1 for _ in root.rglob("*.jpg"))}
    t = time.perf_counter()
    save_tiny(model_dir, "siglip", size=size["vl_size"],
              device="cuda" if device == "cuda" else "cpu")
    res["phases"]["vl-model"] = {"wall_s": round(time.perf_counter() - t, 1), "exit": 0}

    n_train = sum(1 for _ in (root / "train").rglob("*.jpg"))
    steps = int(n_train * 0.85) // size["batch_size"]  # val_fraction 0.15
    every = max(1, steps // 3)
    where = ["--data-root", str(data), "--output-dir", str(run), "--input-root",
             str(out / "no-inputs"), "--vl-model", str(model_dir), "--vl-batch-size",
             str(size["vl_batch_size"]), "--devices", "cpu" if device == "cpu" else "auto"]
    train = cli("train", *where, "--weights", "none", "--arch", size["arch"], "--image-size",
                str(size["image_size"]), "--epochs", "1", "--batch-size",
                str(size["batch_size"]), "--experts", "resnet,attributes,text,probe",
                "--checkpoint-every-steps", str(every), "--checkpoint-every-minutes", "0",
                *(["--amp", "fp16"] if device == "cuda" else []))

    def mid_epoch_checkpoint() -> bool:
        return any(progress_of(p)[1] > 0 for p in list_checkpoints(run))

    run_phase("train-killed", train, logs, res, kill_when=mid_epoch_checkpoint)
    left = [progress_of(p) for p in list_checkpoints(run)]
    res["checks"]["killed_mid_epoch_with_checkpoint"] = (
        res["phases"]["train-killed"]["sigterm_sent"] and not (run / "model.pt").exists()
        and any(e == 0 and s > 0 for e, s in left))
    res["phases"]["train-killed"]["checkpoints_left"] = left
    text = run_phase("train-resumed", train, logs, res)
    resumed = re.search(r"resumed from \S+ \(epoch 0, step ([1-9][0-9]*)\)", text)
    res["checks"]["resumed_mid_epoch"] = bool(resumed) and (run / "model.pt").exists()
    text += run_phase("predict", cli("predict", *where), logs, res)
    text += run_phase("fuse", cli("fuse", "--run-dir", str(run), "--name", "fused"), logs, res)

    finite = finite_arrays(run / FOLDER)
    res["checks"]["arrays_finite"] = bool(finite) and all(finite.values())
    res["arrays_checked"] = finite
    res["checks"]["no_float32_recompute"] = NONFINITE not in text
    rows = {n: submission_rows(run / f"{n}.csv") for n in ("submission", "fused")}
    res["checks"]["one_row_per_test_image"] = all(r == size["n_test"] for r in rows.values())
    res["submission_rows"] = rows
    for name in ("submission", "fused"):
        summary = json.loads((run / f"{name}.summary.json").read_text())
        res[f"{name}_summary"] = {k: summary[k] for k in summary
                                  if isinstance(summary[k], (int, float, str))}
    return res


def table(res: dict[str, Any]) -> str:
    lines = ["| phase | wall s | GPU peak MiB |", "|---|---:|---:|"]
    for name, p in res["phases"].items():
        peak = p.get("gpu_peak_mib")
        lines.append(f"| {name} | {p['wall_s']} | {'-' if peak is None else int(peak)} |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in res["checks"].items()]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="an empty or new folder (data, model, run)")
    ap.add_argument("--small", action="store_true", help="CPU-sized check of the script")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"[rehearsal] {out} is not empty: give a new folder")
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = rehearse(out, SMALL if args.small else FULL, device)
    res["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    res["torch"] = torch.__version__
    res["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(res, indent=2, default=str)
    (out / "rehearsal.json").write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(table(res))
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
