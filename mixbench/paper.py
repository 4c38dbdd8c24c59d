"""The published numbers of the papers, as data: ``results/paper/<table>.yaml``.

Each file holds one table of ``shared/reference/paper_tables.yaml`` transcribed unchanged (``source``,
``metric``, ``protocol``, ``columns``, ``rows``; ``null`` = not reported) plus a ``mixbench`` section that maps
every column to the (data, model, schedule) mixbench trains for it and every row to a method and its options
(schema in ``results/paper/README.md``).

    load_reference("alignmixup_cvpr22_t1")                                  # the whole file, as a dict
    published_value("alignmixup_cvpr22_t1", "mixup", "cifar100/r18")        # 79.79 (published as error 20.21)
    cell("openmixup_cifar100_tiny_cub", "cutmix", "cifar100/rx50")          # what mixbench runs for that cell
    cell_overrides(...)                                                     # ... as tools/train.py overrides

Convention: :func:`published_value` always returns a top-1 **accuracy** in percent; a table published as
top-1 error (``metric: top1_err``) is converted with ``accuracy = 100 - error``, exactly in decimal arithmetic
(``100 - 23.24`` gives ``76.76``, not ``76.76000000000001``).  Columns that are neither (parameters, ms per
batch, AUROC, localisation accuracy) raise ``ValueError``: read them with :func:`load_reference`.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
ACCURACY = "top1_acc"
ERROR = "top1_err"
SCALAR_COLUMN = None  # the column of a row given as a single number (AlignMixup Table 6's vanilla, ...)


def reference_tables() -> list[str]:
    """The names of the tables in ``results/paper/``."""
    return sorted(path.stem for path in PAPER_DIR.glob("*.yaml"))


@functools.cache
def _load(name: str) -> dict[str, Any]:
    path = PAPER_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown reference table '{name}'; valid: {', '.join(reference_tables())}")
    with path.open() as handle:
        table = yaml.safe_load(handle)
    if table.get("name") != name:
        raise ValueError(f"{path} has name {table.get('name')!r}, expected {name!r}")
    return table


def load_reference(name: str) -> dict[str, Any]:
    """The table ``results/paper/<name>.yaml`` as a dict (a fresh copy: change it freely)."""
    return copy.deepcopy(_load(name))


def _table(table: str | dict[str, Any]) -> dict[str, Any]:
    return _load(table) if isinstance(table, str) else table


def column_metric(table: str | dict[str, Any], column: str | None) -> str:
    """What a column holds: the table's ``metric`` (top1_acc / top1_err) or the column's ``column_metrics`` entry."""
    data = _table(table)
    if "metric" in data:
        return data["metric"]
    metrics = data.get("column_metrics", {})
    if column not in metrics:
        raise KeyError(f"table {data['name']} has no metric for column {column!r}")
    return metrics[column]


def raw_value(table: str | dict[str, Any], row: str, column: str | None = SCALAR_COLUMN) -> float | None:
    """The number as published (error stays error); ``None`` where the paper reports none."""
    data = _table(table)
    rows = data["rows"]
    if row not in rows:
        raise KeyError(f"table {data['name']} has no row {row!r}; rows: {', '.join(map(str, rows))}")
    entry = rows[row]
    if isinstance(entry, list):
        columns = data.get("columns", [])
        if column not in columns:
            raise KeyError(f"table {data['name']} has no column {column!r}; columns: {', '.join(columns)}")
        value = entry[columns.index(column)]
    elif isinstance(entry, dict):
        if column not in entry:
            raise KeyError(f"row {row!r} of table {data['name']} has no column {column!r}; it has: {', '.join(entry)}")
        value = entry[column]
    else:
        if column is not SCALAR_COLUMN:
            raise KeyError(f"row {row!r} of table {data['name']} is a single number: ask for column None")
        value = entry
    return None if value is None or value == "-" else value


def published_value(table: str | dict[str, Any], method: str, column: str | None = SCALAR_COLUMN) -> float | None:
    """The published top-1 accuracy (%) of row ``method`` in ``column``; ``None`` where not reported.

    Error columns are converted: ``accuracy = 100 - error``.  ``column`` is None for rows given as one number.
    """
    data = _table(table)
    metric = column_metric(data, column)
    value = raw_value(data, method, column)
    if metric not in (ACCURACY, ERROR):
        raise ValueError(
            f"column {column!r} of table {data['name']} is {metric}, not a top-1 accuracy or error; "
            "read it with raw_value() or load_reference()"
        )
    if value is None:
        return None
    if metric == ERROR:
        return float(Decimal(100) - Decimal(str(value)))
    return float(value)


def experiments(table: str | dict[str, Any]) -> list[str]:
    """The ``configs/experiment`` files whose runs (``runs/<experiment>``) fill this table."""
    return list(_table(table)["mixbench"].get("experiments", []))


@dataclass
class Cell:
    """What mixbench trains for one (row, column) of a published table."""

    table: str
    row: str
    column: str | None
    data: str | None
    model: str | None
    schedule: str | None
    method: str | None
    options: dict[str, Any] = field(default_factory=dict)            # method.<key> overrides
    schedule_options: dict[str, Any] = field(default_factory=dict)   # schedule.<key> overrides
    model_options: dict[str, Any] = field(default_factory=dict)      # model.<key> overrides
    evaluation: str | None = None       # an evaluation of the trained model (fgsm, pgd, ood/<set>, ...), else top-1
    statistic: str | None = None        # the published statistic when a row says (best, last, median_last10)
    reason: str | None = None           # why the cell is not runnable

    @property
    def runnable(self) -> bool:
        """Whether mixbench can train this cell (its evaluation may still be missing: see ``evaluation``)."""
        return self.reason is None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def cell(table: str | dict[str, Any], row: str, column: str | None = SCALAR_COLUMN) -> Cell:
    """The configuration mixbench runs for a cell; ``Cell.runnable`` is False (with ``reason``) where it cannot."""
    data = _table(table)
    mapping = data["mixbench"]
    raw_value(data, row, column)  # the cell exists in the published table
    column_spec = mapping["single_value"] if column is SCALAR_COLUMN else mapping["columns"][column]
    row_spec = mapping["rows"][row]
    extra = (row_spec.get("cells") or {}).get(column, {})
    method = extra.get("method", row_spec.get("method"))
    if "method" in extra:  # the cell names its own method: the row's options do not apply
        options = copy.deepcopy(extra.get("options", {}))
    else:
        options = _merge(row_spec.get("options", {}), extra.get("options", {}))
    reason = column_spec.get("reason") or row_spec.get("reason") or extra.get("reason")
    if reason is None and extra.get("runnable", True) is False:
        reason = "marked not runnable"
    names = (column_spec.get("data"), column_spec.get("model"), column_spec.get("schedule"), method)
    if reason is None and None in names:
        reason = "no mixbench configuration given"
    return Cell(
        table=data["name"], row=row, column=column,
        data=column_spec.get("data"), model=column_spec.get("model"), schedule=column_spec.get("schedule"),
        method=method, options=options,
        schedule_options=_merge(row_spec.get("schedule_options", {}), extra.get("schedule_options", {})),
        model_options=_merge(column_spec.get("model_options", {}), extra.get("model_options", {})),
        evaluation=column_spec.get("evaluation"), statistic=row_spec.get("statistic"), reason=reason,
    )


def cells(table: str | dict[str, Any]) -> list[Cell]:
    """Every (row, column) of a table, in the published order."""
    data = _table(table)
    found: list[Cell] = []
    for row, entry in data["rows"].items():
        if isinstance(entry, list):
            found.extend(cell(data, row, column) for column in data["columns"])
        elif isinstance(entry, dict):
            found.extend(cell(data, row, column) for column in entry)
        else:
            found.append(cell(data, row, SCALAR_COLUMN))
    return found


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values; an empty dict disappears)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(item) for item in value) + "]"
    return str(value)


def cell_overrides(target: Cell) -> list[str]:
    """``tools/train.py`` overrides that train a runnable cell (``+key=`` for keys the stock config lacks)."""
    if not target.runnable:
        raise ValueError(f"{target.table} [{target.row}, {target.column}] is not runnable: {target.reason}")
    from omegaconf import OmegaConf

    from mixbench.config import CONFIG_DIR

    overrides = [f"data={target.data}", f"model={target.model}", f"method={target.method}",
                 f"schedule={target.schedule}"]
    for group, name, options in (("method", target.method, target.options),
                                 ("schedule", target.schedule, target.schedule_options),
                                 ("model", target.model, target.model_options)):
        stock = flatten(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")))
        for key, value in flatten(options).items():
            plus = "" if key in stock else "+"
            overrides.append(f"{plus}{group}.{key}={_override_value(value)}")
    return overrides


__all__ = [
    "ACCURACY", "Cell", "ERROR", "PAPER_DIR", "cell", "cell_overrides", "cells", "column_metric", "experiments",
    "flatten", "load_reference", "published_value", "raw_value", "reference_tables",
]
