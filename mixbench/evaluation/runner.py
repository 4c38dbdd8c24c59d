"""Evaluate trained runs: load a run directory's weights, run the chosen suites, write ``eval/<suite>.json``.

``tools/evaluate.py <run dir | runs root> eval=<suite>[,<suite>...]`` calls :func:`evaluate`.  For each
complete run under the target (a run directory, or every complete one under a folder; runs still running,
failed or interrupted are listed and left alone) and each suite of :data:`~mixbench.evaluation.suites.SUITES`:

1. **Check first, write nothing on a refusal.**  Before any network is evaluated, every run and suite is
   checked (:func:`plan`): the run is complete, its weights file exists (``best.pt`` for
   ``weights=best``), its dataset is where ``data.root`` says, the OOD and corruption sets asked for exist,
   WSOL's dataset has boxes and its network a class activation map.  A problem is one
   :class:`EvaluationError` line.
2. **Skip what is done.**  A suite whose record (``eval/<suite>.json``, or ``eval/<suite>@best.json``) has the
   same protocol (:func:`~mixbench.evaluation.suites.protocol_of`) and was made from the same weights (file
   and epoch) is skipped; ``force=true`` redoes it.  So an interrupted evaluation is resumed by running the
   same command: the records already written stay.
3. **Load once per run.**  The run's ``config.yaml`` builds its model and method as the trainer does
   (:func:`~mixbench.engine.build.build_model_and_method`), the checkpoint is loaded with
   ``weights_only=True`` (:meth:`~mixbench.rundir.RunDirectory.load_checkpoint`), and every network the method
   evaluates in training (``method.eval_models``: ``online``, and ``ema`` for AutoMix-like methods) is
   wrapped as a classifier of images in [0, 1] (:class:`~mixbench.evaluation.attacks.NormalizedModel`).
4. **Write atomically.**  Each suite's record (:data:`mixbench.rundir.EVALUATION_KEYS`) is written whole or
   not at all (:meth:`~mixbench.rundir.RunDirectory.write_evaluation`), its figures likewise.

Runtime: the device, precision and memory format are this command's (``device=auto``: the GPU if there is
one, bf16 autocast there), not the training run's; the record names them.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from mixbench.config import ConfigError
from mixbench.data import DatasetMissingError, check_dataset
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.runtime import resolve_runtime
from mixbench.evaluation import ood, suites
from mixbench.evaluation.attacks import NormalizedModel
from mixbench.evaluation.images import BOX_DATASETS
from mixbench.evaluation.loaded_run import LoadedRun
from mixbench.methods.switch import HEAD_REPLACING_METHODS
from mixbench.models import build_model
from mixbench.provenance import device_name, git_state
from mixbench.rundir import (
    BEST_FILE,
    CHECKPOINT_FILE,
    ONLINE,
    SUMMARY_FILE,
    WEIGHTS,
    RunDirectory,
    RunDirectoryError,
    find_runs,
    first_line,
)


class EvaluationError(ValueError):
    """A refusal of ``tools/evaluate.py``, in one line naming the problem and the fix."""


@dataclass
class Task:
    """One suite to run on one run directory (or to skip, with the reason)."""

    run_dir: RunDirectory
    suite: str
    params: dict[str, Any]
    skip_reason: str | None = None


# ------------------------------------------------------------------------------------------- planning


def selected_suites(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """``{suite: params}`` chosen with ``eval=...`` (the config group ``configs/eval/``)."""
    chosen = OmegaConf.to_container(cfg.get("eval") or {}, resolve=True)
    if not chosen:
        raise EvaluationError(f"no suite chosen; pass eval=<suite>[,<suite>...] or eval=all ({suite_list()})")
    unknown = [name for name in chosen if name not in suites.SUITES]
    if unknown:
        raise EvaluationError(f"unknown suite {', '.join(unknown)}; valid: {suite_list()}, all")
    return chosen  # type: ignore[return-value]


def suite_list() -> str:
    return ", ".join(suites.SUITES)


def run_directories(target: Path) -> tuple[list[RunDirectory], list[str]]:
    """The complete runs of ``target`` (a run directory or a folder of them) and a line per run left out.

    A run directory given itself must be complete; under a folder, incomplete runs are listed, not refused.
    """
    target = Path(target)
    if not target.is_dir():
        raise EvaluationError(
            f"{target} is not a folder; pass a run directory or a folder of runs (runs_root)"
        )
    if (target / SUMMARY_FILE).is_file():
        summary = _summary(RunDirectory(target))
        if summary.get("status") != "complete":
            raise EvaluationError(
                _incomplete_text(target, summary) + "; finish it first (tools/train.py resumes it)"
            )
        return [RunDirectory(target)], []
    found = find_runs(target)
    if not found:
        raise EvaluationError(f"no {SUMMARY_FILE} under {target}; train something first (tools/train.py)")
    complete, left_out = [], []
    for path in found:
        summary = _summary(RunDirectory(path))
        if summary.get("status") == "complete":
            complete.append(RunDirectory(path))
        else:
            left_out.append(_incomplete_text(path, summary) + ": not evaluated")
    if not complete:
        raise EvaluationError(
            f"no complete run under {target} ({len(found)} not complete); finish them first"
        )
    return complete, left_out


def _summary(run_dir: RunDirectory) -> dict[str, Any]:
    try:
        summary = run_dir.read_summary()
    except RunDirectoryError as error:
        raise EvaluationError(str(error)) from error
    if summary is None:
        raise EvaluationError(f"{run_dir.path} has no {SUMMARY_FILE}; it is not a run directory")
    return summary


def _incomplete_text(path: Path, summary: Mapping[str, Any]) -> str:
    return (
        f"run {path} is not complete (status {summary.get('status')}, "
        f"{summary.get('epochs_done')}/{summary.get('epochs')} epochs)"
    )


def weights_epoch(run_dir: RunDirectory, which: str) -> int | None:
    """The epoch of the weights an evaluation would read, from the run's summary."""
    summary = _summary(run_dir)
    if which == "last":
        return int(summary["epochs_done"])
    best = summary.get("best_epoch")
    return None if best is None else int(best)


def plan(cfg: DictConfig) -> tuple[list[Task], list[str]]:
    """Every (run, suite) of the command, checked (see the module docstring), with the done ones marked to
    skip; and the lines of runs left out.  Raises :class:`EvaluationError` on the first problem."""
    which = str(cfg.weights)
    if which not in WEIGHTS:
        raise EvaluationError(f"weights={which} is unknown; use last (checkpoint.pt) or best (best.pt)")
    chosen = selected_suites(cfg)
    runs, left_out = run_directories(Path(str(cfg.target)))
    tasks = []
    for run_dir in runs:
        run_cfg = run_config(run_dir, cfg)
        for suite, params in chosen.items():
            task = Task(run_dir, suite, params)
            task.skip_reason = None if cfg.force else _done_reason(run_dir, suite, params, which)
            if task.skip_reason is None:
                not_applicable = inapplicable_reason(run_cfg, suite)
                if not_applicable is not None and cfg.get("applicable_only"):
                    task.skip_reason = f"left out {run_dir.path} {suite}: {not_applicable}"
                else:
                    check_task(run_dir, run_cfg, suite, params, which)
            tasks.append(task)
    return tasks, left_out


def _weights_used(suite: str, which: str) -> str:
    return which if suites.READS_WEIGHTS[suite] else "last"


def _done_reason(run_dir: RunDirectory, suite: str, params: Mapping[str, Any], which: str) -> str | None:
    used = _weights_used(suite, which)
    try:
        record = run_dir.read_evaluation(suite, used)
    except RunDirectoryError:
        return None  # a damaged record is redone
    if record is None or record.get("protocol") != suites.protocol_of(params):
        return None
    if suites.READS_WEIGHTS[suite] and record["weights"].get("epoch") != weights_epoch(run_dir, used):
        return None
    path = run_dir.evaluation_file(suite, used)
    return (
        f"skipped {run_dir.path} {suite}: {path.name} has the same protocol and weights "
        "(force=true redoes it)"
    )


def run_config(run_dir: RunDirectory, cfg: DictConfig) -> DictConfig:
    """The run's ``config.yaml`` with this command's runtime: device, precision, data root, workers."""
    try:
        run_cfg = OmegaConf.create(run_dir.read_config())
    except RunDirectoryError as error:
        raise EvaluationError(str(error)) from error
    with open_dict(run_cfg):
        for key in ("device", "precision", "channels_last"):
            run_cfg[key] = cfg[key]
        run_cfg.compile = False
        if cfg.get("data_root") is not None:
            run_cfg.data.root = str(cfg.data_root)
        run_cfg.model.pretrained_path = None  # the run's own weights replace any initial ones
    return run_cfg


def inapplicable_reason(run_cfg: DictConfig, suite: str) -> str | None:
    """Why a suite cannot apply to a run at all (not a missing file): WSOL on a dataset without boxes or a
    network without class activation maps.  ``eval=all`` lists such suites instead of refusing."""
    if suite != "wsol":
        return None
    method = str(run_cfg.method.name)
    if method in HEAD_REPLACING_METHODS:
        return (
            f"method {method} has no class activation map of the model ({HEAD_REPLACING_METHODS[method]}); "
            "WSOL evaluates GAP + linear heads"
        )
    try:
        if str(run_cfg.data.name) not in BOX_DATASETS:
            suites.boxes_of(run_cfg.data, 1, 0)
        with torch.device("meta"):  # the architecture only: no memory, no weights
            model = build_model(
                str(run_cfg.model.name),
                num_classes=int(run_cfg.data.num_classes),
                image_size=input_size(run_cfg),
                width=run_cfg.model.width,
            )
        suites.cam_network(model, ONLINE, str(run_cfg.model.name))
    except ConfigError as error:
        return str(error)
    except (ValueError, KeyError) as error:
        raise EvaluationError(
            f"model {run_cfg.model.name} of the run cannot be built: {first_line(error)}"
        ) from error
    return None


def check_task(
    run_dir: RunDirectory, run_cfg: DictConfig, suite: str, params: Mapping[str, Any], which: str
) -> None:
    """Refuse (one line) what would fail once the suite runs: missing weights, data, sets or CAMs."""
    try:
        if suites.READS_WEIGHTS[suite]:
            path = run_dir.best_file if which == "best" else run_dir.checkpoint_file
            if not path.is_file():
                fix = (
                    "use weights=last"
                    if which == "best"
                    else "the run was complete but its checkpoint is gone; train it again with force=true"
                )
                raise EvaluationError(f"{path} does not exist; {fix}")
            check_dataset(run_cfg.data)
        dataset = str(run_cfg.data.name)
        if suite == "ood":
            for name in suites.ood_set_names(params, dataset):
                if name not in suites.GENERATED_OOD_SETS:
                    ood.ood_image_files(str(params["root"]), name)
        elif suite == "corruption":
            suites.corruption_names(params)
            suites.check_corruption_set(params, dataset)
        elif suite == "wsol":
            reason = inapplicable_reason(run_cfg, suite)
            if reason is not None:
                raise EvaluationError(reason)
    except (ConfigError, DatasetMissingError, ood.OodSetMissingError) as error:
        raise EvaluationError(str(error)) from error


# -------------------------------------------------------------------------------------------- loading


def load_run(run_dir: RunDirectory, run_cfg: DictConfig, which: str, num_workers: int) -> LoadedRun:
    """Build the run's model and method and load its weights (``weights_only=True``)."""
    try:
        runtime = resolve_runtime(run_cfg)
        torch.manual_seed(int(run_cfg.seed))
        model, method = build_model_and_method(run_cfg, runtime)
        state = (
            run_dir.load_best(runtime.device) if which == "best" else run_dir.load_checkpoint(runtime.device)
        )
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    except (ConfigError, RunDirectoryError) as error:
        raise EvaluationError(str(error)) from error
    networks = {}
    for label, network in method.eval_models(model).items():
        wrapped = NormalizedModel(network, list(run_cfg.data.mean), list(run_cfg.data.std)).to(runtime.device)
        networks[label or ONLINE] = wrapped.eval()
    weights = {
        "which": which,
        "file": BEST_FILE if which == "best" else CHECKPOINT_FILE,
        "epoch": int(state["epoch"]),
    }
    return LoadedRun(run_dir, run_cfg, runtime, networks, weights, num_workers)


def runtime_only(run_cfg: DictConfig, run_dir: RunDirectory, num_workers: int) -> LoadedRun:
    """A run without weights (the cost suite times the training step of its configuration)."""
    try:
        runtime = resolve_runtime(run_cfg)
    except ConfigError as error:
        raise EvaluationError(str(error)) from error
    return LoadedRun(
        run_dir, run_cfg, runtime, {}, {"which": "last", "file": None, "epoch": None}, num_workers
    )


# --------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    task: Task
    path: Path | None  # the record written (None: skipped)
    line: str


def evaluate(cfg: DictConfig, out: TextIO | None = None) -> list[Outcome]:
    """Run the command ``cfg`` (``configs/evaluate.yaml``); prints a line per run and suite (to ``out``,
    standard output by default)."""
    out = sys.stdout if out is None else out
    tasks, left_out = plan(cfg)
    for line in left_out:
        print(line, file=out, flush=True)
    outcomes = []
    which = str(cfg.weights)
    progress_enabled = _show_progress(cfg)
    by_run: dict[Path, list[Task]] = {}
    for task in tasks:
        by_run.setdefault(task.run_dir.path, []).append(task)
    commit, dirty = git_state()
    for run_path, run_tasks in by_run.items():
        run_dir = RunDirectory(run_path)
        loaded: LoadedRun | None = None
        for task in run_tasks:
            if task.skip_reason is not None:
                print(task.skip_reason, file=out, flush=True)
                outcomes.append(Outcome(task, None, task.skip_reason))
                continue
            run_cfg = run_config(run_dir, cfg)
            if suites.READS_WEIGHTS[task.suite]:
                if loaded is None:
                    loaded = load_run(run_dir, run_cfg, which, int(cfg.num_workers))
                target = loaded
            else:
                target = runtime_only(run_cfg, run_dir, int(cfg.num_workers))
            started = time.perf_counter()
            progress = suites.Progress(progress_enabled, prefix=f"{task.suite} ")
            try:
                result = suites.SUITES[task.suite](target, task.params, progress)
            except (ConfigError, DatasetMissingError, ood.OodSetMissingError, ValueError) as error:
                raise EvaluationError(f"{run_path} {task.suite}: {first_line(error)}") from error
            seconds = time.perf_counter() - started
            record = {
                "suite": task.suite,
                "protocol": suites.protocol_of(task.params),
                "weights": target.weights,
                "data": {**result.data, **_roots(task.params)},
                "networks": result.networks,
                "device": device_name(target.runtime.device),
                "precision": target.runtime.precision,
                "commit": (commit or "unknown") + ("-dirty" if dirty else ""),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 2),
            }
            if result.step is not None:
                record["step"] = result.step
            path = run_dir.write_evaluation(record)
            written = path.relative_to(run_path)
            line = f"evaluated {run_path} {task.suite}: {headline(record)} -> {written} ({seconds:.1f} s)"
            print(line, file=out, flush=True)
            outcomes.append(Outcome(task, path, line))
    return outcomes


def _roots(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if str(key).endswith("root")}


def _show_progress(cfg: DictConfig) -> bool:
    if str(cfg.progress) == "auto":
        return sys.stderr.isatty()
    return bool(cfg.progress)


HEADLINES = {
    "fgsm": ("adversarial_error", "error"),
    "pgd": ("adversarial_error", "error"),
    "calibration": ("ece", "ECE"),
    "corruption": ("mean", "mean accuracy"),
    "wsol": ("top1_loc", "top-1 loc"),
}


def headline(record: Mapping[str, Any]) -> str:
    """A short summary of a record for the terminal: the suite's main number per network."""
    suite = record["suite"]
    if suite == "cost":
        step = record["step"]
        millions = step["params"] / 1e6
        return f"{step['ms_per_batch']:.1f} ms/batch of {step['batch_size']}, {millions:.2f} M params"
    parts = []
    for label, result in record["networks"].items():
        if suite in HEADLINES:
            key, name = HEADLINES[suite]
            parts.append(f"{label} {name} {result[key]:.2f}%")
        elif suite == "ood":
            aurocs = ", ".join(f"{name} {values['auroc']:.1f}" for name, values in result["sets"].items())
            parts.append(f"{label} AUROC {aurocs}")
        elif suite == "occlusion":
            parts.append(f"{label} top-1 at 50% masked {result['accuracy']['0.5']:.2f}%")
    return "; ".join(parts)


def sweep_skip_reason(cfg: DictConfig) -> str | None:
    """For the GPU-pool launcher: why a job of ``tools/evaluate.py -m`` need not start (all of its suites are
    done on all of its runs), or None."""
    try:
        tasks, _ = plan(cfg)
    except (EvaluationError, ConfigError, RunDirectoryError):
        return None  # the job itself reports the problem in one line
    if tasks and all(task.skip_reason is not None for task in tasks):
        suites_done = sorted({task.suite for task in tasks})
        runs = len({task.run_dir.path for task in tasks})
        return f"skipped: {', '.join(suites_done)} already evaluated on {runs} run(s)"
    return None
