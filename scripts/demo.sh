#!/usr/bin/env bash
# Install everything into .venv and run the offline demo (SmolLM2-135M-Instruct, about 5 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python demo.py "$@"
