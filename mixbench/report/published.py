"""The published numbers of the papers, as data (``results/paper/<table>.yaml``), and the cells runs train.

Each file holds one table of ``shared/reference/paper_tables.yaml`` transcribed unchanged (``source``,
``metric``, ``protocol``, ``columns``, ``rows``; ``null`` = not reported) plus a ``mixbench`` section that
maps every column to the (data, model, schedule) mixbench trains for it and every row to a method and its
options (schema in ``results/paper/README.md``).

    load_reference("alignmixup_cvpr22_t1")                                  # the whole file, as a dict
    published_value("alignmixup_cvpr22_t1", "mixup", "cifar100/r18")        # 79.79 (published as error 20.21)
    cell("openmixup_cifar100_tiny_cub", "cutmix", "cifar100/rx50")          # what mixbench runs for that cell
    cell_overrides(...)                                                     # ... as tools/train.py overrides
    matching_cells("alignmixup_cvpr22_t1", run_config)                      # the cells a run's config trains

Convention: :func:`published_value` always returns a top-1 **accuracy** in percent; a table published as
top-1 error (``metric: top1_err``) is converted with ``accuracy = 100 - error``, exactly in decimal arithmetic
(``100 - 23.24`` gives ``76.76``, not ``76.76000000000001``).  Columns that are neither (parameters, ms per
batch, AUROC, localisation accuracy) raise ``ValueError``: read them with :func:`raw_value`.

Evaluation cells.  A column's ``evaluation`` names the record of ``tools/evaluate.py`` that measures it
(``eval/<suite>.json`` of the run: ``fgsm``, ``pgd``, ``ood/<set>``, ``corruption/<set>``, ``wsol``; params
and ms-per-batch columns are the ``cost`` suite's): :func:`cell_evaluation` says which entry of the record
holds the cell's number, :func:`is_measurable` whether mixbench measures a cell at all, and
:func:`counts_text` how many cells of the tables mixbench trains and measures.

Runs and cells meet through the one run identity of :mod:`mixbench.rundir`: a cell trains the plain config
that ``configs/`` compose for its four names and options (:func:`cell_config`), and a run trains that cell
when ``run_identity(config).configuration`` of its ``config.yaml`` equals the cell's
(:func:`cell_configuration`).  Where and how a run ran (device, data.root, the weights file of a fine-tuning
run, ...) is not part of it.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR, GROUPS
from mixbench.rundir import flatten, run_identity

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"
ACCURACY = "top1_acc"
ERROR = "top1_err"
UNSTATED = "unstated"
SCALAR_COLUMN = None  # the column of a row given as a single number (AlignMixup Table 6's vanilla, ...)
OPTION_GROUPS = ("method", "schedule", "model")  # groups whose options (not only the name) a cell sets


# ------------------------------------------------------------------------------------------ the tables


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


def resolve_table_name(name: str) -> str:
    """A results/paper table name, or an experiment name standing for its ``reference_table``.

    Raises ``ValueError`` (one line listing the valid names) when ``name`` is neither.
    """
    tables = reference_tables()
    if name in tables:
        return name
    experiment = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if experiment.is_file():
        reference = OmegaConf.load(experiment).get("reference_table")
        if reference in tables:
            return str(reference)
        raise ValueError(f"experiment {name} names no published table; pick one of: {', '.join(tables)}")
    raise ValueError(f"unknown table '{name}'; valid: {', '.join(tables)} (or an experiment name)")


def experiments(table: str | dict[str, Any]) -> list[str]:
    """The ``configs/experiment`` files whose runs (``runs/<experiment>``) fill this table."""
    return list(_table(table)["mixbench"].get("experiments", []))


# ------------------------------------------------------------------------------------------ the numbers


def column_metric(table: str | dict[str, Any], column: str | None) -> str:
    """What a column holds: the table's ``metric`` (top1_acc / top1_err) or the column's ``column_metrics``
    entry."""
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


def published_statistic(table: str | dict[str, Any], row: str) -> str:
    """Which statistic of a run the paper published for ``row``.

    One of ``best`` (best test epoch), ``last``, ``median_last10``, ``best_last10`` or ``unstated``: the row's
    own ``statistic`` where it has one (``published_statistic: per_row``), else the table's.
    """
    mapping = _table(table)["mixbench"]
    return mapping["rows"][row].get("statistic") or mapping.get("published_statistic", UNSTATED)


# ------------------------------------------------------------------------------------------ the cells


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
    evaluation: str | None = None  # evaluation of the trained model (fgsm, pgd, ood/<set>, ...); None: top-1
    statistic: str | None = None  # the published statistic when a row says (best, last, median_last10)
    reason: str | None = None  # why the cell is not runnable

    @property
    def runnable(self) -> bool:
        """Whether mixbench can train this cell (its evaluation may still be missing: see ``evaluation``)."""
        return self.reason is None

    @property
    def names(self) -> dict[str, str | None]:
        """The config name of each group (data, model, method, schedule)."""
        return {"data": self.data, "model": self.model, "method": self.method, "schedule": self.schedule}

    @property
    def group_options(self) -> dict[str, dict[str, Any]]:
        """The options the cell sets, per group of :data:`OPTION_GROUPS`."""
        return {"method": self.options, "schedule": self.schedule_options, "model": self.model_options}


def merge_options(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` written over ``base``, nested mappings merged key by key (both left unchanged)."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def cell(table: str | dict[str, Any], row: str, column: str | None = SCALAR_COLUMN) -> Cell:
    """The configuration mixbench runs for a cell; ``Cell.runnable`` is False (with ``reason``) where it
    cannot."""
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
        options = merge_options(row_spec.get("options", {}), extra.get("options", {}))
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
        schedule_options=merge_options(
            merge_options(column_spec.get("schedule_options", {}), row_spec.get("schedule_options", {})),
            extra.get("schedule_options", {}),
        ),
        model_options=merge_options(column_spec.get("model_options", {}), extra.get("model_options", {})),
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


def is_top1_cell(target: Cell) -> bool:
    """Whether the cell is a clean top-1 accuracy or error, i.e. comparable with a run's ``top1``.

    Cells that need another evaluation of the trained model (attacks, OOD sets) or hold another quantity
    (parameters, time, AUROC) are not: see :func:`cell_evaluation`.
    """
    return target.evaluation is None and column_metric(target.table, target.column) in (ACCURACY, ERROR)


# ------------------------------------------------------------------------------ evaluation cells, counts

COST = "cost"  # the suite that times the training step (eval/cost.json): parameters, ms per batch
# column metrics the cost suite measures (their columns need not say ``evaluation: cost``)
COST_METRICS = ("params_M", "ms_per_batch")
CORRUPTION_SETS = ("cifar10_c", "cifar100_c", "tiny_imagenet_c")  # the released corruption sets
EVALUATION_KEYS = {  # (suite, column metric) -> the key of eval/<suite>.json that holds the cell's number
    ("fgsm", ERROR): "adversarial_error",
    ("pgd", ERROR): "adversarial_error",
    ("ood", "det_acc"): "detection_accuracy_at_half",  # AlignMixup T4 thresholds the max-softmax score at 0.5
    ("ood", "auroc"): "auroc",
    ("ood", "aupr_in"): "aupr_in",
    ("ood", "aupr_out"): "aupr_out",
    ("corruption", ACCURACY): "mean",
    ("wsol", "top1_loc"): "top1_loc",
    ("wsol", "maxboxacc_v2"): "max_box_acc_v2",
    (COST, "params_M"): "trained_params",  # the network's and the method's (AlignMixup-AE's autoencoder)
    (COST, "ms_per_batch"): "ms_per_batch",
}


@dataclass(frozen=True)
class CellEvaluation:
    """Where a cell's number is in a run's evaluation records: ``eval/<suite>.json``, entry ``key``."""

    suite: str  # fgsm, pgd, ood, corruption, wsol, cost
    part: str | None  # the OOD set (ood/<set>) or the released corruption set (corruption/<set>)
    key: str  # the record's key (adversarial_error, auroc, mean, top1_loc, ms_per_batch, ...)
    metric: str  # the column's metric (top1_err, auroc, params_M, ...)

    @property
    def name(self) -> str:
        """``fgsm``, ``ood/lsun_crop``, ``corruption/cifar100_c``: the mapping's ``evaluation`` value."""
        return f"{self.suite}/{self.part}" if self.part else self.suite


def cell_evaluation(target: Cell) -> CellEvaluation | None:
    """The evaluation record entry that measures a cell; None for a clean top-1 cell and for a cell mixbench
    has no evaluation for.

    A column's ``evaluation`` is ``<suite>`` or ``<suite>/<set>`` (``ood/<set>``, ``corruption/<set>`` with
    a released set of :data:`CORRUPTION_SETS`); columns of :data:`COST_METRICS` are the cost suite's.  The
    number is the record's :data:`EVALUATION_KEYS` entry for the suite and the column's metric.
    """
    metric = column_metric(target.table, target.column)
    spec = target.evaluation or (COST if metric in COST_METRICS else None)
    if spec is None:
        return None
    suite, _, part = str(spec).partition("/")
    key = EVALUATION_KEYS.get((suite, metric))
    if key is None:
        return None
    if suite == "ood" and not part:
        return None
    if suite == "corruption" and part not in CORRUPTION_SETS:
        return None
    if suite not in ("ood", "corruption") and part:
        return None
    return CellEvaluation(suite=suite, part=part or None, key=key, metric=metric)


def is_trainable(target: Cell) -> bool:
    """Whether mixbench trains the cell: runnable, and ``configs/`` has a file for each of its names."""
    return target.runnable and _has_config_files(target)


def is_measurable(target: Cell) -> bool:
    """Whether mixbench measures the cell: trainable, and a clean top-1 cell (the run's summary) or a cell
    an evaluation suite measures (:func:`cell_evaluation`: FGSM, PGD, OOD sets, CIFAR-100-C, WSOL, cost)."""
    return is_trainable(target) and (is_top1_cell(target) or cell_evaluation(target) is not None)


@dataclass(frozen=True)
class CellCounts:
    """How many cells of a table (or of all) mixbench trains and measures."""

    trainable: int
    measurable: int
    total: int


def cell_counts(tables: list[str] | None = None) -> dict[str, CellCounts]:
    """Per table of ``results/paper`` (all when None) and ``"all"``: trainable, measurable and total cells
    (:func:`is_trainable`, :func:`is_measurable`, every (row, column) of :func:`cells`)."""
    counts: dict[str, CellCounts] = {}
    for name in tables or reference_tables():
        found = cells(name)
        counts[name] = CellCounts(
            trainable=sum(map(is_trainable, found)),
            measurable=sum(map(is_measurable, found)),
            total=len(found),
        )
    every = list(counts.values())
    counts["all"] = CellCounts(
        trainable=sum(c.trainable for c in every),
        measurable=sum(c.measurable for c in every),
        total=sum(c.total for c in every),
    )
    return counts


def counts_text(tables: list[str] | None = None) -> str:
    """:func:`cell_counts` as lines ``<table>: trainable / measurable / total``, the sum last.

    ``python -c "from mixbench.report.published import counts_text; print(counts_text())"``
    """
    counts = cell_counts(tables)
    width = max(map(len, counts))
    lines = [f"{'table'.ljust(width)}  trainable  measurable  total"]
    lines += [
        f"{name.ljust(width)}  {c.trainable:9d}  {c.measurable:10d}  {c.total:5d}"
        for name, c in counts.items()
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ what a cell trains, as a config


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(item) for item in value) + "]"
    return str(value)


@functools.cache
def _config_file(group: str, name: str) -> dict[str, Any]:
    """``configs/<group>/<name>.yaml`` as a dict, interpolations unresolved (cached: copy before changing)."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"configs/{group}/{name}.yaml does not exist")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


@functools.cache
def _root_values() -> dict[str, Any]:
    """The values of ``configs/train.yaml`` outside its defaults list (seed, device, runs_root, ...)."""
    root = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml"), resolve=False)
    return {key: value for key, value in root.items() if key != "defaults"}  # type: ignore[union-attr]


def cell_overrides(target: Cell) -> list[str]:
    """``tools/train.py`` overrides that train a runnable cell (``+key=`` for keys the stock config lacks)."""
    if not target.runnable:
        raise ValueError(f"{target.table} [{target.row}, {target.column}] is not runnable: {target.reason}")
    names = target.names
    overrides = [f"{group}={names[group]}" for group in ("data", "model", "method", "schedule")]
    for group, options in target.group_options.items():
        stock = flatten(_config_file(group, str(names[group])))
        for key, value in flatten(options).items():
            plus = "" if key in stock else "+"
            overrides.append(f"{plus}{group}.{key}={_override_value(value)}")
    return overrides


def composed_config(
    names: Mapping[str, str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    root: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved plain config ``tools/train.py`` composes for these group names and options.

    ``names`` gives the config of every group of :data:`mixbench.config.GROUPS`; ``options`` the values set
    per group over its shipped file (as ``cell_overrides`` would pass them).  The root config's values
    (``configs/train.yaml``) are included, with ``root`` written over them (an experiment file's root values,
    e.g. the ``paper_values`` tables its group values interpolate); runtime groups (logger, hydra) are not, as
    they are not part of a run's identity.
    """
    tree: dict[str, Any] = merge_options(_root_values(), root or {})
    for group in GROUPS:
        tree[group] = merge_options(_config_file(group, names[group]), (options or {}).get(group) or {})
    return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)  # type: ignore[return-value]


def cell_config(target: Cell) -> dict[str, Any]:
    """The resolved plain config a runnable cell trains (what its run's ``config.yaml`` holds, runtime values
    aside)."""
    if not target.runnable:
        raise ValueError(f"{target.table} [{target.row}, {target.column}] is not runnable: {target.reason}")
    return composed_config({group: str(name) for group, name in target.names.items()}, target.group_options)


@functools.cache
def _configuration_of(request: str) -> tuple:
    names, options, root = json.loads(request)
    return run_identity(composed_config(names, options, root)).configuration


def configuration_of(
    names: Mapping[str, str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    root: Mapping[str, Any] | None = None,
) -> tuple:
    """``run_identity(...).configuration`` of :func:`composed_config` (cached: tables share
    configurations)."""
    return _configuration_of(json.dumps([dict(names), dict(options or {}), dict(root or {})], sort_keys=True))


def cell_configuration(target: Cell) -> tuple:
    """``run_identity(...).configuration`` of what a cell trains: equal to that of every run of the cell."""
    if not target.runnable:
        raise ValueError(f"{target.table} [{target.row}, {target.column}] is not runnable: {target.reason}")
    return configuration_of({group: str(name) for group, name in target.names.items()}, target.group_options)


def _has_config_files(target: Cell) -> bool:
    """Whether ``configs/`` has a file for each of the cell's group names (else no run can train it)."""
    return all((CONFIG_DIR / group / f"{name}.yaml").is_file() for group, name in target.names.items())


def _keyed_cells(data: dict[str, Any]) -> tuple[tuple[Cell, tuple], ...]:
    return tuple(
        (target, cell_configuration(target))
        for target in cells(data)
        if target.runnable and _has_config_files(target)
    )


@functools.cache
def _keyed_cells_of(name: str) -> tuple[tuple[Cell, tuple], ...]:
    return _keyed_cells(_load(name))


def matching_cells(table: str | dict[str, Any], config: Mapping[str, Any]) -> list[Cell]:
    """The runnable cells of ``table`` that a run with this resolved ``config.yaml`` (a dict) trains.

    Often one; several where a table reports several statistics or evaluations of the same runs
    (``alignmixup_official_logs``, AlignMixup T3).  Returned cells are copies: change them freely.
    """
    keyed = _keyed_cells_of(table) if isinstance(table, str) else _keyed_cells(table)
    key = run_identity(config).configuration
    return [copy.deepcopy(target) for target, target_key in keyed if target_key == key]
