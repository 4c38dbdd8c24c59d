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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "tables"


def resolve_table_name(name: str) -> str:
    """A results/paper table name, or an experiment name standing for its reference_table; ValueError if neither."""
    from omegaconf import OmegaConf

    from mixbench import paper
    from mixbench.config import CONFIG_DIR

    if name in paper.reference_tables():
        return name
    experiment = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if experiment.is_file():
        reference = OmegaConf.load(experiment).get("reference_table")
        if reference in paper.reference_tables():
            return str(reference)
        raise ValueError(
            f"experiment {name} names no published table; pick one of: {', '.join(paper.reference_tables())}"
        )
    raise ValueError(
        f"unknown table '{name}'; valid: {', '.join(paper.reference_tables())} (or an experiment name)"
    )


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    from mixbench.tables import build_table, find_summaries, to_csv, to_latex, to_markdown

    try:
        table_name = resolve_table_name(args.table) if args.table else None
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not find_summaries(args.runs):
        print(
            f"error: no summary.json under {args.runs}; train something first (tools/train.py)",
            file=sys.stderr,
        )
        return 2
    from mixbench.atomic import atomic_write_text

    table = build_table(args.runs, table_name)
    stem = args.name or table_name or args.runs.resolve().name
    markdown = to_markdown(table)
    print(markdown, end="")
    written = [args.out / f"{stem}.md", args.out / f"{stem}.csv"]
    atomic_write_text(markdown, written[0])
    atomic_write_text(to_csv(table), written[1])
    if args.latex:
        written.append(args.out / f"{stem}.tex")
        atomic_write_text(to_latex(table), written[-1])
    if args.plots:
        from mixbench.plots import plot_table, write_run_plots

        written.append(plot_table(table, args.out / f"{stem}.png"))
        curves = write_run_plots(table, args.out / f"{stem}_curves")
    message = "wrote " + ", ".join(_display(path) for path in written)
    if args.plots:
        message += f" and {len(curves)} run figure(s) in {_display(args.out / f'{stem}_curves')}"
    print(message, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
