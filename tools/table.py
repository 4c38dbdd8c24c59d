"""Turn run directories into a table (and figures): one row per configuration, mean ± std over seeds.

    python tools/table.py runs/quickstart                       # -> results/tables/quickstart.md|csv
    python tools/table.py runs/ --table alignmixup_cvpr22_t1    # follow a published table (results/paper)
    python tools/table.py runs/ --table alignmixup_t1_cifar     # ... or the table of an experiment file
    python tools/table.py runs/quickstart --out results/quickstart --name table --latex --plots
    python tools/table.py runs/quickstart/digits/r18,width=16/mixup/digits_quick/seed0 --plots   # one run
    python tools/table.py runs/ --table alignmixup_cvpr22_t3_robustness --weights best   # eval/*@best.json
    python tools/table.py --count       # how many published cells mixbench trains and measures, per table
    python tools/table.py runs/ --controls   # published, ours as published, ours under the controls

The Markdown table is printed and written with the CSV (and LaTeX with --latex) to <out>/<name>.md|csv|tex.
Per seed the headline is the median top-1 of the last 10 epochs; a row gives mean ± std over the complete
seeds, their number, and the runs that are running or failed (shown, never averaged in).  Each configuration
is matched to the published cell it reproduces (its config.yaml's reference_table, or --table): the
published top-1 (error tables shown as 100 - error) and Δ = ours - published in the statistic the paper
published (best epoch for AlignMixup, median of the last 10 for OpenMixup/SUMix).  EMA networks of learned
methods (AutoMix, AdAutoMix) get their own columns.

--controls writes <out>/<table>_controls.md|csv (the table: --table, default openmixup_cifar100_tiny_cub): per
published cell, the paper's number, ours as published and ours under the controls (a baseline with an EMA copy
of the model, ema=; a learned method annealed to min_lr 0), online and EMA (mixbench/report/controls.py).

Evaluation cells of the published tables (FGSM/PGD error, OOD detection, CIFAR-100-C accuracy, WSOL
localisation, params and ms per batch) are read from the runs' records of tools/evaluate.py
(<run>/eval/<suite>.json: the last epoch's weights; --weights best reads eval/<suite>@best.json), in the unit
the paper published, mean ± std over complete seeds, online and EMA apart; a configuration without the record
is listed with the command that makes it.

--plots adds figures (PNG): <out>/<name>.png, ours against published for every row, and
<out>/<name>_curves/<data>__<model>__<method>__<schedule>__seed<k>.png, each run's top-1 (and EMA top-1),
train and test loss against the epoch with the metric window shaded; where the runs have evaluation records,
<out>/<name>_evaluations/ attacks.png, occlusion.png, reliability.png and cams.png.  Point the tool at one
run directory (or one configuration) to draw just its curves.
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
        "runs",
        type=Path,
        nargs="?",
        help="a folder of run directories (searched recursively), or one of them",
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
        "--plots",
        action="store_true",
        help="also draw <name>.png, one curve figure per run and the evaluation figures",
    )
    parser.add_argument(
        "--weights",
        choices=("last", "best"),
        default="last",
        help="evaluation records of the last epoch's weights (eval/<suite>.json, default) or of best.pt's "
        "(eval/<suite>@best.json)",
    )
    parser.add_argument(
        "--controls",
        action="store_true",
        help="the controls table instead: published, ours as published, ours with ema= or min_lr 0 (md, csv)",
    )
    parser.add_argument(
        "--count",
        action="store_true",
        help="print how many cells of the published tables mixbench trains and measures, then exit",
    )
    args = parser.parse_args()
    if args.count:
        from mixbench.report.published import counts_text

        print(counts_text())
        return 0
    if args.runs is None:
        print("error: pass the runs_root of your runs (default: runs), or --count", file=sys.stderr)
        return 2
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
    if args.controls:
        return _write_controls(args, table_name)
    try:
        table = build_table(args.runs, table_name, weights=args.weights)
    except RunDirectoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = args.name or table_name or args.runs.resolve().name
    print(to_markdown(table), end="")
    written = write_table_files(table, args.out, stem, latex=args.latex, plots=args.plots)
    message = "wrote " + ", ".join(_display(path) for path in written.tables)
    if written.curves_dir is not None:
        message += f" and {len(written.curves)} run figure(s) in {_display(written.curves_dir)}"
    if written.evaluation_figures:
        message += f" and {len(written.evaluation_figures)} evaluation figure(s) in "
        message += _display(written.evaluation_figures[0].parent)
    print(message, file=sys.stderr)
    return 0


def _write_controls(args: argparse.Namespace, table_name: str | None) -> int:
    """``--controls``: print the controls table and write it as <out>/<name>.md|csv."""
    if args.latex or args.plots:
        print("error: --controls writes Markdown and CSV only; drop --latex and --plots", file=sys.stderr)
        return 2
    from mixbench.report.controls import DEFAULT_TABLE, build_controls_table, write_controls_files

    table = build_controls_table(args.runs, table_name or DEFAULT_TABLE)
    written = write_controls_files(table, args.out, args.name or f"{table.table}_controls")
    print(written[0].read_text(), end="")
    print("wrote " + ", ".join(_display(path) for path in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
