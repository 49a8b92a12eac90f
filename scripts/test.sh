#!/usr/bin/env bash
# Install everything into .venv, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
ruff check .
lint-imports  # the layers of pyproject.toml: no import points up
# Two workers (pytest-xdist) for the two cores of a CI runner, each taking the next test when it is free, the
# slow ones first (tests/conftest.py); the 15 slowest tests are printed at the end.
python -m pytest -q tests -n 2 --dist load --maxschedchunk 1 --durations=15 "$@"
