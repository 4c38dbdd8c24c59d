"""Tables of runs: one row per configuration (and published cell), seeds aggregated; no rendering here.

A row reports, over the complete seeds of a configuration (:class:`mixbench.report.runs.RunGroup`), the mean ±
sample standard deviation of the median top-1 over the last ``metric_window`` epochs (the benchmark's
headline), of the best and of the last epoch, and how many seeds there are.  Runs that are not complete
(running or failed) are listed in the row, never averaged in.  Networks evaluated besides the online one (the
EMA network of AutoMix / AdAutoMix) get their own values.

Published numbers (:mod:`mixbench.report.published`).  A run's ``config.yaml`` names its ``reference_table``
(set by the experiment file); :func:`~mixbench.report.published.matching_cells` finds the cells of that table
the configuration trains (the same run identity).  Each cell gives the published top-1 accuracy (error tables
converted: ``100 - error``) and the statistic the paper published
(:func:`~mixbench.report.published.published_statistic`); the difference compares our runs in **that**
statistic:

    Δ = mean over complete seeds of ours[statistic] - published
    ours[median_last10] = median of the last 10 epochs (also for "unstated"), ours[best] = best epoch,
    ours[last] = last epoch, ours[best_last10] = best of the last 10 epochs (from metrics.jsonl)

With ``table=<name>`` (:func:`build_table`) the rows follow that published table instead: every measurable
cell (:func:`~mixbench.report.published.is_measurable`) in the paper's order, with the configurations under
the root that train it (whatever their ``reference_table``: AlignMixup T6 reuses T1's runs) or "not run";
cells mixbench cannot train are listed below the table.

Evaluation cells (FGSM / PGD error, OOD scores, CIFAR-100-C accuracy, WSOL localisation, params and ms per
batch: :func:`~mixbench.report.published.cell_evaluation`) are read from the runs' evaluation records
(``eval/<suite>.json``, or ``eval/<suite>@best.json`` with ``weights="best"``; :mod:`mixbench.report.records`)
and kept in the unit the paper published (an error stays an error)::

    Δ = mean over complete seeds of the record's number - published      (per network: online, EMA)

A configuration whose runs lack the record (or hold one that failed, or one that is not comparable, like
generated corruptions against the released CIFAR-100-C) is still a row, which names what is missing and the
``tools/evaluate.py`` command that makes it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixbench.report import published as paper
from mixbench.report.records import (
    LAST,
    WEIGHTS_TEXT,
    EvaluatedCell,
    RecordCache,
    commit_text,
    evaluate_cell,
    measure_label,
    weights_checked,
)
from mixbench.report.runs import HEADLINE, RunGroup, read_runs
from mixbench.rundir import ONLINE

STATISTIC_OF_PUBLISHED = {  # published_statistic -> the per-seed statistic (Run.scores) it is compared with
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


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than 2 values; both None for no value)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class Published:
    """A published cell and its number, as compared with our runs."""

    cell: paper.Cell
    value: (
        float | None
    )  # top-1 accuracy (%), error tables converted; evaluation cells as published; None = none
    raw: float | None  # as published
    metric: str  # top1_acc | top1_err | auroc | params_M | ...
    statistic: str  # best | last | median_last10 | best_last10 | unstated
    evaluation: paper.CellEvaluation | None = None  # where an evaluation cell's number is; None: clean top-1

    @classmethod
    def of(cls, target: paper.Cell) -> Published:
        evaluation = None if paper.is_top1_cell(target) else paper.cell_evaluation(target)
        raw = paper.raw_value(target.table, target.row, target.column)
        raw = None if raw is None else float(raw)
        return cls(
            cell=target,
            value=raw if evaluation else paper.published_value(target.table, target.row, target.column),
            raw=raw,
            metric=paper.column_metric(target.table, target.column),
            statistic=paper.published_statistic(target.table, target.row),
            evaluation=evaluation,
        )

    @property
    def our_statistic(self) -> str:
        """The per-seed statistic of ours that is compared with the published number."""
        return STATISTIC_OF_PUBLISHED.get(self.statistic, HEADLINE)

    def label(self, with_table: bool) -> str:
        """``row · column`` (``table: row · column`` when rows of several tables share a table)."""
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
    note: str = ""  # "not run", "trains no cell of <table>", ...
    evaluated: EvaluatedCell | None = None  # an evaluation cell's numbers over the group's seeds

    # --- ours
    def values(self, statistic: str = HEADLINE, network: str = ONLINE) -> list[float]:
        """A statistic of every complete seed of the row's configuration."""
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
        """The number of complete seeds."""
        return len(self.group.complete_runs) if self.group else 0

    @property
    def incomplete(self) -> list[str]:
        """``seed2: failed 3/20`` for every run that is not complete."""
        return [run.progress_text() for run in self.group.incomplete_runs] if self.group else []

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

    @property
    def evaluation(self) -> paper.CellEvaluation | None:
        """Where the published cell's number is in the runs' evaluation records; None for a top-1 cell."""
        return self.published.evaluation if self.published else None

    def measured(self, network: str = ONLINE) -> list[float]:
        """Per complete seed, the number compared with the published one: the evaluation record's for an
        evaluation cell, else the top-1 statistic the paper published (the headline if none)."""
        if self.evaluation is not None:
            return list(self.evaluated.values.get(network, [])) if self.evaluated else []
        statistic = self.published.our_statistic if self.published else HEADLINE
        return self.values(statistic, network)

    def compared(self, network: str = ONLINE) -> tuple[float | None, float | None]:
        """Mean ± std over seeds of :meth:`measured`."""
        return mean_std(self.measured(network))

    def measure_text(self) -> str:
        """What :meth:`measured` holds: ``top-1 acc. (%), best epoch``, ``FGSM top-1 error under attack
        (%)``, ``ms per batch (NVIDIA H200, batch 256)``."""
        if self.evaluation is None:
            statistic = self.published.our_statistic if self.published else HEADLINE
            return f"top-1 acc. (%), {STATISTIC_LABEL[statistic]}"
        text = measure_label(self.evaluation)
        if self.evaluation.key == "ms_per_batch" and self.evaluated and self.evaluated.conditions:
            text += f" ({'; '.join(self.evaluated.conditions)})"
        return text

    def delta(self, network: str = ONLINE) -> float | None:
        """ours - published, both in the published statistic; None when either is missing."""
        ours = self.compared(network)[0]
        published = self.published_value
        return None if ours is None or published is None else ours - published

    def status(self) -> str:
        """The note, what an evaluation cell lacks (seeds not evaluated, with the command) and the runs that
        are not complete, ``; ``-separated (empty when there is none)."""
        problems = self.evaluated.problems if self.evaluated else []
        return "; ".join(filter(None, [self.note, *problems, *self.incomplete]))


@dataclass
class Table:
    """Rows plus what a reader must know to read them (footnotes)."""

    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    reference_table: str | None = None  # set when the rows follow one published table
    weights: str = LAST  # the weights whose evaluation records fill evaluation cells (last | best)

    @property
    def has_evaluations(self) -> bool:
        """Whether a row is an evaluation cell (FGSM, OOD, cost, ...) rather than a clean top-1 one."""
        return any(row.evaluation is not None for row in self.rows)

    @property
    def networks(self) -> list[str]:
        """Evaluated networks besides the online one over all rows, in first-seen order."""
        return list(dict.fromkeys(label for row in self.rows for label in row.networks))


def _row(
    group: RunGroup | None,
    published: Published | None = None,
    note: str = "",
    evaluated: EvaluatedCell | None = None,
) -> Row:
    if group is not None:
        return Row(
            group.data,
            group.model,
            group.method,
            group.schedule,
            group=group,
            published=published,
            note=note,
            evaluated=evaluated,
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


def _group_row(group: RunGroup, published: Published, weights: str, cache: RecordCache) -> Row:
    """A configuration's row for a cell; an evaluation cell reads its numbers from the runs' records."""
    evaluated = None
    if published.evaluation is not None:
        evaluated = evaluate_cell(group, published.evaluation, weights, cache)
    return _row(group, published, evaluated=evaluated)


def _rows_by_own_reference(
    groups: list[RunGroup], weights: str, cache: RecordCache
) -> tuple[list[Row], list[str]]:
    """Each configuration with the measurable cells of the table its own config.yaml names."""
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
        cells = [target for target in paper.matching_cells(name, group.config) if paper.is_measurable(target)]
        if not cells:
            rows.append(_row(group, note=f"trains no cell of {name}"))
        rows.extend(_group_row(group, Published.of(target), weights, cache) for target in cells)
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


def _rows_of_reference(
    name: str, groups: list[RunGroup], root: Path, weights: str, cache: RecordCache
) -> tuple[list[Row], list[str]]:
    """The measurable cells of a published table in the paper's order (columns, then rows), each with its
    runs."""
    all_cells = paper.cells(name)
    columns = list(dict.fromkeys(target.column for target in all_cells))
    rows_order = list(dict.fromkeys(target.row for target in all_cells))
    measured_cells = [target for target in all_cells if paper.is_measurable(target)]
    measured_cells.sort(key=lambda target: (columns.index(target.column), rows_order.index(target.row)))
    matched: dict[tuple[str, str | None], list[RunGroup]] = {}
    unmatched = 0
    for group in groups:
        found = paper.matching_cells(name, group.config) if group.config is not None else []
        for target in found:
            matched.setdefault((target.row, target.column), []).append(group)
        unmatched += not found
    rows: list[Row] = []
    for target in measured_cells:
        published = Published.of(target)
        cell_groups = matched.get((target.row, target.column), [])
        if not cell_groups and published.value is None:
            continue  # neither published nor run
        rows.extend(_group_row(group, published, weights, cache) for group in cell_groups)
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
    other = [target for target in all_cells if target.runnable and not paper.is_measurable(target)]
    if other:
        kinds = sorted({target.evaluation or paper.column_metric(name, target.column) for target in other})
        notes.append(f"Cells no mixbench evaluation measures ({', '.join(kinds)}) are not compared here.")
    return rows, notes


def _not_runnable_places(all_cells: list[paper.Cell]) -> dict[str, list[str]]:
    """Cells mixbench cannot train, by reason, named compactly: a whole column, a whole row, or
    row · column."""
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
    """Per published table in the rows: its source, error conversion, statistic and what Δ compares."""
    notes = []
    for table in dict.fromkeys(row.published.cell.table for row in rows if row.published):
        data = paper.load_reference(table)
        of_table = [row for row in rows if row.published and row.published.cell.table == table]
        top1 = [row for row in of_table if row.evaluation is None]
        text = f"{table}: {str(data['source']).rstrip('.')}."
        if top1:
            statistics_used = sorted({row.published.statistic for row in top1})  # type: ignore[union-attr]
            if any(row.published.metric == paper.ERROR for row in top1):  # type: ignore[union-attr]
                text += " Published as top-1 error; shown as accuracy = 100 - error."
            text += " Published statistic: " + ", ".join(statistics_used)
            compared = sorted(
                {STATISTIC_LABEL[STATISTIC_OF_PUBLISHED.get(s, HEADLINE)] for s in statistics_used}
            )
            text += f"; Δ compares our {', '.join(compared)} (mean over seeds)."
        if len(top1) < len(of_table):
            text += (
                " Evaluation cells are shown in the unit the paper published (an error under attack stays a "
                "top-1 error; AUROC, AUPR, detection, corruption and localisation accuracies in %; params in "
                "millions; ms per batch): ours is the mean ± std over complete seeds of the runs' evaluation "
                "records, Δ = ours - published in that unit."
            )
        notes.append(text)
    return notes


def _column_notes(rows: list[Row]) -> list[str]:
    """The mapping's ``note`` of every evaluation column shown (the device of the published timing, ...)."""
    notes = []
    for table, column in dict.fromkeys(
        (row.published.cell.table, row.published.cell.column)
        for row in rows
        if row.published and row.evaluation is not None
    ):
        spec = paper.load_reference(table)["mixbench"]["columns"].get(column) or {}
        if spec.get("note"):
            notes.append(f"{table} · {column}: {spec['note']}.")
    return notes


def _evaluation_notes(rows: list[Row], weights: str) -> list[str]:
    """Which weights the evaluation records are of, and where and on what code the evaluations ran."""
    evaluated = [row.evaluated for row in rows if row.evaluated is not None]
    if not any(row.evaluation is not None for row in rows):
        return []
    notes = [f"Evaluation cells: records of {WEIGHTS_TEXT[weights]}."]
    records = [record for cell in evaluated for record in cell.records]
    suites = sorted({cell.evaluation.suite for cell in evaluated})
    if records:
        devices = sorted({str(record.get("device", "unknown")) for record in records})
        commits = sorted({commit_text(record) for record in records})
        notes.append(
            f"Evaluations ({', '.join(suites)}) ran on: {'; '.join(devices)}; commit: {'; '.join(commits)}."
        )
    if paper.COST in suites:
        notes.append(
            "The cost suite times the training step, which no weights change: a run's cost record of the "
            "other weights is read where the asked one is missing."
        )
    gaps = sum(1 for row in rows if row.evaluated and row.evaluated.problems)
    if gaps:
        notes.append(
            f"{gaps} row(s) have seeds without a usable, comparable evaluation record (named in the row, "
            "with the tools/evaluate.py command where one is missing); those seeds are not averaged in."
        )
    return notes


def provenance_notes(runs: list, damaged: list[tuple[Path, str]]) -> list[str]:
    """The notes that end a table: the runs' hardware and commits, and the run directories left out."""
    notes = []
    devices = sorted({run.device_text() for run in runs})
    if devices:
        notes.append(f"Hardware: {'; '.join(devices)}.")
    commits = sorted({run.commit_text() for run in runs})
    if commits:
        notes.append(f"Commit: {'; '.join(commits)}.")
    if damaged:
        listed = "; ".join(f"{path}: {reason}" for path, reason in damaged)
        notes.append(f"Damaged run directories, left out of the table: {listed}")
    return notes


def build_table(root: Path, table: str | None = None, weights: str = LAST) -> Table:
    """The table of the runs under ``root``: by their own reference tables, or following the published
    ``table`` (a name of results/paper; see :func:`mixbench.report.published.resolve_table_name`).

    ``weights`` (``last`` | ``best``) picks the evaluation records that fill evaluation cells:
    ``eval/<suite>.json`` (the last epoch's weights) or ``eval/<suite>@best.json`` (best.pt's).
    """
    root = Path(root)
    weights = weights_checked(weights)
    damaged: list[tuple[Path, str]] = []
    groups = read_runs(root, damaged)
    cache = RecordCache()
    if table is None:
        rows, notes = _rows_by_own_reference(groups, weights, cache)
        title = f"Runs under {root}"
    else:
        rows, notes = _rows_of_reference(table, groups, root, weights, cache)
        title = f"{table} ({paper.load_reference(table)['source']})"
    notes = _published_notes(rows) + _column_notes(rows) + notes + _evaluation_notes(rows, weights)
    if rows and not any(row.published for row in rows):
        notes.insert(
            0,
            (
                "No published numbers: the runs' config.yaml name no reference_table (set by experiment "
                "files), or no cell of it trains their configuration."
            ),
        )
    notes += provenance_notes([run for row in rows if row.group for run in row.group.runs], damaged)
    return Table(title=title, rows=rows, notes=notes, reference_table=table, weights=weights)


def collect_rows(root: Path, table: str | None = None, weights: str = LAST) -> list[Row]:
    """The rows of :func:`build_table`."""
    return build_table(root, table, weights).rows
