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
            raise KeyError(
                f"row {row!r} of table {data['name']} has no column {column!r}; it has: {', '.join(entry)}"
            )
        value = entry[column]
    else:
        if column is not SCALAR_COLUMN:
            raise KeyError(f"row {row!r} of table {data['name']} is a single number: ask for column None")
        value = entry
    return None if value is None or value == "-" else value


def published_value(
    table: str | dict[str, Any], method: str, column: str | None = SCALAR_COLUMN
) -> float | None:
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
    options: dict[str, Any] = field(default_factory=dict)  # method.<key> overrides
    schedule_options: dict[str, Any] = field(default_factory=dict)  # schedule.<key> overrides
    model_options: dict[str, Any] = field(default_factory=dict)  # model.<key> overrides
    evaluation: str | None = (
        None  # an evaluation of the trained model (fgsm, pgd, ood/<set>, ...), else top-1
    )
    statistic: str | None = None  # the published statistic when a row says (best, last, median_last10)
    reason: str | None = None  # why the cell is not runnable

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
        table=data["name"],
        row=row,
        column=column,
        data=column_spec.get("data"),
        model=column_spec.get("model"),
        schedule=column_spec.get("schedule"),
        method=method,
        options=options,
        schedule_options=_merge(row_spec.get("schedule_options", {}), extra.get("schedule_options", {})),
        model_options=_merge(column_spec.get("model_options", {}), extra.get("model_options", {})),
        evaluation=column_spec.get("evaluation"),
        statistic=row_spec.get("statistic"),
        reason=reason,
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

    overrides = [
        f"data={target.data}",
        f"model={target.model}",
        f"method={target.method}",
        f"schedule={target.schedule}",
    ]
    for group, name, options in (
        ("method", target.method, target.options),
        ("schedule", target.schedule, target.schedule_options),
        ("model", target.model, target.model_options),
    ):
        stock = flatten(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")))
        for key, value in flatten(options).items():
            plus = "" if key in stock else "+"
            overrides.append(f"{plus}{group}.{key}={_override_value(value)}")
    return overrides


# ------------------------------------------------------------------------ runs <-> cells, and what is compared

CONFIGURED_GROUPS = (
    "method",
    "schedule",
    "model",
)  # groups whose options (not only the name) identify a cell
UNSTATED = "unstated"


def published_statistic(table: str | dict[str, Any], row: str) -> str:
    """Which statistic of a run the paper published for ``row``.

    One of ``best`` (best test epoch), ``last``, ``median_last10``, ``best_last10`` or ``unstated``: the row's
    own ``statistic`` where it has one (``published_statistic: per_row``), else the table's.
    """
    mapping = _table(table)["mixbench"]
    return mapping["rows"][row].get("statistic") or mapping.get("published_statistic", UNSTATED)


def is_top1_cell(target: Cell) -> bool:
    """Whether the cell is a clean top-1 accuracy or error, i.e. comparable with a run's ``top1``.

    Cells that need another evaluation of the trained model (attacks, OOD sets) or hold another quantity
    (parameters, time, AUROC) are not.
    """
    return target.evaluation is None and column_metric(target.table, target.column) in (ACCURACY, ERROR)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(item) for item in value) if isinstance(value, (list, tuple)) else value


@functools.cache
def _stock_config(group: str, name: str) -> dict[str, Any] | None:
    """``configs/<group>/<name>.yaml`` as a dict, interpolations unresolved (``None`` if there is no such file)."""
    from omegaconf import OmegaConf

    from mixbench.config import CONFIG_DIR

    path = CONFIG_DIR / group / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def _stock_values(group: str, name: str, data_config: dict[str, Any] | None) -> dict[str, Any]:
    """The shipped ``configs/<group>/<name>.yaml``, flattened, interpolations resolved against ``data_config``.

    (``alignmixup_ae``'s ``image_size: ${data.image_size}`` is stored resolved in a run's config.yaml.)
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    stock = _stock_config(group, name)
    if stock is None:
        return {}
    if "${" not in repr(stock):  # nothing to resolve (all shipped configs but one)
        return flatten(stock)
    try:
        context = OmegaConf.create({"data": data_config or {}, group: stock})
        values = OmegaConf.to_container(context[group], resolve=True)
    except OmegaConfBaseException:
        values = stock
    return flatten(values)


def _differences(
    group: str, name: str | None, values: dict[str, Any], data_config: dict[str, Any] | None
) -> tuple:
    """``(key, value)`` pairs of ``values`` that differ from the shipped config ``name`` (``name`` ignored)."""
    from mixbench.rundir import RUNTIME_KEYS

    if name is None:
        return ()
    stock = {key: _hashable(value) for key, value in _stock_values(group, name, data_config).items()}
    given = {
        key: _hashable(value)
        for key, value in flatten(values).items()
        if key != "name" and f"{group}.{key}" not in RUNTIME_KEYS
    }
    return tuple(
        sorted((key, value) for key, value in given.items() if key not in stock or stock[key] != value)
    )


def cell_configuration(target: Cell) -> tuple:
    """A hashable key of what a cell trains: the four config names and the options that differ from them.

    Equal to :func:`run_configuration` of a run trained with ``cell_overrides(target)``.
    """
    data_config = _stock_config("data", target.data) if target.data else None
    options = {"method": target.options, "schedule": target.schedule_options, "model": target.model_options}
    names = {"method": target.method, "schedule": target.schedule, "model": target.model}
    return (
        target.data,
        target.model,
        target.schedule,
        target.method,
        *(_differences(group, names[group], options[group], data_config) for group in CONFIGURED_GROUPS),
    )


def run_configuration(config: dict[str, Any]) -> tuple:
    """The key of :func:`cell_configuration` for a run's resolved ``config.yaml`` (a dict).

    Under a schedule that ``requires_pretrained`` (fine-tuning; validation refuses it without weights) the
    weights file only says where the ImageNet weights are, so it is not part of the key.
    """
    if config.get("schedule", {}).get("requires_pretrained") and "pretrained_path" in config.get("model", {}):
        config = {**config, "model": {k: v for k, v in config["model"].items() if k != "pretrained_path"}}
    names = {group: config[group]["name"] for group in ("data", *CONFIGURED_GROUPS)}
    return (
        names["data"],
        names["model"],
        names["schedule"],
        names["method"],
        *(_differences(group, names[group], config[group], config["data"]) for group in CONFIGURED_GROUPS),
    )


@functools.cache
def _runnable_cell_keys(name: str) -> tuple[tuple[Cell, tuple], ...]:
    return tuple((target, cell_configuration(target)) for target in cells(name) if target.runnable)


def matching_cells(table: str | dict[str, Any], config: dict[str, Any]) -> list[Cell]:
    """The runnable cells of ``table`` that a run with this resolved ``config.yaml`` (a dict) trains.

    Often one; several where a table reports several statistics or evaluations of the same runs
    (``alignmixup_official_logs``, AlignMixup T3).  Returned cells are copies: change them freely.
    """
    keyed = (
        _runnable_cell_keys(table)
        if isinstance(table, str)
        else tuple((target, cell_configuration(target)) for target in cells(table) if target.runnable)
    )
    key = run_configuration(config)
    return [copy.deepcopy(target) for target, target_key in keyed if target_key == key]


__all__ = [
    "ACCURACY",
    "Cell",
    "ERROR",
    "PAPER_DIR",
    "UNSTATED",
    "cell",
    "cell_configuration",
    "cell_overrides",
    "cells",
    "column_metric",
    "experiments",
    "flatten",
    "is_top1_cell",
    "load_reference",
    "matching_cells",
    "published_statistic",
    "published_value",
    "raw_value",
    "reference_tables",
    "run_configuration",
]
