"""Evaluate trained runs beyond clean accuracy: attacks, OOD detection, calibration, corruption, occlusion,
localisation and cost.

    python tools/evaluate.py runs/quickstart eval=all                  # every complete run under a folder
    python tools/evaluate.py <run dir> eval=fgsm,pgd weights=best      # one run, best.pt's weights
    python tools/evaluate.py runs/ eval=ood eval.ood.sets=[isun]       # a protocol value changed
    python tools/evaluate.py -m runs/ eval=fgsm,pgd,ood hydra/launcher=gpus   # a job per suite, GPU pool

Each suite writes <run>/eval/<suite>.json (eval/<suite>@best.json with weights=best) atomically: the weights
used, the protocol, the data read, the results of every network the method evaluates (online, EMA). A suite
already evaluated with the same protocol and weights is skipped (force=true redoes it). The suites and their
protocols are the files of configs/eval/; mixbench/evaluation/suites.py says what each reports.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mixbench.config import CONFIG_DIR, ConfigError
from mixbench.errors import fail
from mixbench.sweep import FAILED_JOBS

SUITE_NAMES = sorted(path.stem for path in (CONFIG_DIR / "eval").glob("*.yaml"))


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mixbench.evaluation.runner import EvaluationError, evaluate

    try:
        evaluate(cfg)
    except EvaluationError as error:
        if _in_process_sweep():  # report, and let the other jobs of the grid run
            print(f"error: {error}", file=sys.stderr, flush=True)
            FAILED_JOBS.append(" ".join(HydraConfig.get().overrides.task))
            return
        fail(str(error), code=2)
    if not _in_process_sweep() or HydraConfig.get().job.num == 0:
        _print_table(Path(str(cfg.target)), str(cfg.weights))


def _print_table(target: Path, weights: str) -> None:
    """The evaluations of the runs under ``target`` as one table (mixbench.report.evaluations)."""
    from mixbench.report.evaluations import build_evaluation_table, evaluation_to_markdown

    table = build_evaluation_table(target, weights=weights)
    if table.rows:
        print()
        print(evaluation_to_markdown(table), end="")


def _in_process_sweep() -> bool:
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and str(hydra_cfg.launcher.get("_target_", "")).endswith(
        "BasicLauncher"
    )


def hydra_arguments(arguments: list[str]) -> list[str]:
    """The command line as Hydra reads it: the first plain argument becomes ``target=<path>``; without
    ``-m``, ``eval=a,b`` selects both suites (``eval=[a,b]``) and ``eval=all`` marks the command
    ``applicable_only``.  Unknown suites are refused in one line."""
    multirun = any(argument in ("-m", "--multirun") for argument in arguments)
    converted = []
    for argument in arguments:
        if not argument.startswith("-") and ("=" not in argument or Path(argument).is_dir()):
            if any(a.startswith("target=") for a in converted):
                fail(f"pass one run directory or runs folder, got a second one: {argument}")
            if not Path(argument).is_dir():  # before anything heavy is imported
                fail(f"{argument} is not a folder; pass a run directory or a folder of runs (runs_root)")
            if "'" in argument:
                fail(
                    f"the path {argument} holds a quote (') that Hydra cannot take; rename or link the folder"
                )
            converted.append(f"target='{argument}'")  # quoted: run folders hold '=' and ','
            continue
        if argument.startswith("eval="):
            names = [name for name in re.split(r"[,\[\]\s]+", argument[len("eval=") :]) if name]
            unknown = [name for name in names if name not in SUITE_NAMES]
            if unknown or not names:
                fail(f"unknown suite {', '.join(unknown) or '(none)'}; valid: {', '.join(SUITE_NAMES)}")
            if "all" in names and not multirun:
                converted.append("applicable_only=true")
            if not multirun and len(names) > 1:
                argument = f"eval=[{','.join(names)}]"
        converted.append(argument)
    if not any(a.startswith("target=") for a in converted) and not any(
        a in ("--help", "-h", "--cfg", "-c") for a in arguments
    ):
        fail(
            "pass the run directory (or a folder of runs) to evaluate: tools/evaluate.py <path> eval=<suite>"
        )
    if not any(a.startswith("eval=") for a in converted) and not any(
        a in ("--help", "-h") for a in arguments
    ):
        fail(f"pass the suites to run: eval=<suite>[,<suite>...] ({', '.join(SUITE_NAMES)})")
    return converted


if __name__ == "__main__":
    sys.argv[1:] = hydra_arguments(sys.argv[1:])
    from mixbench.cli import check_overrides  # imports torch

    try:
        check_overrides(sys.argv[1:], config_name="evaluate")
    except ConfigError as error:
        fail(str(error))
    main()
    if FAILED_JOBS:
        fail(f"{len(FAILED_JOBS)} job(s) of the sweep failed: " + "; ".join(FAILED_JOBS), code=1)
