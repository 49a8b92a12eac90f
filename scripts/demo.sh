#!/usr/bin/env bash
# Install everything into .venv and run the offline demo (SmolLM2-135M-Instruct fine-tuned on the persona conversations; its time is stated in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python demo.py "$@"
