#!/usr/bin/env bash
# GPU checks of issue 13 (parity on the device, bench fp32/bf16/fp16, one meta iteration per
# task, 50 AMP training steps, a one-GPU torchrun run, resume after SIGKILL) -> one JSON.
#   scripts/gpu_check.sh [--out gpu_check.json]          # CUDA, at most ~8 minutes
#   scripts/gpu_check.sh --device cpu --quick            # the same steps on CPU, small sizes
# Uses $PYTHON (default: python3); see scripts/gpu_check.py for the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
