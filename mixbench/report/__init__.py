"""Reports of run directories: tables against the published numbers (Markdown, CSV, LaTeX) and figures.

    from mixbench.report import build_table, to_markdown, plot_table
    table = build_table("runs/quickstart")           # or build_table("runs", "alignmixup_cvpr22_t1")
    print(to_markdown(table))
    plot_table(table, "quickstart.png")

    from mixbench.report import build_evaluation_table, evaluation_to_markdown, write_evaluation_plots
    evaluations = build_evaluation_table("runs/quickstart")   # what tools/evaluate.py measured (eval/*.json)
    print(evaluation_to_markdown(evaluations))
    write_evaluation_plots(evaluations, "runs/quickstart/report/evaluations")

Modules: :mod:`~mixbench.report.published` (the papers' numbers and the cells runs train),
:mod:`~mixbench.report.runs` (run directories read into configuration groups),
:mod:`~mixbench.report.tables` (rows and tables, no rendering), :mod:`~mixbench.report.render` (generic
Markdown / CSV / LaTeX), :mod:`~mixbench.report.table_text` (a table in those formats),
:mod:`~mixbench.report.files` (a table's files), :mod:`~mixbench.report.plots` (figures),
:mod:`~mixbench.report.records` (the runs' evaluation records, ``eval/<suite>.json``, and the published
cells they fill), :mod:`~mixbench.report.evaluations` (the evaluation table of a runs folder),
:mod:`~mixbench.report.evaluation_plots` (its figures) and :mod:`~mixbench.report.gallery` (figures of mixed
batches; imports torch).  Everything here reads run
directories through :mod:`mixbench.rundir`; nothing imports the training engine.  The figure functions are
imported on first use, so that importing the package does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

from mixbench.report.evaluations import (
    EvaluationTable,
    build_evaluation_table,
    evaluation_to_csv,
    evaluation_to_markdown,
    write_evaluation_table_files,
)
from mixbench.report.files import WrittenFiles, write_table_files
from mixbench.report.published import resolve_table_name
from mixbench.report.runs import RunGroup, read_runs
from mixbench.report.table_text import to_csv, to_latex, to_markdown
from mixbench.report.tables import Row, Table, build_table, collect_rows

_FIGURES = ("plot_table", "plot_run", "write_run_plots")  # mixbench.report.plots, imported on first use
_EVALUATION_FIGURES = ("write_evaluation_plots",)  # mixbench.report.evaluation_plots, imported on first use

__all__ = [
    "EvaluationTable",
    "Row",
    "RunGroup",
    "Table",
    "WrittenFiles",
    "build_evaluation_table",
    "build_table",
    "collect_rows",
    "evaluation_to_csv",
    "evaluation_to_markdown",
    "read_runs",
    "resolve_table_name",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_evaluation_table_files",
    "write_table_files",
    *_FIGURES,
    *_EVALUATION_FIGURES,
]


def __getattr__(name: str) -> Any:
    """``plot_table``, ``plot_run`` and ``write_run_plots`` from :mod:`mixbench.report.plots`;
    ``write_evaluation_plots`` from :mod:`mixbench.report.evaluation_plots`."""
    if name in _FIGURES:
        from mixbench.report import plots

        return getattr(plots, name)
    if name in _EVALUATION_FIGURES:
        from mixbench.report import evaluation_plots

        return getattr(evaluation_plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FIGURES, *_EVALUATION_FIGURES})
