#!/usr/bin/env bash
# Issue 3's GPU check: trains the default recipe on CUDA and prints time and accuracy.
# One prepared script for a lent GPU machine (no network there): it uses the machine's own torch,
# numpy, Pillow, PyYAML and matplotlib, and cnnkit from this checkout. Well within 8 minutes.
#
#   benchmarks/gpu_check.sh [path/to/cifar10-jpeg-train.zip] [seeds...]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10-jpeg-train.zip}
shift || true
seeds=${*:-0 1 2}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CNNKIT_HOME=${CNNKIT_HOME:-/tmp/cnnkit-home}
python3 - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
PY
# Validation-split estimate over seeds, then the timed default run on all the data.
python3 benchmarks/time_to_accuracy.py --data "$data" --recipe fast --device cuda --seeds $seeds
start=$(date +%s%N)
python3 -m cnnkit train --data "$data" --val-split 0 --device cuda --out /tmp/cnnkit-gpu-runs --quiet
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "cnnkit train (default recipe, all 50,000 images, start-up and data loading included): ${elapsed_ms} ms wall"
