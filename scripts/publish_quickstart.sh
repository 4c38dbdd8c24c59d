#!/usr/bin/env bash
# Regenerate the committed quickstart results from today's code: train the quickstart grid afresh (in a new
# folder under runs/, so no older run is reused), write results/quickstart/ (table.md, table.csv, table.png,
# table_curves/) and put the same table into README.md between its quickstart-table markers.
# The table says the hardware and the commit the runs were made on; commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
runs=$(mktemp -d runs/publish-quickstart.XXXXXX)
MIXBENCH_QUICKSTART_RUNS="$runs" bash scripts/quickstart.sh
rm -rf results/quickstart/table_curves
.venv/bin/python tools/table.py "$runs" --out results/quickstart --name table --plots
.venv/bin/python - <<'PY'
import re
from pathlib import Path

readme, table = Path("README.md"), Path("results/quickstart/table.md").read_text().strip()
start, end = "<!-- quickstart table: scripts/publish_quickstart.sh -->", "<!-- end of quickstart table -->"
text = readme.read_text()
if start not in text or end not in text:
    raise SystemExit(f"error: README.md lacks the markers {start} ... {end}; put them around the table")
pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
readme.write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))
print("README.md: quickstart table replaced with results/quickstart/table.md")
PY
echo "runs kept in $runs"
