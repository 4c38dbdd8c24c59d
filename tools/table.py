"""Turn run directories into a table (and figures): one row per configuration, mean ± std over seeds.

    python tools/table.py runs/quickstart                       # -> results/tables/quickstart.md|csv
    python tools/table.py runs/ --table alignmixup_cvpr22_t1    # follow a published table (results/paper)
    python tools/table.py runs/ --table alignmixup_t1_cifar     # ... or the table of an experiment file
    python tools/table.py runs/quickstart --out results/quickstart --name table --latex --plots
    python tools/table.py runs/quickstart/digits/r18,width=16/mixup/digits_quick/seed0 --plots   # one run

The Markdown table is printed and written with the CSV (and LaTeX with --latex) to <out>/<name>.md|csv|tex.
Per seed the headline is the median top-1 of the last 10 epochs; a row gives mean ± std over the complete
seeds, their number, and the runs that are running or failed (shown, never averaged in).  Each configuration
is matched to the published cell it reproduces (its config.yaml's reference_table, or --table): the
published top-1 (error tables shown as 100 - error) and Δ = ours - published in the statistic the paper
published (best epoch for AlignMixup, median of the last 10 for OpenMixup/SUMix).  EMA networks of learned
methods (AutoMix, AdAutoMix) get their own columns.

--plots adds figures (PNG): <out>/<name>.png, ours against published for every row, and
<out>/<name>_curves/<data>__<model>__<method>__<schedule>__seed<k>.png, each run's top-1 (and EMA top-1),
train and test loss against the epoch with the metric window shaded.  Point the tool at one run directory
(or one configuration) to draw just its curves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixbench.errors import OneLineArgumentParser

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "tables"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main() -> int:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", type=Path, help="a folder of run directories (searched recursively), or one of them"
    )
    parser.add_argument(
        "--table", help="follow this published table (results/paper/<table>.yaml) or experiment"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: results/tables)"
    )
    parser.add_argument(
        "--name", help="file name stem (default: the table's name, else the runs folder's name)"
    )
    parser.add_argument("--latex", action="store_true", help="also write <name>.tex (a tabular)")
    parser.add_argument(
        "--plots", action="store_true", help="also draw <name>.png and one curve figure per run"
    )
    args = parser.parse_args()
    if not args.runs.is_dir():
        print(
            f"error: {args.runs} is not a folder; pass the runs_root of your runs (default: runs)",
            file=sys.stderr,
        )
        return 2
    from mixbench.report import build_table, resolve_table_name, to_markdown, write_table_files
    from mixbench.rundir import SUMMARY_FILE, RunDirectoryError, find_runs

    try:
        table_name = resolve_table_name(args.table) if args.table else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not find_runs(args.runs):
        print(
            f"error: no {SUMMARY_FILE} under {args.runs}; train something first (tools/train.py)",
            file=sys.stderr,
        )
        return 2
    try:
        table = build_table(args.runs, table_name)
    except RunDirectoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = args.name or table_name or args.runs.resolve().name
    print(to_markdown(table), end="")
    written = write_table_files(table, args.out, stem, latex=args.latex, plots=args.plots)
    message = "wrote " + ", ".join(_display(path) for path in written.tables)
    if written.curves_dir is not None:
        message += f" and {len(written.curves)} run figure(s) in {_display(written.curves_dir)}"
    print(message, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
