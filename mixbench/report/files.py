"""The files of a table: ``<out>/<stem>.md`` and ``.csv`` (``.tex``, figures on request), each written
atomically (a reader never sees a torn file; files written before a failure stay).  When the table's runs
have evaluation records (``tools/evaluate.py``), their evaluation table is written beside it
(``<out>/<stem>_evaluations.md`` and ``.csv``, :mod:`mixbench.report.evaluations`) and, with figures, its
figures into ``<out>/<stem>_evaluations/`` (:mod:`mixbench.report.evaluation_plots`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mixbench.atomic import atomic_write_text
from mixbench.report.evaluations import evaluation_table_of_groups, write_evaluation_table_files
from mixbench.report.table_text import to_csv, to_latex, to_markdown
from mixbench.report.tables import Table


@dataclass
class WrittenFiles:
    """What :func:`write_table_files` wrote: the table files (and table figure), and the run figures."""

    tables: list[Path] = field(default_factory=list)
    curves_dir: Path | None = None  # the folder of the run figures, when they were asked for
    curves: list[Path] = field(default_factory=list)
    evaluation_figures: list[Path] = field(default_factory=list)  # in <out>/<stem>_evaluations, if any


def write_table_files(
    table: Table, out: Path, stem: str, *, latex: bool = False, plots: bool = False
) -> WrittenFiles:
    """Write ``<out>/<stem>.md`` and ``.csv``, with ``latex`` also ``.tex``, with ``plots`` also ``.png``
    (:func:`~mixbench.report.plots.plot_table`), one curve figure per run in ``<out>/<stem>_curves`` and,
    where the runs have evaluation records (of the table's weights), their figures in
    ``<out>/<stem>_evaluations`` (:func:`~mixbench.report.evaluation_plots.write_evaluation_plots`)."""
    out = Path(out)
    written = WrittenFiles()
    for suffix, text in ((".md", to_markdown(table)), (".csv", to_csv(table))):
        written.tables.append(out / f"{stem}{suffix}")
        atomic_write_text(text, written.tables[-1])
    if latex:
        written.tables.append(out / f"{stem}.tex")
        atomic_write_text(to_latex(table), written.tables[-1])
    groups = list({id(row.group): row.group for row in table.rows if row.group is not None}.values())
    evaluations = evaluation_table_of_groups(groups, out, table.weights, title=table.reference_table or stem)
    if evaluations.has_records:  # the runs' tools/evaluate.py records, as one table beside this one
        written.tables += write_evaluation_table_files(evaluations, out, f"{stem}_evaluations")
    if plots:
        from mixbench.report.plots import plot_table, write_run_plots  # matplotlib only when drawing

        written.tables.append(plot_table(table, out / f"{stem}.png"))
        written.curves_dir = out / f"{stem}_curves"
        written.curves = write_run_plots(table, written.curves_dir)
        if evaluations.has_records:
            from mixbench.report.evaluation_plots import write_evaluation_plots

            written.evaluation_figures = write_evaluation_plots(evaluations, out / f"{stem}_evaluations")
    return written
