#!/usr/bin/env bash
# Regenerate the committed quickstart results from today's code: train the quickstart grid afresh (in a new
# folder under runs/, so no older run is reused) and evaluate it (scripts/evaluate_quickstart.sh: eval=all),
# write results/quickstart/ (table.md|csv|png, table_curves/, table_evaluations.md|csv, table_evaluations/)
# and put both tables into README.md between their markers.
# The table says the hardware and the commit the runs were made on; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
runs=$(mktemp -d runs/publish-quickstart.XXXXXX)
MIXBENCH_QUICKSTART_RUNS="$runs" bash scripts/evaluate_quickstart.sh
rm -rf results/quickstart/table_curves results/quickstart/table_evaluations
.venv/bin/python tools/table.py "$runs" --out results/quickstart --name table --plots
.venv/bin/python - <<'PY'
import re
from pathlib import Path

readme = Path("README.md")
text = readme.read_text()
for name, marker in (("table", "quickstart table"), ("table_evaluations", "quickstart evaluations")):
    table = Path(f"results/quickstart/{name}.md").read_text().strip()
    start, end = f"<!-- {marker}: scripts/publish_quickstart.sh -->", f"<!-- end of {marker} -->"
    if start not in text or end not in text:
        raise SystemExit(f"error: README.md lacks the markers {start} ... {end}; put them around the table")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)
    print(f"README.md: {marker} replaced with results/quickstart/{name}.md")
readme.write_text(text)
PY
echo "runs kept in $runs"
