#!/usr/bin/env bash
# Idempotent set-up: creates .venv (Python 3.10+) and installs mixbench in editable mode with its test
# extra. Re-running it when everything is installed costs a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mixbench-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  echo "[setup] installing mixbench and its dependencies into .venv (the first time takes a few minutes)"
  # torch is pinned to the newest release this toolbox is tested with; pip takes it from a local
  # wheel cache when one is configured, from the registry otherwise.
  .venv/bin/python -m pip install -qq "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -qq -e ".[test]"
  touch "$stamp"
fi
