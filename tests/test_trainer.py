"""The trainer end to end on the embedded dataset: run directory, resumption, skipping, failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixbench.atomic import load_checkpoint
from mixbench.config import ConfigError
from mixbench.data import build_loaders
from mixbench.engine import trainer as trainer_module
from mixbench.engine.build import input_size
from mixbench.engine.evaluate import evaluate
from mixbench.engine.runtime import Runtime
from mixbench.engine.trainer import RunFailed, train
from mixbench.methods.vanilla import Vanilla
from mixbench.metrics import median_last_k
from mixbench.rundir import RunDirectory, run_directory
from tests.helpers import REPO, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny steps: see tests/conftest.py

TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


def test_a_run_writes_the_whole_run_directory(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config([*tiny_overrides(runs_root, epochs=4, window=3), "method=mixup"])
    best_saved_at: list[int] = []
    save_best = RunDirectory.save_best

    def recording_save_best(self, state):
        best_saved_at.append(state["epoch"])
        save_best(self, state)

    monkeypatch.setattr(RunDirectory, "save_best", recording_save_best)
    summary = train(cfg)
    run_dir = run_directory(cfg)
    assert (
        run_dir
        == runs_root
        / "digits,image_size=8"
        / "r18,width=4"
        / "mixup"
        / "digits_quick,epochs=4,metric_window=3"
        / "seed0"
    )
    history = _history(run_dir)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    for record in history:
        assert {
            "lr",
            "train_loss",
            "top1",
            "top5",
            "test_loss",
            "seconds",
            "images_per_s",
            "train_lam",
        } <= set(record)
        assert 0 <= record["top1"] <= record["top5"] <= 100
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary
    assert saved["status"] == "complete" and saved["epochs_done"] == 4 and saved["metric_window"] == 3
    top1 = [record["top1"] for record in history]
    assert saved["median_last3_top1"] == pytest.approx(median_last_k(top1, 3))
    assert saved["best_top1"] == max(top1) and saved["last_top1"] == top1[-1]
    assert saved["params"] == sum(p.numel() for p in torch.nn.Module.parameters(_model_of(run_dir)))
    for key in ("wall_time_s", "train_images_per_s", "peak_memory_mb", "versions", "device", "git_commit"):
        assert key in saved
    assert saved["versions"]["torch"] == torch.__version__
    config_text = (run_dir / "config.yaml").read_text()
    assert "name: mixup" in config_text and "${" not in config_text  # resolved
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(run_dir / "checkpoint.pt")  # weights_only=True
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert not list(run_dir.glob(".*.tmp"))
    # best.pt: written exactly when the best online top-1 rose, holding the weights that scored it
    records = [(record["epoch"], record["top1"]) for record in history]
    rises = [epoch for i, (epoch, top) in enumerate(records) if all(top > t for _, t in records[:i])]
    assert best_saved_at == rises
    best = RunDirectory(run_dir).load_best()
    assert (best["epoch"], best["top1"]) == (saved["best_epoch"], saved["best_top1"])
    model = _model_of(run_dir)
    model.load_state_dict(best["model"])
    data = build_loaders(cfg.data, cfg.schedule.augment, 64, 500, input_size(cfg), torch.device("cpu"))
    assert evaluate(model, data.test, Runtime.cpu())["top1"] == pytest.approx(saved["best_top1"], abs=1e-9)


def _model_of(run_dir: Path) -> torch.nn.Module:
    from mixbench.models import build_model

    model = build_model("r18", num_classes=10, image_size=8, width=4)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    return model


def _short_run(runs_root: Path, *extra: str) -> list[str]:
    """The overrides of the module's short run: mixup, 2 epochs, a metric window of 1."""
    return [*tiny_overrides(runs_root, epochs=2, window=1), "method=mixup", *extra]


@pytest.fixture(scope="module")
def short_run_root(single_torch_thread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``runs_root`` holding the short run (seed 0), complete, trained once for the tests below; a test that
    changes it works on a copy (``_copy``)."""
    root = tmp_path_factory.mktemp("short_run") / "runs"
    train(compose_config(_short_run(root)))
    return root


def _copy(runs_root: Path, tmp_path: Path) -> Path:
    """A copy of ``runs_root`` (file times kept) under ``tmp_path``."""
    return Path(shutil.copytree(runs_root, tmp_path / "runs"))


@pytest.mark.xdist_group("trainer_short_run")
def test_same_seed_gives_the_same_run_and_another_seed_does_not(short_run_root: Path, tmp_path: Path) -> None:
    histories = [_without_timing(_history(run_directory(compose_config(_short_run(short_run_root)))))]
    for root, seed in ((tmp_path / "b", 0), (tmp_path / "c", 1)):
        cfg = compose_config(_short_run(root, f"seed={seed}"))
        train(cfg)
        histories.append(_without_timing(_history(run_directory(cfg))))
    assert histories[0] == histories[1]
    assert histories[0] != histories[2]


@pytest.mark.xdist_group("trainer_short_run")
def test_a_complete_run_is_skipped_and_force_redoes_it(short_run_root: Path, tmp_path: Path, capsys) -> None:
    overrides = _short_run(_copy(short_run_root, tmp_path))
    run_dir = run_directory(compose_config(overrides))
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()}
    assert run_dir / "checkpoint.pt" in before
    summary = train(compose_config(overrides))
    assert "complete, skipped" in capsys.readouterr().out
    assert summary["status"] == "complete"
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*") if path.is_file()} == before
    train(compose_config([*overrides, "force=true"]))
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns > before[run_dir / "checkpoint.pt"]


@pytest.mark.xdist_group("trainer_short_run")
def test_a_directory_of_another_configuration_is_refused_untouched(
    short_run_root: Path, tmp_path: Path
) -> None:
    overrides = _short_run(_copy(short_run_root, tmp_path))
    run_dir = run_directory(compose_config(overrides))
    config_path = run_dir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("lr: 0.1", "lr: 0.2"))  # as if the recipe changed
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    with pytest.raises(ConfigError, match="different configuration .*schedule.optimizer.lr.*force=true"):
        train(compose_config(overrides))
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


def test_a_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    runs_root: Path, monkeypatch
) -> None:
    real_step = Vanilla.training_step
    calls = {"n": 0}

    def step_that_diverges(self, model, x, y):
        calls["n"] += 1
        loss, logs = real_step(self, model, x, y)
        return (loss * float("nan") if calls["n"] > 30 else loss), logs  # digits: 21 steps per epoch

    monkeypatch.setattr(Vanilla, "training_step", step_that_diverges)
    monkeypatch.setattr(trainer_module, "FINITE_CHECK_EVERY", 5)
    cfg = compose_config([*tiny_overrides(runs_root, epochs=3, window=1), "method=vanilla"])
    with pytest.raises(RunFailed, match="non-finite .* epoch 2; the checkpoint of epoch 1 is kept"):
        train(cfg)
    run_dir = run_directory(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["message"]
    assert summary["epochs_done"] == 1
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_cli_non_finite_loss_exits_non_zero_with_one_line(runs_root: Path) -> None:
    """``python tools/train.py`` run in this process (tests/helpers/tools.py)."""
    result = run_tool(
        "train",
        [*tiny_overrides(runs_root, epochs=2, window=1), "method=vanilla", "schedule.optimizer.lr=1e30"],
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "non-finite" in errors[0] and "Traceback" not in result.stderr


def _start_cli(arguments: list[str]) -> subprocess.Popen:
    """``python tools/train.py <arguments>`` started in a fresh process, with one thread as this process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "train.py"), *arguments],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_for_epochs(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(_history(run_dir)) >= epochs:
            return
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint of epoch {epochs} in {run_dir}")


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """SIGKILL mid-epoch (twice, at different moments, the second time a resumed process) and resume: the
    same metrics as an uninterrupted run.  The killed runs are real ``python tools/train.py`` processes; the
    last resume runs the same script in this process (tests/helpers/tools.py).  A stateful method (AutoMix)
    killed at any moment: tests/test_robustness.py's killed sweep."""
    method, epochs, kills = "manifoldmix", 4, ((1, 0.3), (3, 0.05))
    reference_cfg = compose_config(
        [*tiny_overrides(tmp_path / "reference", epochs=epochs, window=2), f"method={method}"]
    )
    train(reference_cfg)
    expected = _without_timing(_history(run_directory(reference_cfg)))

    arguments = [*tiny_overrides(tmp_path / "killed", epochs=epochs, window=2), f"method={method}"]
    run_dir = run_directory(compose_config(arguments))
    for epochs_before_kill, delay in kills:
        process = _start_cli(arguments)
        _wait_for_epochs(run_dir, epochs_before_kill, process)
        time.sleep(delay)  # somewhere inside the next epoch (or while it writes its files)
        process.send_signal(signal.SIGKILL)
        process.wait()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "running" and summary["epochs_done"] < epochs
    result = run_tool("train", arguments)
    assert result.returncode == 0, result.stderr
    assert _without_timing(_history(run_dir)) == expected
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["median_last2_top1"] == pytest.approx(
        median_last_k([record["top1"] for record in expected], 2)
    )


def test_the_bf16_channels_last_path_runs_and_is_recorded(runs_root: Path) -> None:
    """The GPU path's autocast and memory format, exercised on the CPU (bf16 autocast exists there too)."""
    cfg = compose_config(
        [
            *tiny_overrides(runs_root, epochs=2, window=1),
            "method=manifoldmix",
            "precision=bf16",
            "channels_last=true",
        ]
    )
    summary = train(cfg)
    assert (
        summary["status"] == "complete"
        and summary["precision"] == "bf16"
        and summary["channels_last"] is True
    )
    assert all(0 <= record["top1"] <= 100 for record in _history(run_directory(cfg)))
