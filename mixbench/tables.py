"""Tables from run directories: one row per configuration (and published cell), seeds aggregated.

A configuration is the folder that holds the ``seed<k>`` run directories
(``<data>/<model>/<method>/<schedule>``).  For each complete seed we read from its ``summary.json`` the median
top-1 over the last ``metric_window`` epochs (the benchmark's headline), the best and the last epoch; a row
reports their mean ± sample standard deviation over the complete seeds and how many there are.  Runs that are
not complete (running or failed) are listed in the row, never averaged in.  Networks evaluated besides the
online one (the EMA network of AutoMix / AdAutoMix: ``ema_top1`` in ``metrics.jsonl``) get their own columns.

Published numbers (:mod:`mixbench.paper`).  A run's ``config.yaml`` names its ``reference_table`` (set by the
experiment file) and holds the composed config; :func:`mixbench.paper.matching_cells` finds the cells of that
table the configuration trains (same data/model/schedule/method and the same options).  Each cell gives the
published top-1 accuracy (error tables converted: ``100 - error``) and the statistic the paper published
(:func:`mixbench.paper.published_statistic`); the difference compares our runs in **that** statistic:

    Δ = mean over complete seeds of ours[statistic] - published
    ours[median_last10] = median of the last 10 epochs (also for "unstated"), ours[best] = best epoch,
    ours[last] = last epoch, ours[best_last10] = best of the last 10 epochs (from metrics.jsonl)

With ``table=<name>`` (:func:`build_table`) the rows follow that published table instead: every top-1 cell in
the paper's order, with the configurations under the root that train it (whatever their ``reference_table``:
AlignMixup T6 reuses T1's runs) or "not run"; cells mixbench cannot train are listed below the table.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mixbench import paper

ONLINE = "online"
HEADLINE = "median"  # per-seed statistics: median (of the metric window), best, last, best_window
STATISTIC_OF_PUBLISHED = {  # paper.published_statistic -> the per-seed statistic it is compared with
    "median_last10": "median",
    paper.UNSTATED: "median",
    "best": "best",
    "last": "last",
    "best_last10": "best_window",
}
STATISTIC_LABEL = {
    "median": "median last 10",
    "best": "best epoch",
    "last": "last epoch",
    "best_window": "best of last 10",
}
METHOD_ORDER = ("vanilla", "mixup", "cutmix", "manifoldmix")


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class SeedRun:
    """One run directory: its status and, per evaluated network, the statistics of its top-1 curve."""

    path: Path
    seed: int
    status: str  # complete | running | failed
    epochs_done: int
    epochs: int
    window: int
    statistics: dict[str, dict[str, float | None]]  # network label ("online", "ema") -> statistic -> value
    device: str
    message: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def describe(self) -> str:
        """``seed2: failed 3/20`` (for the table's "not complete" column)."""
        return f"seed{self.seed}: {self.status} {self.epochs_done}/{self.epochs}"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``metrics.jsonl`` (empty when the file is missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _prefix(label: str) -> str:
    return "" if label == ONLINE else f"{label}_"


def read_seed_run(summary_path: Path) -> SeedRun:
    summary = json.loads(Path(summary_path).read_text())
    window = int(summary["metric_window"])
    records = read_metrics(summary_path.parent)
    statistics_by_network: dict[str, dict[str, float | None]] = {}
    for label in summary.get("evaluated") or [ONLINE]:
        prefix = _prefix(label)
        curve = [record[f"{prefix}top1"] for record in records if f"{prefix}top1" in record]
        statistics_by_network[label] = {
            "median": summary.get(f"{prefix}median_last{window}_top1"),
            "best": summary.get(f"{prefix}best_top1"),
            "last": summary.get(f"{prefix}last_top1"),
            "best_window": max(curve[-window:]) if len(curve) >= window else None,
        }
    return SeedRun(
        path=summary_path.parent,
        seed=int(summary["seed"]),
        status=str(summary["status"]),
        epochs_done=int(summary["epochs_done"]),
        epochs=int(summary["epochs"]),
        window=window,
        statistics=statistics_by_network,
        device=f"{summary.get('device')}, {summary.get('precision')}",
        message=summary.get("message"),
    )


@dataclass
class RunGroup:
    """All seeds of one configuration (the folder above ``seed<k>``)."""

    path: Path
    data: str
    model: str
    method: str
    schedule: str
    runs: list[SeedRun] = field(default_factory=list)
    config: dict[str, Any] | None = None  # config.yaml of one of its runs (all seeds share it but the seed)

    @property
    def complete_runs(self) -> list[SeedRun]:
        return [run for run in self.runs if run.complete]

    @property
    def windows(self) -> list[int]:
        return sorted({run.window for run in self.runs})

    @property
    def networks(self) -> list[str]:
        """Evaluated networks besides the online one (``ema``), in first-seen order."""
        labels = [label for run in self.runs for label in run.statistics if label != ONLINE]
        return list(dict.fromkeys(labels))

    @property
    def reference_table(self) -> str | None:
        return (self.config or {}).get("reference_table")

    def values(self, statistic: str = HEADLINE, network: str = ONLINE) -> list[float]:
        """A statistic of every complete seed (seeds where it is unknown are left out)."""
        found = [run.statistics.get(network, {}).get(statistic) for run in self.complete_runs]
        return [value for value in found if value is not None]


def find_summaries(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(
        path
        for path in root.rglob("summary.json")
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _group_names(summary_path: Path) -> tuple[str, str, str, str]:
    """The four folder names above ``seed<k>`` (with their option suffixes, e.g. ``r18,width=16``); the
    summary's names when the run directory is not laid out as ``<data>/<model>/<method>/<schedule>/seed<k>``."""
    run_dir = summary_path.resolve().parent
    parts = run_dir.parent.parts
    if run_dir.name.startswith("seed") and len(parts) >= 5:
        return parts[-4], parts[-3], parts[-2], parts[-1]
    summary = json.loads(summary_path.read_text())
    return summary["data"], summary["model"], summary["method"], summary["schedule"]


def collect_groups(root: Path) -> list[RunGroup]:
    """Every configuration under ``root`` (``root`` may also be one configuration or one run directory)."""
    root = Path(root)
    groups: dict[Path, RunGroup] = {}
    for summary_path in find_summaries(root):
        run = read_seed_run(summary_path)
        configuration = summary_path.parent.parent
        if configuration not in groups:
            data, model, method, schedule = _group_names(summary_path)
            groups[configuration] = RunGroup(configuration, data, model, method, schedule)
        group = groups[configuration]
        group.runs.append(run)
        config_path = summary_path.parent / "config.yaml"
        if group.config is None and config_path.is_file():
            group.config = yaml.safe_load(config_path.read_text())
    for group in groups.values():
        group.runs.sort(key=lambda run: run.seed)
    return sorted(groups.values(), key=_group_sort_key)


def _method_rank(method: str) -> int:
    base = method.split(",")[0]
    return METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)


def _group_sort_key(group: RunGroup) -> tuple:
    return (group.data, group.model, group.schedule, _method_rank(group.method), group.method)


# ------------------------------------------------------------------------------------------------ rows


@dataclass
class Published:
    """A published cell and its number, as compared with our runs."""

    cell: paper.Cell
    value: float | None  # top-1 accuracy (%), error tables converted; None = not reported
    raw: float | None  # as published
    metric: str  # top1_acc | top1_err
    statistic: str  # best | last | median_last10 | best_last10 | unstated

    @classmethod
    def of(cls, target: paper.Cell) -> Published:
        return cls(
            cell=target,
            value=paper.published_value(target.table, target.row, target.column),
            raw=paper.raw_value(target.table, target.row, target.column),
            metric=paper.column_metric(target.table, target.column),
            statistic=paper.published_statistic(target.table, target.row),
        )

    @property
    def our_statistic(self) -> str:
        return STATISTIC_OF_PUBLISHED.get(self.statistic, HEADLINE)

    def label(self, with_table: bool) -> str:
        place = f"{self.cell.row} · {self.cell.column}" if self.cell.column is not None else self.cell.row
        return f"{self.cell.table}: {place}" if with_table else place


@dataclass
class Row:
    """One line of a table: a configuration's seeds (or none: a published cell not run yet) and its cell."""

    data: str
    model: str
    method: str
    schedule: str
    group: RunGroup | None = None
    published: Published | None = None
    note: str = ""  # "not run", "no top-1 cell of <table>", ...

    # --- ours
    def values(self, statistic: str = HEADLINE, network: str = ONLINE) -> list[float]:
        return self.group.values(statistic, network) if self.group else []

    @property
    def medians(self) -> list[float]:
        """Median top-1 of the metric window of every complete seed (the headline numbers)."""
        return self.values(HEADLINE)

    @property
    def mean(self) -> float | None:
        return mean_std(self.medians)[0]

    @property
    def std(self) -> float | None:
        return mean_std(self.medians)[1]

    @property
    def seeds(self) -> int:
        return len(self.group.complete_runs) if self.group else 0

    @property
    def incomplete(self) -> list[str]:
        return [run.describe() for run in self.group.runs if not run.complete] if self.group else []

    @property
    def networks(self) -> list[str]:
        return self.group.networks if self.group else []

    @property
    def windows(self) -> list[int]:
        return self.group.windows if self.group else []

    # --- against the paper
    @property
    def published_value(self) -> float | None:
        return self.published.value if self.published else None

    def compared(self, network: str = ONLINE) -> tuple[float | None, float | None]:
        """Mean ± std over seeds of ours in the statistic the paper published (the headline if none)."""
        statistic = self.published.our_statistic if self.published else HEADLINE
        return mean_std(self.values(statistic, network))

    def delta(self, network: str = ONLINE) -> float | None:
        """ours - published, both in the published statistic; None when either is missing."""
        ours = self.compared(network)[0]
        published = self.published_value
        return None if ours is None or published is None else ours - published

    def status(self) -> str:
        return "; ".join(filter(None, [self.note, *self.incomplete]))


@dataclass
class Table:
    """Rows plus what a reader must know to read them (footnotes)."""

    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    reference_table: str | None = None  # set when the rows follow one published table

    @property
    def networks(self) -> list[str]:
        return list(dict.fromkeys(label for row in self.rows for label in row.networks))


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than 2 values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _row(group: RunGroup | None, published: Published | None = None, note: str = "") -> Row:
    if group is not None:
        return Row(
            group.data, group.model, group.method, group.schedule, group=group, published=published, note=note
        )
    target = published.cell  # a cell without runs
    return Row(
        str(target.data),
        str(target.model),
        str(target.method),
        str(target.schedule),
        published=published,
        note=note,
    )


def _rows_by_own_reference(groups: list[RunGroup]) -> tuple[list[Row], list[str]]:
    """Each configuration with the cells of the table its own config.yaml names."""
    rows: list[Row] = []
    unknown_tables: set[str] = set()
    without_config = 0
    for group in groups:
        name = group.reference_table
        without_config += group.config is None
        if name is None:
            rows.append(_row(group))
            continue
        if name not in paper.reference_tables():
            unknown_tables.add(name)
            rows.append(_row(group, note=f"reference table {name} unknown"))
            continue
        cells = [target for target in paper.matching_cells(name, group.config) if paper.is_top1_cell(target)]
        if not cells:
            rows.append(_row(group, note=f"no top-1 cell of {name}"))
        rows.extend(_row(group, Published.of(target)) for target in cells)
    notes = (
        [f"Unknown reference tables (not in results/paper): {', '.join(sorted(unknown_tables))}."]
        if unknown_tables
        else []
    )
    if without_config:
        notes.append(
            f"{without_config} configuration(s) have no config.yaml: not matched with published cells."
        )
    return rows, notes


def _rows_of_reference(name: str, groups: list[RunGroup], root: Path) -> tuple[list[Row], list[str]]:
    """The top-1 cells of a published table in the paper's order (columns, then rows), each with its runs."""
    all_cells = paper.cells(name)
    columns = list(dict.fromkeys(target.column for target in all_cells))
    rows_order = list(dict.fromkeys(target.row for target in all_cells))
    top1_cells = [target for target in all_cells if target.runnable and paper.is_top1_cell(target)]
    top1_cells.sort(key=lambda target: (columns.index(target.column), rows_order.index(target.row)))
    matched: dict[tuple[str, str | None], list[RunGroup]] = {}
    unmatched = 0
    for group in groups:
        found = paper.matching_cells(name, group.config) if group.config is not None else []
        for target in found:
            matched.setdefault((target.row, target.column), []).append(group)
        unmatched += not found
    rows: list[Row] = []
    for target in top1_cells:
        published = Published.of(target)
        cell_groups = matched.get((target.row, target.column), [])
        if not cell_groups and published.value is None:
            continue  # neither published nor run
        rows.extend(_row(group, published) for group in cell_groups)
        if not cell_groups:
            rows.append(_row(None, published, note="not run"))
    notes = []
    if unmatched:
        notes.append(f"{unmatched} configuration(s) under {root} train no cell of this table (not shown).")
    not_runnable = [target for target in all_cells if not target.runnable]
    if not_runnable:
        notes.append(
            "Not trainable in mixbench: "
            + "; ".join(
                f"{', '.join(places)} ({reason})"
                for reason, places in _not_runnable_places(all_cells).items()
            )
            + "."
        )
    other = [target for target in all_cells if target.runnable and not paper.is_top1_cell(target)]
    if other:
        kinds = sorted({target.evaluation or paper.column_metric(name, target.column) for target in other})
        notes.append(f"Columns that are not a clean top-1 ({', '.join(kinds)}) are not compared here.")
    return rows, notes


def _not_runnable_places(all_cells: list[paper.Cell]) -> dict[str, list[str]]:
    """Cells mixbench cannot train, by reason, named compactly: a whole column, a whole row, or row · column."""
    by_reason: dict[str, list[paper.Cell]] = {}
    for target in all_cells:
        if not target.runnable:
            by_reason.setdefault(str(target.reason), []).append(target)
    places: dict[str, list[str]] = {}
    for reason, targets in by_reason.items():
        named = {id(target) for target in targets}
        found: list[str] = []
        for column in dict.fromkeys(target.column for target in targets if target.column is not None):
            in_column = [target for target in all_cells if target.column == column]
            if all(id(target) in named for target in in_column):
                found.append(f"column {column}")
                named -= {id(target) for target in in_column}
        for row in dict.fromkeys(target.row for target in targets):
            in_row = [target for target in all_cells if target.row == row and id(target) in named]
            if in_row and all(
                id(target) in named
                for target in all_cells
                if target.row == row and f"column {target.column}" not in found
            ):
                found.append(row)
                named -= {id(target) for target in in_row}
        found += [f"{target.row} · {target.column}" for target in targets if id(target) in named]
        places[reason] = found
    return places


def _published_notes(rows: list[Row]) -> list[str]:
    notes = []
    for table in dict.fromkeys(row.published.cell.table for row in rows if row.published):
        data = paper.load_reference(table)
        statistics_used = sorted(
            {row.published.statistic for row in rows if row.published and row.published.cell.table == table}
        )
        errors = any(
            row.published.metric == paper.ERROR
            for row in rows
            if row.published and row.published.cell.table == table
        )
        text = f"{table}: {str(data['source']).rstrip('.')}."
        if errors:
            text += " Published as top-1 error; shown as accuracy = 100 - error."
        text += " Published statistic: " + ", ".join(statistics_used)
        compared = sorted({STATISTIC_LABEL[STATISTIC_OF_PUBLISHED.get(s, HEADLINE)] for s in statistics_used})
        text += f"; Δ compares our {', '.join(compared)} (mean over seeds)."
        notes.append(text)
    return notes


def build_table(root: Path, table: str | None = None) -> Table:
    """The table of the runs under ``root``: by their own reference tables, or following ``table``."""
    root = Path(root)
    groups = collect_groups(root)
    if table is None:
        rows, notes = _rows_by_own_reference(groups)
        title = f"Runs under {root}"
    else:
        rows, notes = _rows_of_reference(table, groups, root)
        title = f"{table} ({paper.load_reference(table)['source']})"
    notes = _published_notes(rows) + notes
    if rows and not any(row.published for row in rows):
        notes.insert(
            0,
            (
                "No published numbers: the runs' config.yaml name no reference_table (set by experiment files), "
                "or no cell of it trains their configuration."
            ),
        )
    devices = sorted({run.device for row in rows if row.group for run in row.group.runs})
    if devices:
        notes.append(f"Hardware: {'; '.join(devices)}.")
    return Table(title=title, rows=rows, notes=notes, reference_table=table)


def collect_rows(root: Path, table: str | None = None) -> list[Row]:
    return build_table(root, table).rows


# ------------------------------------------------------------------------------------------------ output


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _window_text(table: Table) -> str:
    windows = sorted({window for row in table.rows for window in row.windows}) or [10]
    return "/".join(map(str, windows))


@dataclass
class Column:
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
    if with_cells:
        columns.append(Column("published", lambda row: _fmt(row.published_value)))
        columns.append(Column("Δ (ours − published)", _delta_text))
        for network in table.networks:
            columns.append(Column(f"{network} Δ", lambda row, n=network: _signed(row.delta(n))))
    columns.append(Column("not complete", Row.status, numeric=False))
    return columns


def _delta_text(row: Row) -> str:
    delta = row.delta()
    if delta is None or row.published is None or row.published.our_statistic == HEADLINE:
        return _signed(delta)
    return f"{_signed(delta)} ({STATISTIC_LABEL[row.published.our_statistic]})"


def to_markdown(table: Table | list[Row]) -> str:
    table = table if isinstance(table, Table) else Table(title="", rows=table)
    columns = display_columns(table)
    lines = ["| " + " | ".join(column.header for column in columns) + " |", "|" + "---|" * len(columns)]
    for row in table.rows:
        lines.append("| " + " | ".join(column.text(row).replace("|", "\\|") for column in columns) + " |")
    for note in table.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "--", "Δ": r"$\Delta$", "−": "$-$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(character, character) for character in text)
    for symbol, replacement in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, replacement)
    return escaped


def to_latex(table: Table) -> str:
    """A ``tabular`` (plain LaTeX, no packages needed) with the Markdown table's columns; notes as comments."""
    columns = display_columns(table)
    spec = "".join("r" if column.numeric else "l" for column in columns)
    lines = [
        f"% {latex_escape(table.title)}" if table.title else "% mixbench table",
        *(f"% {note}" for note in table.notes),
        f"\\begin{{tabular}}{{{spec}}}",
        "\\hline",
        " & ".join(latex_escape(column.header) for column in columns) + r" \\",
        "\\hline",
    ]
    for row in table.rows:
        lines.append(" & ".join(latex_escape(column.text(row)) for column in columns) + r" \\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


def to_csv(table: Table | list[Row]) -> str:
    """Plain numbers, one line per row; empty = unknown."""
    table = table if isinstance(table, Table) else Table(title="", rows=table)
    networks = table.networks
    header = [
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
        header += [f"{network}_mean", f"{network}_std", f"{network}_best_mean", f"{network}_last_mean"]
    header += [
        "table",
        "row",
        "column",
        "published",
        "published_raw",
        "published_metric",
        "published_statistic",
        "compared_statistic",
        "compared_mean",
        "delta",
    ]
    header += [f"{network}_delta" for network in networks]
    header += ["not_complete"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        line: list[Any] = [
            row.data,
            row.model,
            row.method,
            row.schedule,
            "/".join(map(str, row.windows)),
            _round(row.mean),
            _round(row.std),
            row.seeds,
            _round(mean_std(row.values("best"))[0]),
            _round(mean_std(row.values("last"))[0]),
        ]
        for network in networks:
            mean, std = mean_std(row.values(HEADLINE, network))
            line += [
                _round(mean),
                _round(std),
                _round(mean_std(row.values("best", network))[0]),
                _round(mean_std(row.values("last", network))[0]),
            ]
        published = row.published
        if published:
            line += [
                published.cell.table,
                published.cell.row,
                published.cell.column or "",
                _round(published.value),
                _round(published.raw),
                published.metric,
                published.statistic,
                published.our_statistic,
                _round(row.compared()[0]),
                _round(row.delta()),
            ]
        else:
            line += ["", "", "", "", "", "", "", "", "", ""]
        line += [_round(row.delta(network)) for network in networks]
        line.append(row.status())
        writer.writerow(line)
    return buffer.getvalue()
