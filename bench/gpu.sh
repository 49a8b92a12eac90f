#!/usr/bin/env bash
# One GPU, under 8 minutes, one JSON line per arm as it ends (see bench/gpu_bench.py for the arms).
#   bash bench/gpu.sh            # CUDA: random Qwen2.5-0.5B-sized model, bf16 autocast
#   bash bench/gpu.sh --smoke    # every arm on the CPU with a 2-layer model
# Each arm is capped (--arm_seconds of timed steps, killed at --arm_timeout) and the whole run at 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --signal=TERM 480 python bench/gpu_bench.py "$@"
