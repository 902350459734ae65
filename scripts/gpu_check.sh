#!/usr/bin/env bash
# Smoke and speed check of the GPU path (about 5 minutes on one GPU); see benchmarks/gpu_check.py.
#   scripts/gpu_check.sh              # on a GPU machine: every recipe at fp32/bf16/fp16, compile, routing
#                                     # CUDA vs CPU in fp64, resume, GPU tests, MNIST epoch time and images/s
#   scripts/gpu_check.sh --dry-run    # anywhere: the same checks on CPU with tiny settings (< 2 minutes)
#   DRY=1 scripts/gpu_check.sh        # the same as --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
if [[ "${DRY:-0}" == "1" ]]; then args+=(--dry-run); fi
exec "${PYTHON:-python}" benchmarks/gpu_check.py "${args[@]}"
