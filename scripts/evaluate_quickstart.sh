#!/usr/bin/env bash
# Evaluate the quickstart's runs beyond clean accuracy and print the table: tools/evaluate.py eval=all on the
# embedded digits runs (FGSM, PGD, calibration, OOD detection against generated noise sets, generated
# corruptions, occlusion, WSOL on the digits' ink boxes, the training step's cost), then write the tables and
# figures to runs/quickstart/report/ (table_evaluations.md|csv, table_evaluations/*.png, beside table.md).
# Trains the quickstart first where its runs are missing (scripts/quickstart.sh skips complete runs), and
# skips every suite already evaluated. Extra arguments are tools/evaluate.py overrides (eval=fgsm,pgd,
# eval.pgd.steps=50, weights=best, force=true ...). MIXBENCH_QUICKSTART_RUNS=<folder> as for quickstart.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${MIXBENCH_QUICKSTART_RUNS:-runs/quickstart}
MIXBENCH_QUICKSTART_RUNS="$runs" bash scripts/quickstart.sh
suites=eval=all
for argument in "$@"; do
  if [[ $argument == eval=* ]]; then suites=; fi
done
.venv/bin/python tools/evaluate.py "$runs" $suites "$@"
.venv/bin/python tools/table.py "$runs" --out "$runs/report" --name table --plots > /dev/null
echo "evaluation table and figures: $runs/report/table_evaluations.md, $runs/report/table_evaluations/"
