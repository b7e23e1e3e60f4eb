#!/usr/bin/env bash
# The benchmark on a GPU machine, in one command:   bash bench/gpu.sh [more bench.py flags]
#
# Same as `make bench BENCH_ARGS="--device cuda ..."`, but without make's .venv step: a device
# machine has no network, so nothing is installed; it runs with the python that already has
# torch + CUDA (PY=..., default: .venv/bin/python if present, else python3) and this checkout
# on PYTHONPATH. Rows a-e (bench/bench.py's docstring). Sized to finish well within 8 minutes
# on one H200 (about 650 train JPEGs generated once, 2+ epochs of each pipeline, 30 training
# steps each, 200 test images voted; d: the protocol on synthetic challenge-sized arrays, CPU,
# seconds; e: the ~850 JPEGs embedded by SigLIP 2 So400m/16 @256 and CLIP ViT-L/14 @224 with
# random weights built on the GPU, about half a minute in all), under a hard 8-minute timeout.
# Writes bench/results/bench-<gpu>.json and bench/results-gpu.md.
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
exec timeout 480 "$PY" bench/bench.py --device cuda --train-per-class 16 --test-images 200 \
  --steps 30 --markdown bench/results-gpu.md "$@"
