#!/usr/bin/env bash
# The benchmark and the Kaggle rehearsal on a GPU machine, in one command:
#   bash bench/gpu.sh [all|rows|rehearsal] [more bench.py flags]      (default: all)
#
# Same as `make bench BENCH_ARGS="--device cuda ..."`, but without make's .venv step: a device
# machine has no network, so nothing is installed; it runs with the python that already has
# torch + CUDA (PY=..., default: .venv/bin/python if present, else python3) and this checkout
# on PYTHONPATH. Rows a-e (bench/bench.py's docstring), sized to finish within 4 minutes
# on one H200 (about 650 train JPEGs generated once, 2+ epochs of each pipeline, 30 training
# steps each, 200 test images voted; d: the protocol on synthetic challenge-sized arrays, CPU,
# seconds; e: the ~850 JPEGs embedded by SigLIP 2 So400m/16 @256 and CLIP ViT-L/14 @224 with
# random weights built on the GPU, about half a minute in all), under a hard 4-minute timeout.
# Writes bench/results/bench-<gpu>.json and bench/results-gpu.md.
# Then bench/rehearsal.py (its docstring): the full recipe at the challenge's size through the
# CLI (6,000 / 3,000 generated JPEGs, one ResNet101 epoch in fp16 killed mid-epoch and
# resumed, the experts with a random-weight SigLIP So400m, predict, fuse), under a hard
# 5-minute timeout; writes bench/results/rehearsal-<date>.json. Rows get 4 minutes: `all`
# fits one 10-minute device command. Checked on a CPU by tests/test_rehearsal.py (--small).
# Row a uses one loader worker per core (up to 8); for Kaggle's 4 cores: `taskset -c 0-3 bash ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" - <<'PYCHECK'
import importlib, sys
missing = [m for m in ("torch", "torchvision", "numpy", "PIL", "pandas", "tqdm",
                       "transformers")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench/gpu.sh: missing modules {missing}; this script installs nothing")
import torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch sees no GPU (torch %s)" % torch.__version__)
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, flush=True)
PYCHECK
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
part=all
case "${1:-}" in all|rows|rehearsal) part=$1; shift ;; esac
status=0
if [ "$part" != rehearsal ]; then
  timeout 240 "$PY" bench/bench.py --device cuda --train-per-class 16 --test-images 200 \
    --steps 30 --markdown bench/results-gpu.md "$@" || status=$?
fi
if [ "$part" != rows ]; then
  out=$(mktemp -d)/rehearsal  # the data and the 1.7 GB model stay out of the repository
  timeout 300 "$PY" bench/rehearsal.py --out "$out" \
    --json "bench/results/rehearsal-$(date +%Y%m%d).json" || status=$?
fi
exit "$status"
