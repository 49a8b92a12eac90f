#!/usr/bin/env bash
# Install everything into .venv, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
ruff check .
python -m pytest -q tests "$@"
