"""A :class:`~mixbench.report.tables.Table` as text: Markdown and LaTeX (the same columns) and CSV (plain
numbers), written with the generic renderers of :mod:`mixbench.report.render`.

Markdown and LaTeX show ``mean ± std`` over the complete seeds with two decimals (``—`` = unknown), the
published number and Δ = ours − published (named by the statistic compared where it is not the headline),
one column pair per extra evaluated network (``ema``), and the runs that are not complete; the notes follow
the Markdown table as paragraphs and precede the LaTeX tabular as ``%`` comments.  A table with evaluation
cells (FGSM, OOD, cost, ...) adds what each row compares (``measure``) and our number in that measure
(``ours``, per network), since its clean top-1 columns are then not what Δ compares.  The CSV has one line per
row with numbers rounded to 4 decimals (empty = unknown) and the published cell's table, row and column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mixbench.report.render import csv_text, latex_escape, latex_tabular, markdown_table
from mixbench.report.runs import HEADLINE
from mixbench.report.tables import STATISTIC_LABEL, Row, Table, mean_std

NO_VALUE = "—"


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return NO_VALUE
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _signed(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:+.2f}"


def _window_text(table: Table) -> str:
    windows = sorted({window for row in table.rows for window in row.windows}) or [10]
    return "/".join(map(str, windows))


def _delta_text(row: Row) -> str:
    delta = row.delta()
    if (
        delta is None
        or row.published is None
        or row.evaluation is not None
        or row.published.our_statistic == HEADLINE
    ):
        return _signed(delta)
    return f"{_signed(delta)} ({STATISTIC_LABEL[row.published.our_statistic]})"


@dataclass
class Column:
    """A displayed column: its header and the text of a row's cell."""

    header: str
    text: Callable[[Row], str]
    numeric: bool = True  # right-aligned in LaTeX


def display_columns(table: Table) -> list[Column]:
    """The columns of the Markdown and LaTeX tables (the CSV has plain numbers instead)."""
    window = _window_text(table)
    with_cells = any(row.published for row in table.rows)
    multi_table = table.reference_table is None
    columns = [
        Column("data", lambda row: row.data, numeric=False),
        Column("model", lambda row: row.model, numeric=False),
        Column("method", lambda row: row.method, numeric=False),
        Column("schedule", lambda row: row.schedule, numeric=False),
    ]
    if with_cells:
        columns.append(
            Column(
                "published cell",
                lambda row: row.published.label(multi_table) if row.published else "",
                numeric=False,
            )
        )
    columns += [
        Column(f"top-1, median of last {window} (mean ± std)", lambda row: _fmt(row.mean, row.std)),
        Column("seeds", lambda row: str(row.seeds)),
        Column("best", lambda row: _fmt(*mean_std(row.values("best")))),
        Column("last", lambda row: _fmt(*mean_std(row.values("last")))),
    ]
    for network in table.networks:
        columns.append(
            Column(
                f"{network} top-1, median of last {window}",
                lambda row, n=network: _fmt(*mean_std(row.values(HEADLINE, n))),
            )
        )
        columns.append(
            Column(f"{network} best", lambda row, n=network: _fmt(*mean_std(row.values("best", n))))
        )
    if table.has_evaluations:
        columns.append(Column("measure", Row.measure_text, numeric=False))
        columns.append(Column("ours (mean ± std)", lambda row: _fmt(*row.compared())))
        for network in table.networks:
            columns.append(Column(f"{network} ours", lambda row, n=network: _fmt(*row.compared(n))))
    if with_cells:
        columns.append(Column("published", lambda row: _fmt(row.published_value)))
        columns.append(Column("Δ (ours − published)", _delta_text))
        for network in table.networks:
            columns.append(Column(f"{network} Δ", lambda row, n=network: _signed(row.delta(n))))
    columns.append(Column("not complete", Row.status, numeric=False))
    return columns


def _as_table(table: Table | list[Row]) -> Table:
    return table if isinstance(table, Table) else Table(title="", rows=table)


def _displayed(table: Table) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, cell texts per row, and alignments ("r" numeric, "l" text) of the displayed columns."""
    columns = display_columns(table)
    cells = [[column.text(row) for column in columns] for row in table.rows]
    align = ["r" if column.numeric else "l" for column in columns]
    return [column.header for column in columns], cells, align


def to_markdown(table: Table | list[Row]) -> str:
    """The Markdown table (columns of :func:`display_columns`), each note after it as a paragraph."""
    table = _as_table(table)
    header, cells, _ = _displayed(table)
    return markdown_table(header, cells) + "".join(f"\n{note}\n" for note in table.notes)


def to_latex(table: Table) -> str:
    """A ``tabular`` (plain LaTeX, no packages needed) with the Markdown table's columns; title and notes as
    comments above it."""
    header, cells, align = _displayed(table)
    comments = [
        f"% {latex_escape(table.title)}" if table.title else "% mixbench table",
        *(f"% {note}" for note in table.notes),
    ]
    return "\n".join(comments) + "\n" + latex_tabular(header, cells, align)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


PUBLISHED_CSV_COLUMNS = (
    "table",
    "row",
    "column",
    "published",
    "published_raw",
    "published_metric",
    "published_statistic",
    "compared_statistic",
    "compared_mean",
    "compared_std",
    "delta",
    "evaluation",
    "weights",
)


def csv_columns(networks: list[str]) -> list[str]:
    """The CSV header for a table whose rows evaluate these extra networks."""
    columns = [
        "data",
        "model",
        "method",
        "schedule",
        "window",
        "mean",
        "std",
        "seeds",
        "best_mean",
        "last_mean",
    ]
    for network in networks:
        columns += [f"{network}_mean", f"{network}_std", f"{network}_best_mean", f"{network}_last_mean"]
    columns += PUBLISHED_CSV_COLUMNS
    for network in networks:
        columns += [f"{network}_compared_mean", f"{network}_delta"]
    return [*columns, "not_complete"]


def _csv_record(row: Row, networks: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "data": row.data,
        "model": row.model,
        "method": row.method,
        "schedule": row.schedule,
        "window": "/".join(map(str, row.windows)),
        "mean": _round(row.mean),
        "std": _round(row.std),
        "seeds": row.seeds,
        "best_mean": _round(mean_std(row.values("best"))[0]),
        "last_mean": _round(mean_std(row.values("last"))[0]),
    }
    for network in networks:
        mean, std = mean_std(row.values(HEADLINE, network))
        record[f"{network}_mean"] = _round(mean)
        record[f"{network}_std"] = _round(std)
        record[f"{network}_best_mean"] = _round(mean_std(row.values("best", network))[0])
        record[f"{network}_last_mean"] = _round(mean_std(row.values("last", network))[0])
    published = row.published
    if published:
        record.update(
            {
                "table": published.cell.table,
                "row": published.cell.row,
                "column": published.cell.column or "",
                "published": _round(published.value),
                "published_raw": _round(published.raw),
                "published_metric": published.metric,
                "published_statistic": published.statistic,
                "compared_statistic": (
                    published.evaluation.key if published.evaluation else published.our_statistic
                ),
                "compared_mean": _round(row.compared()[0]),
                "compared_std": _round(row.compared()[1]),
                "delta": _round(row.delta()),
                "evaluation": published.evaluation.name if published.evaluation else "",
                "weights": row.evaluated.weights if row.evaluated else "",
            }
        )
    for network in networks:
        record[f"{network}_compared_mean"] = _round(row.compared(network)[0]) if published else ""
        record[f"{network}_delta"] = _round(row.delta(network))
    record["not_complete"] = row.status()
    return record


def to_csv(table: Table | list[Row]) -> str:
    """Plain numbers, one line per row; empty = unknown."""
    table = _as_table(table)
    networks = table.networks
    return csv_text(csv_columns(networks), (_csv_record(row, networks) for row in table.rows))
