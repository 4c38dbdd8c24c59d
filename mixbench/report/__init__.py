"""Reports of run directories: tables against the published numbers (Markdown, CSV, LaTeX) and figures.

    from mixbench.report import build_table, to_markdown, plot_table
    table = build_table("runs/quickstart")           # or build_table("runs", "alignmixup_cvpr22_t1")
    print(to_markdown(table))
    plot_table(table, "quickstart.png")

Modules: :mod:`~mixbench.report.published` (the papers' numbers and the cells runs train),
:mod:`~mixbench.report.runs` (run directories read into configuration groups),
:mod:`~mixbench.report.tables` (rows and tables, no rendering), :mod:`~mixbench.report.render` (generic
Markdown / CSV / LaTeX), :mod:`~mixbench.report.table_text` (a table in those formats),
:mod:`~mixbench.report.files` (a table's files), :mod:`~mixbench.report.plots` (figures) and
:mod:`~mixbench.report.gallery` (figures of mixed batches; imports torch).  Everything here reads run
directories through :mod:`mixbench.rundir`; nothing imports the training engine.  The figure functions are
imported on first use, so that importing the package does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

from mixbench.report.files import WrittenFiles, write_table_files
from mixbench.report.published import resolve_table_name
from mixbench.report.runs import RunGroup, read_runs
from mixbench.report.table_text import to_csv, to_latex, to_markdown
from mixbench.report.tables import Row, Table, build_table, collect_rows

_FIGURES = ("plot_table", "plot_run", "write_run_plots")  # mixbench.report.plots, imported on first use

__all__ = [
    "Row",
    "RunGroup",
    "Table",
    "WrittenFiles",
    "build_table",
    "collect_rows",
    "read_runs",
    "resolve_table_name",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_table_files",
    *_FIGURES,
]


def __getattr__(name: str) -> Any:
    """``plot_table``, ``plot_run`` and ``write_run_plots`` from :mod:`mixbench.report.plots`."""
    if name in _FIGURES:
        from mixbench.report import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FIGURES})
