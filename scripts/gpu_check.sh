#!/usr/bin/env bash
# GPU checks of issues 13 and 25 (parity on the device, bench fp32/bf16/fp16, one meta iteration
# per task, 50 AMP training steps, a one-GPU torchrun run, resume after SIGKILL; batched
# throughput at batch 1/8/32, fuse over a folder of 200 pairs, the official network beside
# fuse with --official ReFusion.py, the MSRS det recipe's step and data times) -> one JSON.
#   scripts/gpu_check.sh [--out gpu_check.json] [--official ReFusion.py]   # CUDA, ~10 minutes
#   scripts/gpu_check.sh --device cpu --quick            # the same steps on CPU, small sizes
# Uses $PYTHON (default: python3); see scripts/gpu_check.py for the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
