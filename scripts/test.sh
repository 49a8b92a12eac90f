#!/usr/bin/env bash
# Install everything into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
python -m pytest -q tests "$@"
