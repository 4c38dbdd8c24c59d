"""Evaluation records of runs as the reports read them: ``eval/<suite>.json`` (``tools/evaluate.py``).

A record (:data:`mixbench.rundir.EVALUATION_KEYS`) holds one suite's results for every network the method
evaluates (``networks``: ``online``, and ``ema`` for AutoMix / AdAutoMix), all in percent; the cost suite
measures the training step instead (``step``).  ``eval/<suite>.json`` evaluates the last epoch's weights,
``eval/<suite>@best.json`` those of ``best.pt`` (``weights=best``).

* :func:`read_record`: a run's record of a suite, or why there is none to use (not evaluated, unreadable,
  failed), with the command that makes it.
* :func:`cell_value` / :func:`not_comparable`: the number a published cell
  (:class:`mixbench.report.published.CellEvaluation`) reads from a record, and why a record cannot be
  compared with the paper (corruptions generated rather than the released CIFAR-100-C, a generated OOD set).
* :func:`evaluate_cell`: those numbers over the complete seeds of a configuration, per network, with every
  seed that has none listed.

Nothing here imports the engine: records are JSON read through :class:`mixbench.rundir.RunDirectory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixbench.report.published import COST, CellEvaluation
from mixbench.report.runs import RunGroup
from mixbench.rundir import ONLINE, WEIGHTS, Run, RunDirectoryError, finite_or_none

LAST, BEST = WEIGHTS  # eval/<suite>.json, eval/<suite>@best.json
RELEASED, GENERATED = "released", "generated"  # data.corruption_source, data.ood_sets[<set>].source
WEIGHTS_TEXT = {
    LAST: "the last epoch's weights (checkpoint.pt; eval/<suite>.json)",
    BEST: "the best epoch's weights (best.pt; eval/<suite>@best.json)",
}
SUITE_TITLES = {
    "fgsm": "FGSM",
    "pgd": "PGD",
    "calibration": "calibration",
    "ood": "OOD",
    "corruption": "corruption",
    "occlusion": "occlusion",
    "wsol": "WSOL",
    COST: "cost",
}
KEY_LABELS = {  # a record key as a table names it (the unit in parentheses)
    "adversarial_error": "top-1 error under attack (%)",
    "detection_accuracy_at_half": "det. acc. at threshold 0.5 (%)",
    "detection_accuracy": "det. acc. (%)",
    "auroc": "AUROC (%)",
    "aupr_in": "AUPR-In (%)",
    "aupr_out": "AUPR-Out (%)",
    "mean": "mean accuracy (%)",
    "top1_loc": "top-1 loc. (%)",
    "max_box_acc_v2": "MaxBoxAcc-v2 (%)",
    "params": "params (M)",
    "ms_per_batch": "ms per batch",
}
CORRUPTION_SET_TITLES = {
    "cifar10_c": "CIFAR-10-C",
    "cifar100_c": "CIFAR-100-C",
    "tiny_imagenet_c": "Tiny-ImageNet-C",
}


def weights_checked(weights: str) -> str:
    """``weights`` when it is one of :data:`mixbench.rundir.WEIGHTS`, else ``ValueError`` (one line)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    return weights


def record_name(suite: str, weights: str = LAST) -> str:
    """``eval/fgsm.json`` or ``eval/fgsm@best.json``: the record's path inside a run directory."""
    return f"eval/{suite}.json" if weights == LAST else f"eval/{suite}@{weights}.json"


def evaluation_command(path: Path | str, suite: str, weights: str = LAST, force: bool = False) -> str:
    """The ``tools/evaluate.py`` command that writes the record of ``suite`` for the runs under ``path``."""
    words = ["python tools/evaluate.py", str(path), f"eval={suite}"]
    if weights != LAST:
        words.append(f"weights={weights}")
    if force:
        words.append("force=true")
    return " ".join(words)


@dataclass
class RecordRead:
    """A run's record of one suite, or why there is none to use."""

    run: Run
    suite: str
    weights: str
    record: dict[str, Any] | None = None
    problem: str | None = None  # None when ``record`` is there and did not fail

    @property
    def usable(self) -> bool:
        return self.record is not None and self.problem is None

    @property
    def missing(self) -> bool:
        """No record at all (the suite was not run on these weights)."""
        return self.record is None and self.problem == "not evaluated"


def _failure(record: Mapping[str, Any]) -> str | None:
    """Why a record says its evaluation failed (a ``status`` other than complete, or an ``error``)."""
    status = record.get("status")
    error = record.get("error") or record.get("message")
    if status not in (None, "complete", "ok"):
        return f"evaluation {status}" + (f": {error}" if error else "")
    if record.get("error"):
        return f"evaluation failed: {record['error']}"
    return None


def read_record(run: Run, suite: str, weights: str = LAST) -> RecordRead:
    """``eval/<suite>.json`` (``@best`` for ``weights="best"``) of ``run``.

    The cost suite times the training step, which no weights change: where its record of the asked weights
    is missing, the other one is read.
    """
    read = RecordRead(run=run, suite=suite, weights=weights_checked(weights))
    choices = [weights] + ([other for other in WEIGHTS if other != weights] if suite == COST else [])
    for which in choices:
        try:
            record = run.directory.read_evaluation(suite, which)
        except RunDirectoryError as error:
            read.problem = f"unreadable: {error}"
            return read
        if record is not None:
            read.record = record
            read.problem = _failure(record)
            return read
    read.problem = "not evaluated"
    return read


class RecordCache:
    """Records read once per (run, suite, weights) while a table is built."""

    def __init__(self) -> None:
        self._reads: dict[tuple[Path, str, str], RecordRead] = {}

    def get(self, run: Run, suite: str, weights: str = LAST) -> RecordRead:
        key = (run.path, suite, weights)
        if key not in self._reads:
            self._reads[key] = read_record(run, suite, weights)
        return self._reads[key]


# ------------------------------------------------------------------------------------------- values


def record_networks(record: Mapping[str, Any]) -> list[str]:
    """The networks a record evaluates (``online`` first); the cost suite's step counts as ``online``."""
    if record.get("suite") == COST:
        return [ONLINE]
    labels = list(record.get("networks") or {})
    return sorted(labels, key=lambda label: (label != ONLINE, labels.index(label)))


def network_results(record: Mapping[str, Any], network: str = ONLINE) -> Mapping[str, Any] | None:
    """``record["networks"][network]`` (None when the record has no such network)."""
    entry = (record.get("networks") or {}).get(network)
    return entry if isinstance(entry, Mapping) else None


def cell_value(record: Mapping[str, Any], evaluation: CellEvaluation, network: str = ONLINE) -> float | None:
    """The number of a published cell in a record, in the cell's unit (params in millions); None when the
    record has none for ``network``."""
    if evaluation.suite == COST:
        if network != ONLINE:
            return None
        value = finite_or_none((record.get("step") or {}).get(evaluation.key))
        if value is not None and evaluation.metric == "params_M":
            value /= 1e6
        return value
    entry = network_results(record, network)
    if entry is not None and evaluation.suite == "ood":
        entry = (entry.get("sets") or {}).get(evaluation.part)
    if not isinstance(entry, Mapping):
        return None
    return finite_or_none(entry.get(evaluation.key))


def not_comparable(record: Mapping[str, Any], evaluation: CellEvaluation) -> str | None:
    """Why a record measures something other than the published cell (listed, never filled in); None when
    it is comparable."""
    data = record.get("data") or {}
    if evaluation.suite == "corruption":
        wanted = CORRUPTION_SET_TITLES.get(str(evaluation.part), str(evaluation.part))
        source = data.get("corruption_source")
        if source != RELEASED:
            what = "generated corruptions" if source == GENERATED else f"corruption source {source!r}"
            return f"{what}, not the released {wanted}: not comparable"
        if data.get("corruption_set") != evaluation.part:
            return f"corruption set {data.get('corruption_set')!r}, not {evaluation.part}: not comparable"
    if evaluation.suite == "ood":
        info = (data.get("ood_sets") or {}).get(evaluation.part)
        if isinstance(info, Mapping) and info.get("source") == GENERATED:
            return f"OOD set {evaluation.part} was generated, not the released one: not comparable"
    return None


def measure_label(evaluation: CellEvaluation) -> str:
    """``FGSM top-1 error under attack (%)``, ``OOD lsun_crop AUROC (%)``, ``CIFAR-100-C mean accuracy
    (%)``, ``params (M)``: what an evaluation cell holds."""
    label = KEY_LABELS.get(evaluation.key, evaluation.key)
    if evaluation.suite == COST:
        return label
    if evaluation.suite == "corruption":
        return f"{CORRUPTION_SET_TITLES.get(str(evaluation.part), evaluation.part)} {label}"
    title = SUITE_TITLES.get(evaluation.suite, evaluation.suite)
    return f"{title} {evaluation.part} {label}" if evaluation.part else f"{title} {label}"


def step_conditions(record: Mapping[str, Any]) -> str:
    """``NVIDIA H200, bf16, batch 256``: where, in what precision and at what batch the cost suite timed
    the step."""
    step = record.get("step") or {}
    parts = [str(step.get("device") or record.get("device") or "unknown device")]
    if step.get("precision"):
        parts.append(str(step["precision"]))
    if step.get("batch_size") is not None:
        parts.append(f"batch {step['batch_size']}")
    return ", ".join(parts)


def commit_text(record: Mapping[str, Any]) -> str:
    """The code an evaluation ran on: ``abc1234``, ``abc1234 (with uncommitted changes)`` or ``unknown``."""
    commit = str(record.get("commit") or "unknown")
    dirty = commit.endswith("-dirty")
    commit = commit.removesuffix("-dirty")
    short = commit if commit == "unknown" else commit[:7]
    return short + (" (with uncommitted changes)" if dirty else "")


# ------------------------------------------------------------------------------------------- a cell


def _seed_list(reads: list[RecordRead]) -> str:
    return ", ".join(f"seed{read.run.seed}" for read in reads)


@dataclass
class EvaluatedCell:
    """An evaluation cell's numbers over the complete seeds of one configuration."""

    evaluation: CellEvaluation
    weights: str
    group_path: Path
    reads: list[RecordRead] = field(default_factory=list)  # one per complete run, in seed order
    values: dict[str, list[float]] = field(default_factory=dict)  # network -> one value per usable seed
    incomparable: list[tuple[RecordRead, str]] = field(default_factory=list)
    without_value: list[tuple[RecordRead, str]] = field(default_factory=list)  # network absent from a record

    @property
    def records(self) -> list[dict[str, Any]]:
        """The records whose numbers are in :attr:`values` (comparable, not failed)."""
        skipped = {id(read) for read, _ in self.incomparable}
        return [read.record for read in self.reads if read.usable and id(read) not in skipped]  # type: ignore[misc]

    @property
    def conditions(self) -> list[str]:
        """For the cost suite: the devices and batch sizes of the measurements (``[]`` otherwise)."""
        if self.evaluation.suite != COST:
            return []
        return list(dict.fromkeys(step_conditions(record) for record in self.records))

    @property
    def problems(self) -> list[str]:
        """One line per kind of gap: seeds not evaluated (with the command), unreadable or failed records,
        records that are not comparable, networks a record lacks."""
        suite = self.evaluation.suite
        lines = []
        missing = [read for read in self.reads if read.missing]
        if missing:
            who = (
                "not evaluated" if len(missing) == len(self.reads) else f"{_seed_list(missing)} not evaluated"
            )
            lines.append(f"{who}: run {evaluation_command(self.group_path, suite, self.weights)}")
        for read in self.reads:
            if not read.missing and read.problem is not None:
                fix = evaluation_command(self.group_path, suite, self.weights, force=True)
                lines.append(
                    f"seed{read.run.seed}: {record_name(suite, self.weights)} {read.problem} ({fix})"
                )
        for read, why in self.incomparable:
            lines.append(f"seed{read.run.seed}: {record_name(suite, self.weights)} {why}")
        for read, why in self.without_value:
            lines.append(f"seed{read.run.seed}: {why}")
        return lines


def evaluate_cell(
    group: RunGroup,
    evaluation: CellEvaluation,
    weights: str = LAST,
    cache: RecordCache | None = None,
) -> EvaluatedCell:
    """The cell's number in every complete seed's record, per network the runs evaluate (online, EMA).

    Runs that are not complete are left out (the table lists them anyway); a seed without a usable,
    comparable record is listed in :attr:`EvaluatedCell.problems`, never averaged in.
    """
    cache = cache or RecordCache()
    result = EvaluatedCell(evaluation=evaluation, weights=weights, group_path=group.path)
    networks = [ONLINE] if evaluation.suite == COST else [ONLINE, *group.networks]
    for run in group.complete_runs:
        read = cache.get(run, evaluation.suite, weights)
        result.reads.append(read)
        if not read.usable:
            continue
        record: dict[str, Any] = read.record  # type: ignore[assignment]
        why = not_comparable(record, evaluation)
        if why is not None:
            result.incomparable.append((read, why))
            continue
        for network in networks:
            value = cell_value(record, evaluation, network)
            if value is not None:
                result.values.setdefault(network, []).append(value)
            elif network in run.networks or evaluation.suite == COST:
                place = f" set {evaluation.part}" if evaluation.suite == "ood" else ""
                what = f"step.{evaluation.key}" if evaluation.suite == COST else f"{network}{place}"
                result.without_value.append(
                    (read, f"{record_name(evaluation.suite, weights)} has no {evaluation.key} for {what}")
                )
    return result
