#!/usr/bin/env bash
# Set up (if needed) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CUDA_VISIBLE_DEVICES=""   # the suite is CPU-only by design
exec .venv/bin/python -m pytest "$@"
