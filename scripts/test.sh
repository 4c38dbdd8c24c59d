#!/usr/bin/env bash
# Set up (if needed), check the code style, and run the test suite on the CPU. Extra arguments go to pytest.
#   bash scripts/test.sh              ruff check + ruff format --check + the whole suite on every core
#   bash scripts/test.sh -k sumix     ... any pytest selection (the style checks always run first)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export CUDA_VISIBLE_DEVICES=""   # the suite is CPU-only by design
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
