"""Every bad input to every tool: a non-zero exit, exactly one ``error:`` line naming the problem (and, where
there is one, the fix), no traceback, no file changed and no half-made run directory.

The tools run in this process (:func:`tests.helpers.tools.run_tool`, the same code path as ``python
tools/<tool>.py``); each tool's test file keeps a genuine subprocess case.  Before and after each case the
whole scratch folder (runs root, existing run directories, files given as arguments) and the repository's
``results/`` are hashed: a refused command changes none of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mixbench.runlock import LOCK_FILE
from tests.helpers import REPO, compose_config
from tests.helpers.tools import run_tool

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TINY = ["experiment=quickstart", "model.width=4", "data.image_size=8", "schedule.epochs=2"]
TINY += ["schedule.metric_window=1", "device=cpu", "progress=false"]


def _digest(*folders: Path) -> str:
    """A hash of every file's path and bytes under ``folders``, run directories' ``.lock`` files left out: a
    refused resume may have taken (and released) the lock of an existing run directory, which leaves that
    bookkeeping file empty and changes nothing of the run."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.name == LOCK_FILE:
                assert path.read_text() == "", f"{path} still names a holder"
                continue
            digest.update(str(path).encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------- scratch states some cases start from


def _foreign_config(scratch: Path) -> None:
    """A run directory of the tiny vanilla run whose config.yaml belongs to another configuration."""
    run_dir = _tiny_run_dir(scratch)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": 99, "method": {"name": "cutmix"}}))


def _damaged_checkpoint(scratch: Path) -> None:
    """The tiny vanilla run's directory with its real config and a checkpoint cut in half."""
    run_dir = _tiny_run_dir(scratch)
    run_dir.mkdir(parents=True)
    cfg = compose_config([*TINY, f"runs_root={scratch / 'runs'}"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(_plain(cfg)))))
    torch.save({"epoch": 1, "model": {"w": torch.zeros(100)}}, run_dir / "checkpoint.pt")
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[: len(data) // 2])


def _foreign_pickle_checkpoint(scratch: Path) -> None:
    """A checkpoint whose pickle would run code (os.system) if it were loaded without weights_only."""
    run_dir = _tiny_run_dir(scratch)
    run_dir.mkdir(parents=True)
    cfg = compose_config([*TINY, f"runs_root={scratch / 'runs'}"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(_plain(cfg)))))

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {scratch / 'pwned'}",))

    torch.save({"epoch": 1, "model": Evil()}, run_dir / "checkpoint.pt")


def _garbage_file(scratch: Path) -> None:
    (scratch / "garbage.pt").write_text("not a checkpoint")


def _empty_runs(scratch: Path) -> None:
    (scratch / "runs").mkdir()


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _tiny_run_dir(scratch: Path) -> Path:
    from mixbench.rundir import run_directory

    return run_directory(compose_config([*TINY, f"runs_root={scratch / 'runs'}"]))


def _run_files(scratch: Path) -> list[Path]:
    """Every file and folder under the runs root, lock files left out (see :func:`_digest`)."""
    runs = scratch / "runs"
    return sorted(p for p in runs.rglob("*") if p.name != LOCK_FILE) if runs.exists() else []


Case = tuple[str, list[str], str, Callable[[Path], None] | None]
R = "runs_root={scratch}/runs"  # filled in per case

CASES: dict[str, Case] = {
    # train.py: group options and keys
    "unknown method": ("train", ["method=foo"], "unknown method 'foo'", None),
    "unknown model": ("train", ["model=r1"], "unknown model 'r1'", None),
    "unknown data": ("train", ["data=cifar1000"], "unknown data 'cifar1000'", None),
    "unknown schedule": ("train", ["schedule=nope"], "unknown schedule 'nope'", None),
    "unknown logger": ("train", ["logger=nope"], "nope", None),
    "unknown key": ("train", ["epochz=3"], "epochz", None),
    "unknown method option": ("train", ["method=mixup", "method.beta=1"], "beta", None),
    # train.py: values
    "alpha zero": ("train", ["method=mixup", "method.alpha=0"], "method.alpha must be a positive", None),
    "alpha negative": (
        "train",
        ["method=cutmix", "method.alpha=-1"],
        "method.alpha must be a positive",
        None,
    ),
    "alpha nan": ("train", ["method=mixup", "method.alpha=nan"], "method.alpha must be a finite", None),
    "alpha inf": ("train", ["method=mixup", "method.alpha=inf"], "method.alpha must be a finite", None),
    "lr nan": ("train", ["schedule.optimizer.lr=nan"], "schedule.optimizer.lr must be a finite", None),
    "lr negative": (
        "train",
        ["schedule.optimizer.lr=-0.1"],
        "schedule.optimizer.lr must be a positive",
        None,
    ),
    "momentum above one": ("train", ["schedule.optimizer.momentum=1.5"], "momentum", None),
    "label smoothing one": ("train", ["schedule.label_smoothing=1.0"], "label_smoothing", None),
    "negative grad clip": ("train", ["schedule.grad_clip=-1"], "grad_clip", None),
    "negative warm-up": ("train", ["schedule.lr_schedule.warmup_epochs=-1"], "warmup_epochs", None),
    "batch of one": ("train", ["schedule.batch_size=1"], "batch_size must be at least 2", None),
    "epochs below window": (
        "train",
        ["schedule.epochs=5", "schedule.metric_window=10"],
        "metric window",
        None,
    ),
    "fractional seed": ("train", ["seed=1.5"], "seed must be an integer", None),
    "negative seed": ("train", ["seed=-3"], "seed must be an integer", None),
    "text seed": ("train", ["seed=abc"], "seed must be an integer", None),
    "unknown device": ("train", ["device=gpu"], "device='gpu' is not a device", None),
    "cuda without gpu": ("train", ["device=cuda"], "no CUDA GPU is visible", None),
    "negative workers": ("train", ["num_workers=-1"], "num_workers must be an integer", None),
    "zero eval batch": ("train", ["eval_batch_size=0"], "eval_batch_size must be an integer", None),
    "tiny images": ("train", ["data.image_size=4"], "data.image_size must be an integer >= 8", None),
    "tiny train size": ("train", ["schedule.train_size=3"], "schedule.train_size must be an integer", None),
    "one class": ("train", ["data.num_classes=1"], "data.num_classes must be an integer >= 2", None),
    "unknown precision": ("train", ["precision=fp16"], "precision='fp16' is not one of", None),
    # train.py: combinations and files
    "feature method at a stage the model lacks": (
        "train",
        ["method=automix", "method.feature_stage=6"],
        "cannot run on model r18: model r18 exposes hidden states at stages [0, 1, 2, 3, 4], not at stage 6",
        None,
    ),
    "missing dataset": ("train", ["data=cifar100"], "CIFAR-100 not found", None),
    "fine-tuning without weights": (
        "train",
        ["model=resnet18_imagenet", "schedule=finegrained", "data=cub200"],
        "model.pretrained_path",
        None,
    ),
    "switch names a method twice": (
        "train",
        ["method=switch", "method.choices=[mixup,mixup]"],
        "twice",
        None,
    ),
    "switch probabilities": ("train", ["method=switch", "method.probs=[0.2,0.2]"], "summing to 1", None),
    "switch child option": (
        "train",
        ["method=switch", "+method.options={cutmix: {beta: 1}}"],
        "method.options.cutmix",
        None,
    ),
    "sumix on mixup": ("train", ["method=sumix", "method.base=mixup"], "sumix", None),
    "stylemix without weights": ("train", ["method=stylemix"], "stylemix", None),
    "runs root under a file": ("train", ["runs_root=/etc/passwd/runs"], "/etc/passwd is a file", None),
    "another configuration's folder": (
        "train",
        [],
        "holds a run of a different configuration",
        _foreign_config,
    ),
    "truncated checkpoint": (
        "train",
        [],
        "checkpoint.pt cannot be loaded (the file is truncated",
        _damaged_checkpoint,
    ),
    "checkpoint with a code-running pickle": (
        "train",
        [],
        "not loaded for that reason",
        _foreign_pickle_checkpoint,
    ),
    # table.py
    "table of a missing folder": ("table", ["{scratch}/nope"], "is not a folder", None),
    "table of an empty folder": ("table", ["{scratch}/runs"], "train something first", _empty_runs),
    "table of an unknown published table": (
        "table",
        ["{scratch}/runs", "--table", "nope"],
        "unknown table",
        _empty_runs,
    ),
    "table without its folder": ("table", [], "pass the runs_root of your runs", None),
    # show_mix.py
    "show_mix missing checkpoint": ("show_mix", ["checkpoint={scratch}/none.pt"], "does not exist", None),
    "show_mix garbage checkpoint": (
        "show_mix",
        ["checkpoint={scratch}/garbage.pt"],
        "not a torch checkpoint",
        _garbage_file,
    ),
    "show_mix zero samples": ("show_mix", ["samples=0"], "samples must be an integer", None),
    "show_mix unknown method": ("show_mix", ["method=foo"], "unknown method 'foo'", None),
    # bench.py
    "bench batch of one": (
        "bench",
        ["--batch-size", "1", "--models", "r18", "--methods", "mixup"],
        "--batch-size must be at least 2",
        None,
    ),
    "bench no steps": ("bench", ["--steps", "0", "--models", "r18", "--methods", "mixup"], "--steps", None),
    "bench unknown model": ("bench", ["--models", "nope"], "unknown model 'nope'", None),
    "bench group as override": ("bench", ["method=mixup"], "--methods", None),
    "bench unknown flag": ("bench", ["--frobnicate"], "is not a key=value override", None),
    # prepare_data.py
    "prepare missing cifar": (
        "prepare_data",
        ["check", "cifar100", "--root", "{scratch}"],
        "not found",
        None,
    ),
    "prepare unknown dataset": ("prepare_data", ["check", "nope"], "invalid choice", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_changes_nothing(name: str, tmp_path: Path) -> None:
    tool, arguments, expected, prepare = CASES[name]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if prepare is not None:
        prepare(scratch)
    arguments = [argument.replace("{scratch}", str(scratch)) for argument in arguments]
    if tool in ("train", "show_mix") and not any(a.startswith("runs_root=") for a in arguments):
        arguments = [*(TINY if tool == "train" else []), f"runs_root={scratch}/runs", *arguments]
    if tool == "show_mix":
        arguments.append(f"out={scratch}/out.png")
    before = _digest(scratch, REPO / "results")
    runs_before = _run_files(scratch)
    result = run_tool(tool, arguments)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0, result.stdout + result.stderr
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _digest(scratch, REPO / "results") == before, "a refused command changed a file"
    runs_after = _run_files(scratch)
    assert runs_after == runs_before, "a refused command made a (half-made) run directory"
    assert not (scratch / "pwned").exists(), "a checkpoint's pickle ran code"


def test_there_are_at_least_forty_cases_across_every_tool() -> None:
    assert len(CASES) >= 40
    assert {tool for tool, *_ in CASES.values()} == {"train", "table", "show_mix", "bench", "prepare_data"}
