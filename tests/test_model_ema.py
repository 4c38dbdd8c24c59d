"""``ema=`` at the root: an EMA copy of the model for any method (mixbench.engine.model_ema).

The copy follows the learned methods' teacher exactly (the same schedule, buffers copied), is evaluated as
``ema`` (metrics ``ema_top1``, summary ``ema_*``), never changes what the online network learns, lives in the
method's state (checkpoint.pt, best.pt: a killed run resumes to the same numbers), is part of the run's
identity, reads nothing from the device, and is refused on methods that keep their own teacher.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mixbench.atomic import load_checkpoint
from mixbench.config import ConfigError, validate
from mixbench.engine.build import build_model_and_method
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.model_ema import EMA_LABEL, ModelEma
from mixbench.engine.runtime import Runtime, resolve_runtime
from mixbench.engine.step import build_training_step
from mixbench.engine.trainer import train
from mixbench.evaluation.runner import load_run
from mixbench.methods.ema import automix_momentum
from mixbench.methods.vanilla import Vanilla
from mixbench.rng import MixRandom
from mixbench.rundir import RunDirectory, identity_mismatch, run_directory, run_identity
from tests.helpers import compose_config, tiny_overrides
from tests.helpers.tools import run_tool
from tests.test_trainer import _history, _start_cli, _wait_for_epochs, _without_timing

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny steps: see tests/conftest.py

SCHEDULE = {"momentum": 0.9, "end_momentum": 0.99, "constant_fraction": 0.5}  # moves within 3 tiny epochs
EMA = "ema={momentum:0.9,end_momentum:0.99,constant_fraction:0.5}"


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_the_copy_is_the_learned_methods_ema_step_with_buffers_copied() -> None:
    model = tiny_net()
    method = ModelEma(Vanilla(), **SCHEDULE)
    method.setup(model, 10)
    method.bind(MixRandom(0), total_steps=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8)
    for step in range(6):  # three steps at the constant momentum, three on the cosine
        before = [p.detach().clone() for p in method.ema.module.parameters()]
        loss, _ = method.training_step(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(model)
        m = automix_momentum(step, 10, 0.9, 0.99, 0.5)
        for old, new, online in zip(before, method.ema.module.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(new, m * old + (1 - m) * online.detach())
        for ema_buffer, buffer in zip(method.ema.module.buffers(), model.buffers(), strict=True):
            assert torch.equal(ema_buffer, buffer)  # BatchNorm statistics copied, as the teachers do
    assert int(method.ema.num_updates) == 6
    networks = method.eval_models(model)
    assert list(networks) == ["", EMA_LABEL] and networks[""] is model
    assert method.param_groups(0.1, 0.0) == []  # the copy is frozen: it joins no optimizer group
    assert not any(p.requires_grad for p in method.ema.parameters())
    assert {"ema.num_updates", "ema.module.0.weight", "ema.module.1.running_mean"} <= set(method.state_dict())


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{momentum:0.999}", "ema must be null or name momentum, end_momentum, constant_fraction"),
        ("{momentum:0.9,end_momentum:0.99,constant_fraction:0.1,extra:1}", "ema must be null or name"),
        ("0.999", "ema must be null or name"),
        ("{momentum:0.99,end_momentum:0.9,constant_fraction:0.1}", "momentum <= end_momentum <= 1"),
        ("{momentum:0.9,end_momentum:1.5,constant_fraction:0.1}", "momentum <= end_momentum <= 1"),
        ("{momentum:0.9,end_momentum:0.99,constant_fraction:2}", "constant_fraction <= 1"),
        ("{momentum:fast,end_momentum:0.99,constant_fraction:0.1}", "ema.momentum must be a finite number"),
    ],
)
def test_a_bad_schedule_is_refused_in_one_line(value: str, problem: str) -> None:
    cfg = compose_config(["data=digits", f"ema={value}"])
    with pytest.raises(ConfigError, match=problem) as refused:
        validate(cfg)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (["method=automix"], "keeps its own EMA teacher"),
        (["method=sumix", "method.base=automix"], "keeps its own EMA teacher"),
        (["method=alignmixup_ae"], "evaluates a network of its own"),
    ],
)
def test_a_method_with_its_own_teacher_or_network_is_refused(
    overrides: list[str], problem: str, tmp_path: Path
) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path), *overrides, EMA])
    validate(cfg)
    with pytest.raises(ConfigError, match=f"^ema: method .* {problem}.*; drop ema=$"):
        build_model_and_method(cfg, resolve_runtime(cfg))


def test_the_step_with_the_copy_reads_nothing_from_the_device() -> None:
    cfg = compose_config(["method=mixup", "data=digits", "model.width=8", "data.image_size=16", EMA])
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, Runtime.cpu())
    step = build_training_step(cfg, Runtime.cpu(), model, method, updates_per_epoch=2)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4)
    with HostSyncCounter("cpu") as syncs:
        for _ in range(2):
            step(x, y)
    assert syncs.count == 0, syncs.describe()
    assert int(method.ema.num_updates) == 2


def test_a_run_with_the_copy_trains_as_without_and_reports_and_keeps_it(tmp_path: Path) -> None:
    plain_cfg = compose_config([*tiny_overrides(tmp_path / "plain"), "method=mixup"])
    ema_cfg = compose_config([*tiny_overrides(tmp_path / "ema"), "method=mixup", EMA])
    train(plain_cfg)
    summary = train(ema_cfg)
    plain, with_ema = _history(run_directory(plain_cfg)), _history(run_directory(ema_cfg))
    for before, after in zip(_without_timing(plain), _without_timing(with_ema), strict=True):
        assert {key: value for key, value in after.items() if not key.startswith("ema_")} == before
        assert {"ema_top1", "ema_top5", "ema_test_loss"} <= set(after)
    assert summary["evaluated"] == ["online", "ema"]
    assert summary["ema_median_last2_top1"] is not None
    assert summary["ema_last_top1"] == with_ema[-1]["ema_top1"]
    # part of the identity: a run with the copy is not the run without it
    config = RunDirectory(run_directory(ema_cfg)).read_config()
    assert config["ema"] == SCHEDULE
    assert run_identity(config).configuration != run_identity(plain_cfg).configuration
    assert set(identity_mismatch(config, plain_cfg)) == {f"ema.{key}" for key in SCHEDULE}
    # the copy is in checkpoint.pt and best.pt, with the update count of their epochs
    run_dir = RunDirectory(run_directory(ema_cfg))
    steps_per_epoch = int(load_checkpoint(run_dir.checkpoint_file)["method"]["ema.num_updates"]) // 3
    best = run_dir.load_best()
    assert int(best["method"]["ema.num_updates"]) == steps_per_epoch * best["epoch"]
    # and tools/evaluate.py, which builds the run's method, evaluates it as the trainer did
    loaded = load_run(run_dir, ema_cfg, "last", num_workers=0)
    assert list(loaded.networks) == ["online", "ema"]


@pytest.mark.slow
def test_a_killed_run_with_the_copy_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """SIGKILL inside the second epoch of a real ``python tools/train.py`` process, then resume: the same
    online and EMA numbers, and the same EMA weights, as an uninterrupted run."""
    arguments = [*tiny_overrides(tmp_path / "reference"), "method=vanilla", EMA]
    reference_cfg = compose_config(arguments)
    train(reference_cfg)
    expected = _without_timing(_history(run_directory(reference_cfg)))

    arguments = [*tiny_overrides(tmp_path / "killed"), "method=vanilla", EMA]
    run_dir = run_directory(compose_config(arguments))
    process = _start_cli(arguments)
    _wait_for_epochs(run_dir, 1, process)
    time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((run_dir / "summary.json").read_text())["epochs_done"] < 3
    result = run_tool("train", arguments)
    assert result.returncode == 0, result.stderr
    assert _without_timing(_history(run_dir)) == expected
    resumed = load_checkpoint(run_dir / "checkpoint.pt")["method"]
    reference = load_checkpoint(run_directory(reference_cfg) / "checkpoint.pt")["method"]
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)
