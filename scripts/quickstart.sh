#!/usr/bin/env bash
# Set up (if needed), train the quickstart grid on the embedded digits dataset, print its table and write it
# with its figures to results/quickstart/ (table.md, table.csv, table.png, table_curves/<run>.png).
# Re-running it skips the runs that are complete and resumes the ones that were interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python tools/train.py -m experiment=quickstart "$@"
.venv/bin/python tools/table.py runs/quickstart --out results/quickstart --name table --plots
