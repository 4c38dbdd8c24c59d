"""The controls table: per published cell, the paper's number, ours as published and ours under the controls.

The learned methods' published numbers (AutoMix, AdAutoMix) are their EMA teacher with the learning rate
annealed to ``min_lr`` 0.05, while the baselines anneal to 0 and report the online network: a comparison of
the two mixes the method with the schedule and the evaluated network.  Two controls take them apart, each a
run of the cell's own configuration with one change (compared by the run identity of :mod:`mixbench.rundir`):

* ``ema``: an EMA copy of the model (the root key ``ema``, the learned methods' teacher schedule), evaluated
  beside the online network: the baselines' EMA numbers;
* ``min_lr 0``: a cell whose recipe anneals to a ``min_lr`` above 0, annealed to 0 as the baselines are: the
  learned methods' online (and EMA) numbers under the baselines' schedule.

A row is a published top-1 cell with runs under the root: the published number; ours as published (the runs
of the cell's configuration), online and EMA; the control (which one, and its runs), online and EMA; each
mean ± std over the complete seeds of the statistic the paper published.  A cell with several controls (an
EMA copy under two schedules) gets a row per control.  ``tools/table.py <runs> --controls``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.atomic import atomic_write_text
from mixbench.report import published as paper
from mixbench.report.render import csv_text, markdown_table
from mixbench.report.runs import RunGroup, read_runs
from mixbench.report.tables import STATISTIC_LABEL, Published, mean_std, provenance_notes
from mixbench.rundir import ONLINE, run_identity

DEFAULT_TABLE = "openmixup_cifar100_tiny_cub"  # the table whose learned rows publish EMA at min_lr 0.05
EMA = "ema"
MIN_LR_0 = "min_lr 0"
NO_VALUE = "—"


def ema_text(schedule: Mapping[str, Any]) -> str:
    """``ema 0.999 -> 0.999999 after 10%``: the control of an EMA copy under ``schedule``."""
    return (
        f"{EMA} {schedule['momentum']} -> {schedule['end_momentum']} after "
        f"{100 * float(schedule['constant_fraction']):g}%"
    )


def _identity(config: Mapping[str, Any], **changes: Any) -> tuple:
    """The configuration (identity without the seed) of ``config`` with root values replaced; a config written
    before the root key ``ema`` existed counts as ``ema: null``."""
    return run_identity({**config, "ema": config.get("ema"), **changes}).configuration


def _min_lr_zero(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``config`` with ``schedule.lr_schedule.min_lr`` 0, or ``None`` when it is 0 already."""
    lr_schedule = (config.get("schedule") or {}).get("lr_schedule") or {}
    if not lr_schedule.get("min_lr"):
        return None
    changed = copy.deepcopy(dict(config))
    changed["schedule"]["lr_schedule"]["min_lr"] = 0.0
    return changed


@dataclass
class ControlsRow:
    """A published cell, the runs of its configuration and (possibly) one control's runs."""

    published: Published
    as_published: list[RunGroup] = field(default_factory=list)
    control: str = ""  # "ema 0.999 -> 0.999999 after 10%", "min_lr 0", or "" (no control run)
    controls: list[RunGroup] = field(default_factory=list)

    @property
    def cell(self) -> paper.Cell:
        return self.published.cell

    def values(self, groups: list[RunGroup], network: str = ONLINE) -> list[float]:
        """The published statistic of every complete seed of ``groups`` that evaluated ``network``."""
        return [value for group in groups for value in group.values(self.published.our_statistic, network)]

    def compared(self, which: str, network: str = ONLINE) -> tuple[float | None, float | None]:
        """Mean ± std over seeds: ``which`` is ``"published"`` (ours as published) or ``"control"``."""
        return mean_std(self.values(self.as_published if which == "published" else self.controls, network))

    def seeds(self, groups: list[RunGroup]) -> int:
        return sum(len(group.complete_runs) for group in groups)

    def incomplete(self) -> list[str]:
        return [
            f"{group.method}/{run.progress_text()}"
            for group in (*self.as_published, *self.controls)
            for run in group.incomplete_runs
        ]


@dataclass
class ControlsTable:
    title: str
    table: str
    rows: list[ControlsRow]
    notes: list[str] = field(default_factory=list)


def build_controls_table(root: Path, table: str = DEFAULT_TABLE) -> ControlsTable:
    """The controls table of the runs under ``root`` for the published ``table`` (the module docstring)."""
    damaged: list[tuple[Path, str]] = []
    groups = [group for group in read_runs(Path(root), damaged) if group.config is not None]
    keyed = [
        (target, paper.cell_configuration(target))
        for target in paper.cells(table)
        if paper.is_trainable(target) and paper.is_top1_cell(target)
    ]
    min_lr_keys: dict[tuple, tuple] = {}  # the cell's configuration -> that of its min_lr 0 control
    for target, key in keyed:
        changed = _min_lr_zero(paper.cell_config(target))
        if changed is not None:
            min_lr_keys[key] = _identity(changed)
    identities = [_identity(group.config) for group in groups]
    without_ema = [_identity(group.config, ema=None) if group.config.get("ema") else None for group in groups]
    rows: list[ControlsRow] = []
    for target, key in keyed:
        as_published = [group for group, found in zip(groups, identities, strict=True) if found == key]
        controls: dict[str, list[RunGroup]] = {}
        for group, found, found_without_ema in zip(groups, identities, without_ema, strict=True):
            if found_without_ema == key:
                controls.setdefault(ema_text(group.config["ema"]), []).append(group)
            if key in min_lr_keys and found == min_lr_keys[key]:
                controls.setdefault(MIN_LR_0, []).append(group)
        if not as_published and not controls:
            continue
        published = Published.of(target)
        rows += [ControlsRow(published, as_published, name, found) for name, found in controls.items()]
        if not controls:
            rows.append(ControlsRow(published, as_published))
    return ControlsTable(
        title=f"Controls of {table} ({paper.load_reference(table)['source']})",
        table=table,
        rows=rows,
        notes=_notes(table, rows, root, damaged),
    )


def _notes(table: str, rows: list[ControlsRow], root: Path, damaged: list[tuple[Path, str]]) -> list[str]:
    statistics = sorted({STATISTIC_LABEL[row.published.our_statistic] for row in rows}) or ["median last 10"]
    notes = [
        f"Ours: mean ± std over the complete seeds of the {', '.join(statistics)} top-1, the statistic the "
        "paper published; published top-1 as in results/paper (error tables as 100 - error).",
        "As published: the runs of the published cell's configuration (the learned methods anneal to min_lr "
        "0.05 and publish their EMA teacher; the baselines anneal to 0 and publish the online network). "
        "Controls: 'ema ...' = the same configuration with an EMA copy of the model (ema=, the learned "
        "methods' teacher schedule) evaluated beside the online network, which it does not change; "
        "'min_lr 0' = the same configuration annealed to 0 as the baselines are.",
    ]
    if not rows:
        notes.insert(0, f"No run under {root} trains a top-1 cell of {table} or one of its controls.")
    runs = [run for row in rows for group in (*row.as_published, *row.controls) for run in group.runs]
    return notes + provenance_notes(runs, damaged)


# ------------------------------------------------------------------------------------------------ text


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return NO_VALUE
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


HEADER = (
    "cell",
    "published",
    "ours as published, online",
    "ours as published, EMA",
    "control",
    "control, online",
    "control, EMA",
    "seeds (as published / control)",
    "not complete",
)


def _cells(row: ControlsRow) -> list[str]:
    place = f"{row.cell.row} · {row.cell.column}" if row.cell.column is not None else row.cell.row
    return [
        place,
        _fmt(row.published.value),
        _fmt(*row.compared("published")),
        _fmt(*row.compared("published", EMA)),
        row.control or NO_VALUE,
        _fmt(*row.compared("control")) if row.control else NO_VALUE,
        _fmt(*row.compared("control", EMA)) if row.control else NO_VALUE,
        f"{row.seeds(row.as_published)} / {row.seeds(row.controls)}",
        "; ".join(row.incomplete()),
    ]


def controls_to_markdown(table: ControlsTable) -> str:
    """The table as Markdown: a title line, the pipe table and the notes as paragraphs."""
    align = ["l", "r", "r", "r", "l", "r", "r", "r", "l"]
    body = markdown_table(HEADER, [_cells(row) for row in table.rows], align)
    return f"{table.title}\n\n{body}" + "".join(f"\n{note}\n" for note in table.notes)


CSV_COLUMNS = (
    "table",
    "row",
    "column",
    "published",
    "statistic",
    "as_published_online_mean",
    "as_published_online_std",
    "as_published_ema_mean",
    "as_published_ema_std",
    "control",
    "control_online_mean",
    "control_online_std",
    "control_ema_mean",
    "control_ema_std",
    "as_published_seeds",
    "control_seeds",
    "not_complete",
)


def _rounded(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


def controls_to_csv(table: ControlsTable) -> str:
    """One line per row, numbers rounded to 4 decimals (empty = unknown)."""
    lines = []
    for row in table.rows:
        line: dict[str, Any] = {
            "table": row.cell.table,
            "row": row.cell.row,
            "column": row.cell.column,
            "published": _rounded(row.published.value),
            "statistic": row.published.our_statistic,
            "control": row.control,
            "as_published_seeds": row.seeds(row.as_published),
            "control_seeds": row.seeds(row.controls),
            "not_complete": "; ".join(row.incomplete()),
        }
        for which in ("as_published", "control"):
            for network in (ONLINE, EMA):
                mean, std = row.compared("published" if which == "as_published" else "control", network)
                line[f"{which}_{network}_mean"], line[f"{which}_{network}_std"] = (
                    _rounded(mean),
                    _rounded(std),
                )
        lines.append(line)
    return csv_text(CSV_COLUMNS, lines)


def write_controls_files(table: ControlsTable, out: Path, stem: str) -> list[Path]:
    """``<out>/<stem>.md`` and ``.csv``, each written atomically."""
    written = []
    for suffix, text in ((".md", controls_to_markdown(table)), (".csv", controls_to_csv(table))):
        written.append(Path(out) / f"{stem}{suffix}")
        atomic_write_text(text, written[-1])
    return written


__all__ = [
    "DEFAULT_TABLE",
    "ControlsRow",
    "ControlsTable",
    "build_controls_table",
    "controls_to_csv",
    "controls_to_markdown",
    "write_controls_files",
]
