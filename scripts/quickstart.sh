#!/usr/bin/env bash
# Set up (if needed), train the quickstart grid on the embedded digits dataset, print its table and write it
# with its figures next to the runs: runs/quickstart/report/ (table.md, table.csv, table.png, table_curves/).
# Nothing tracked by git changes. Re-running it skips the runs that are complete and resumes the ones that
# were interrupted. Extra arguments are tools/train.py overrides (method=vanilla,puzzlemix ...).
# MIXBENCH_QUICKSTART_RUNS=<folder> puts the runs and the report elsewhere (default runs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${MIXBENCH_QUICKSTART_RUNS:-runs/quickstart}
bash scripts/setup.sh
.venv/bin/python tools/train.py -m experiment=quickstart runs_root="$runs" "$@"
.venv/bin/python tools/table.py "$runs" --out "$runs/report" --name table --plots
