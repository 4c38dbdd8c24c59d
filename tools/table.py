"""Turn run directories into a table: one row per configuration, mean ± std over seeds.

    python tools/table.py runs/quickstart                     # print Markdown
    python tools/table.py runs/quickstart --out results/quickstart/table   # also write .md and .csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixbench.engine.checkpoint import atomic_write_text
from mixbench.tables import collect_rows, to_csv, to_markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a folder of run directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.csv as well")
    args = parser.parse_args()
    if not args.runs.is_dir():
        print(f"error: {args.runs} is not a folder; pass the runs_root of your runs (default: runs)", file=sys.stderr)
        return 2
    rows = collect_rows(args.runs)
    if not rows:
        print(f"error: no summary.json under {args.runs}; train something first (tools/train.py)", file=sys.stderr)
        return 2
    markdown = to_markdown(rows)
    print(markdown, end="")
    if args.out:
        atomic_write_text(markdown, args.out.with_suffix(".md"))
        atomic_write_text(to_csv(rows), args.out.with_suffix(".csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
