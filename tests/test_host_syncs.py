"""Host syncs: the counter counts every kind of read it claims to (and nothing done on the device), the
training step of every registered method reads the device only where listed below, ``TrainingStep`` adds no
read of its own, and the trainer's epoch loop adds only its documented per-epoch reads.

The per-method checks build each method as the trainer does (``build_model_and_method`` and
``build_training_step`` on a composed config: digits at 16 px, PreActResNet18 of width 8 -- the narrowest that
avoids torch 2.14's CPU heap bug of ``tests/test_method_model_matrix.py`` --, batch 4) and count on the CPU,
where the counter reports what would sync on an accelerator (see :mod:`mixbench.engine.host_syncs`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from mixbench.config import validate
from mixbench.data import build_loaders
from mixbench.engine import host_syncs
from mixbench.engine import trainer as trainer_module
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.host_syncs import (
    HostSyncCounter,
    HostSyncError,
    copies_host_data,
    copy_direction,
)
from mixbench.engine.runtime import resolve_runtime
from mixbench.engine.step import TrainingStep, build_training_step
from mixbench.engine.trainer import Trainer
from mixbench.methods import METHODS
from mixbench.methods.mixup import Mixup
from tests.helpers import compose_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py

HERE = Path(__file__).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
NEEDS_EXTERNAL_WEIGHTS = {
    name for name, cls in METHODS.items() if getattr(cls, "needs_external_weights", False)
}
TRAINABLE = sorted(set(METHODS) - NEEDS_EXTERNAL_WEIGHTS)
BATCH, SIZE, WIDTH, STEPS = 4, 16, 8, 2
# Methods whose step (with its defaults) reads the device on purpose: name -> (most reads per step, why).
# None does: a new read anywhere in a method's step fails test_a_methods_step_reads_only_what_is_listed.
READS_PER_STEP: dict[str, tuple[int, str]] = {}


def line_of(text: str) -> int:
    """The line of this file holding ``text`` (where a counted call is expected to be sited)."""
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


# ------------------------------------------------------------------------------------------- the counter


def test_each_kind_of_read_is_counted_once_at_its_line() -> None:
    t = torch.arange(3.0)
    with HostSyncCounter("cpu") as syncs:
        t.sum().item()  # read: item
        float(t[0])  # read: float
        int(t[1])  # read: int
        if t[2]:  # read: bool
            pass
        range(t[1].long())  # read: index
        t.tolist()  # read: tolist
        t.numpy()  # read: numpy
        repr(t)  # read: repr
        torch.equal(t, t)  # read: torch.equal
        t.allclose(t)  # read: allclose
        f"{t[0]:.1f}"  # read: format (through item, counted once)
        np.asarray(t)  # read: array (through numpy, counted once)
    expected = [
        ("item", "read: item"),
        ("__float__", "read: float"),
        ("__int__", "read: int"),
        ("__bool__", "read: bool"),
        ("__index__", "read: index"),
        ("tolist", "read: tolist"),
        ("numpy", "read: numpy"),
        ("__repr__", "read: repr"),
        ("equal", "read: torch.equal"),
        ("allclose", "read: allclose"),
        ("item", "read: format"),
        ("numpy", "read: array"),
    ]
    assert [(sync.kind, sync.site) for sync in syncs.syncs] == [
        (kind, f"{HERE}:{line_of(comment)}") for kind, comment in expected
    ]
    assert syncs.count == len(expected) and syncs.cuda_count is None  # no sync debug mode on a CPU


def test_host_data_placed_on_the_device_is_counted_and_host_tensors_are_not() -> None:
    t = torch.ones(2)
    with HostSyncCounter("cpu") as syncs:
        torch.tensor(0.5, device=t.device)  # placed: tensor
        torch.as_tensor([1.0, 2.0], device="cpu")  # placed: as_tensor
        torch.as_tensor(np.zeros(2), dtype=torch.float32, device=t.device)  # placed: NumPy data
        t.new_tensor([3.0])  # placed: new_tensor
        torch.tensor(0.5)  # a host tensor by intent: not counted
        torch.as_tensor(np.zeros(2))
        torch.as_tensor(t, device="cpu")  # already a tensor: nothing copied
    assert [sync.kind for sync in syncs.syncs] == [
        "tensor (host to device)",
        "as_tensor (host to device)",
        "as_tensor (host to device)",
        "new_tensor (host to device)",
    ]
    assert syncs.by_site() == {
        f"{HERE}:{line_of(f'# placed: {what}')}": 1
        for what in ("tensor", "as_tensor", "NumPy data", "new_tensor")
    }


def test_work_on_the_device_is_not_counted() -> None:
    x = torch.randn(4, 3, 8, 8)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with HostSyncCounter("cpu") as syncs:
        loss = torch.nn.functional.conv2d(x, w).relu().mean()
        loss.backward()
        torch.full((), 0.3, device=x.device)  # a fill, no copy
        torch.zeros(3).add_(1).clamp_(0, 0.5)
        y = x.to(torch.float64).cpu().to("cpu")  # moves within the CPU: no host/device to tell apart
        y.copy_(x)
        torch.where(x > 0, x, torch.zeros_like(x)).sum(dim=1)
        torch.randperm(4)[torch.arange(2)]
    assert syncs.count == 0, syncs.describe()


def test_operators_that_sync_inside_are_counted_at_their_line_and_their_sync_free_forms_are_not() -> None:
    t, index = torch.zeros(6), torch.tensor([1, 2])
    mask = torch.arange(6) > 2
    x = torch.randn(4, 3, requires_grad=True)
    with HostSyncCounter("cpu") as syncs:
        t[index] = 0.5  # inside: number through an index
        t[mask]  # inside: mask read
        torch.where(mask)  # inside: nonzero
        t.masked_select(mask)  # inside: masked_select
        torch.unique(index)  # inside: unique
        torch.arange(2).repeat_interleave(index)  # inside: repeat_interleave
        torch.bincount(index)  # inside: bincount
        t[mask] = torch.ones(3)  # inside: mask write
        x[x > 0].sum().backward()  # inside: mask forward and backward
        # the same work without a sync
        t.index_fill_(0, index, 0.5)
        t[mask] = 0.5  # masked_fill_ with the number
        t[1:3] = 0.5  # a slice: fill_
        t[index] = torch.ones(())  # a device tensor, no host number
        index.repeat_interleave(3)
        torch.arange(2).repeat_interleave(index, output_size=3)
        torch.where(mask, t, -t)
    number = "t[index] = number (host-to-device copy of the number)"
    mask_kind = "boolean-mask index (nonzero inside)"
    expected = [
        (number, "inside: number through an index"),
        (mask_kind, "inside: mask read"),
        ("nonzero (output size read on the host)", "inside: nonzero"),
        ("masked_select (output size read on the host)", "inside: masked_select"),
        ("unique (output size read on the host)", "inside: unique"),
        ("repeat_interleave (output size read on the host)", "inside: repeat_interleave"),
        ("bincount (output size read on the host)", "inside: bincount"),
        (mask_kind, "inside: mask write"),
        (mask_kind, "inside: mask forward and backward"),
        (mask_kind, "inside: mask forward and backward"),
    ]
    assert [(sync.kind, sync.site) for sync in syncs.syncs] == [
        (kind, f"{HERE}:{line_of(comment)}") for kind, comment in expected
    ]


def test_the_operator_watcher_can_be_left_out_and_leaves_no_mode_behind() -> None:
    t, index = torch.zeros(4), torch.tensor([1])
    with HostSyncCounter("cpu", watch_kernels=False) as syncs:
        t[index] = 0.5
    assert syncs.count == 0
    with pytest.raises(HostSyncError, match="number"), HostSyncCounter("cpu", raise_on_sync=True):
        t[index] = 0.5
    assert _get_current_dispatch_mode_stack() == []  # the mode is gone, even after the error


def test_the_patches_are_removed_on_exit_even_after_an_error() -> None:
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "to", "copy_")}
    factories = (torch.tensor, torch.as_tensor, torch.equal)
    with pytest.raises(ValueError), HostSyncCounter("cpu"):
        raise ValueError("inside")
    assert {name: getattr(torch.Tensor, name) for name in originals} == originals
    assert (torch.tensor, torch.as_tensor, torch.equal) == factories
    with HostSyncCounter("cpu") as syncs:
        pass
    torch.ones(1).item()  # after exit: not counted
    assert syncs.count == 0


def test_raise_on_sync_names_the_kind_and_the_line() -> None:
    with (
        pytest.raises(HostSyncError, match=rf"item at {HERE}:\d+") as error,
        HostSyncCounter("cpu", raise_on_sync=True),
    ):
        torch.ones(1).item()  # the read that raises
    assert f"{HERE}:{line_of('# the read that raises')}" in str(error.value)


def test_paused_blocks_and_other_threads_are_not_counted() -> None:
    t = torch.ones(1)
    with HostSyncCounter("cpu") as syncs:
        with syncs.paused():
            t.item()
        worker = threading.Thread(target=t.item)
        worker.start()
        worker.join()
        t.item()
    assert syncs.count == 1  # only the read of this thread outside the pause


def test_counts_accumulate_over_entries() -> None:
    syncs = HostSyncCounter("cpu")
    for _ in range(3):
        with syncs:
            torch.ones(1).item()
    assert syncs.count == 3


def test_a_cuda_run_counts_reads_of_cuda_tensors_only() -> None:
    """On a CUDA run a CPU tensor's value is host data: reading it waits for nothing (the CPU's rules would
    count it)."""
    with HostSyncCounter("cuda") as syncs:
        torch.ones(2).sum().item()
        torch.tensor(1.0)
        torch.ones(2).tolist()
    assert syncs.count == 0


@pytest.mark.parametrize(
    ("source", "target", "pinned", "non_blocking", "expected"),
    [
        ("cpu", "cuda", False, False, "host to device"),
        ("cpu", "cuda", False, True, "host to device"),  # pageable: through the driver's staging buffers
        ("cpu", "cuda", True, False, "host to device"),  # blocking: waits for the stream
        ("cpu", "cuda", True, True, None),  # pinned and asynchronous: runs ahead
        ("cuda", "cpu", False, False, "device to host"),
        ("cuda", "cpu", False, True, None),
        ("cuda", "cuda", False, False, None),
        ("cpu", "cpu", False, False, None),
    ],
)
def test_copy_directions(source: str, target: str, pinned: bool, non_blocking: bool, expected: str) -> None:
    assert copy_direction(source, target, pinned, non_blocking) == expected


def test_factory_rules_on_cuda_and_on_the_cpu() -> None:
    host = torch.ones(2)
    assert copies_host_data([1.0], "cuda", "cuda", placed=True)
    assert copies_host_data(host, "cuda", "cuda", placed=True)  # a CPU tensor copied to the GPU
    assert not copies_host_data([1.0], "cpu", "cuda", placed=False)  # stays on the host
    assert copies_host_data(np.ones(2), "cpu", "cpu", placed=True)
    assert not copies_host_data(np.ones(2), "cpu", "cpu", placed=False)
    assert not copies_host_data(host, "cpu", "cpu", placed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_copies_reads_and_the_sync_debug_mode_are_counted() -> None:
    device = torch.device("cuda")
    x = torch.ones(4, device=device)
    pinned = torch.ones(4).pin_memory()
    with HostSyncCounter(device) as syncs:
        x.sum().item()  # read and sync
        torch.ones(4).to(device)  # pageable host-to-device copy
        torch.tensor(0.5, device=device)  # host data to the device
        x.cpu()  # device-to-host copy
        pinned.to(device, non_blocking=True)  # asynchronous: not a sync
        torch.full((), 0.5, device=device) * x  # a fill and a kernel: not a sync
        with syncs.paused():
            torch.cuda.synchronize()
    assert [sync.kind for sync in syncs.syncs] == [
        "item",
        "to (host to device)",
        "tensor (host to device)",
        "cpu (device to host)",
    ]
    assert syncs.cuda_count is not None and syncs.cuda_count >= 3  # CUDA's own view of the same calls
    assert torch.cuda.get_sync_debug_mode() == 0  # restored


# --------------------------------------------------------------------------------- every method's step


def method_config(method: str, *extra: str) -> DictConfig:
    overrides = [f"method={method}", "model=r18", "data=digits", f"model.width={WIDTH}"]
    overrides += [f"data.image_size={SIZE}", f"schedule.batch_size={BATCH}", "device=cpu", *extra]
    cfg = compose_config(overrides)
    validate(cfg)
    return cfg


def built_step(cfg: DictConfig) -> TrainingStep:
    """The run's training step, built as the trainer builds it, from torch's seed 0 (the same each time)."""
    runtime = resolve_runtime(cfg)
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, runtime)
    return build_training_step(cfg, runtime, model, method, updates_per_epoch=STEPS)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=generator), torch.arange(BATCH) % 10


def the_steps_parts(step: TrainingStep, x: torch.Tensor, y: torch.Tensor) -> None:
    """What a training step must do, written out from its parts: the method's loss, backward, the optimizer
    (with the recipe's clipping), the after-step hook.  The reads of these are the method's and torch's."""
    loss, _ = step.method.training_step(step.model, x, y)
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if step.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.params, step.grad_clip)
    step.optimizer.step()
    step.method.after_step(step.model)


def record_host_made_tensors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record ``torch.tensor`` / ``torch.as_tensor`` calls that make a tensor from host data without naming a
    device: on an accelerator those are host tensors (a log built so must be copied to the device later)."""
    made: list[str] = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def recording(data, *args, __original=original, __name=name, **kwargs):
            if not isinstance(data, torch.Tensor) and kwargs.get("device") is None:
                caller = sys._getframe(1)
                while caller.f_code.co_filename == host_syncs.__file__:  # the counter's own wrapper
                    caller = caller.f_back
                made.append(f"torch.{__name} at {caller.f_code.co_filename}:{caller.f_lineno}")
            return __original(data, *args, **kwargs)

        monkeypatch.setattr(torch, name, recording)
    return made


# Methods that make a host tensor each step on purpose: name -> why.
HOST_MADE_TENSORS = {
    "comixup": "the Dirichlet prior's Gamma draws come from NumPy on the host and reach the device from "
    "pinned memory without waiting (mixbench/methods/comixup.py, dirichlet_prior)",
}


@pytest.mark.parametrize("method", TRAINABLE)
def test_a_methods_step_reads_only_what_is_listed_and_the_step_adds_nothing(
    method: str, record_property, monkeypatch
) -> None:
    cfg = method_config(method)
    parts, whole = built_step(cfg), built_step(cfg)  # identical objects and generators
    x, y = batch()
    with HostSyncCounter("cpu") as parts_syncs:
        for _ in range(STEPS):
            the_steps_parts(parts, x, y)
    host_made = record_host_made_tensors(monkeypatch)
    with HostSyncCounter("cpu") as step_syncs:
        for _ in range(STEPS):
            whole(x, y)
    per_step = step_syncs.count / STEPS
    record_property("host_syncs_per_step", per_step)
    record_property("host_sync_sites", step_syncs.describe())
    assert step_syncs.count == parts_syncs.count, (
        f"TrainingStep adds reads: {step_syncs.describe()} against {parts_syncs.describe()}"
    )
    assert not any(site.startswith("mixbench/engine/step.py") for site in step_syncs.by_site())
    if method in READS_PER_STEP:
        most, _ = READS_PER_STEP[method]
        assert per_step <= most, step_syncs.describe()
    else:
        assert step_syncs.count == 0, f"{method} reads the device: {step_syncs.describe()}"
    assert bool(host_made) == (method in HOST_MADE_TENSORS), host_made


@pytest.mark.parametrize("method", ["alignmixup", "alignmixup_ae"])
def test_the_official_sinkhorn_reads_nothing_and_the_converged_option_reads_only_its_flag(
    method: str,
) -> None:
    """On steps that all align features: the default (official) loop queues its iterations without a read;
    ``sinkhorn=converged``, which stops early, reads its 'all stopped' flag at most every 10th iteration."""
    x, y = batch()
    aligning = "method.input_mix_prob=0.0" if method == "alignmixup" else "method.levels=[feature]"
    for mode, most in (("official", 0), ("converged", 1000 // 10)):
        overrides = (aligning, f"method.sinkhorn={mode}")
        step = built_step(method_config(method, *overrides))
        with HostSyncCounter("cpu") as syncs:
            for _ in range(STEPS):
                step(x, y)
        assert syncs.count <= STEPS * most, syncs.describe()
        if mode == "official":
            assert syncs.count == 0, syncs.describe()
        else:
            assert syncs.count >= STEPS  # one check at least per aligning step
            assert {sync.kind for sync in syncs.syncs} == {"__bool__"}
            assert all(site.startswith("mixbench/methods/sinkhorn.py:") for site in syncs.by_site())


# --------------------------------------------------------------------------------------- the epoch loop


def test_the_epoch_loop_adds_only_its_documented_reads(tmp_path: Path, monkeypatch) -> None:
    """One epoch of ``Trainer._train_one_epoch`` with a method that reads once per step: the count is one per
    step plus the loop's finite checks (every FINITE_CHECK_EVERY steps and at the end) plus one read of the
    epoch's sums."""
    mixup_step = Mixup.training_step

    def reading_step(self, model, x, y):
        loss, logs = mixup_step(self, model, x, y)
        loss.detach().item()  # the method's one read per step
        return loss, logs

    monkeypatch.setattr(Mixup, "training_step", reading_step)
    check_every = 4  # the trainer's FINITE_CHECK_EVERY, lowered so that a short epoch has checks inside it
    monkeypatch.setattr(trainer_module, "FINITE_CHECK_EVERY", check_every)
    cfg = compose_config([*tiny_overrides(tmp_path, epochs=1, window=1), "method=mixup"])
    validate(cfg)
    runtime = resolve_runtime(cfg)
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, runtime)
    data = build_loaders(
        cfg.data,
        augment=cfg.schedule.augment,
        batch_size=int(cfg.schedule.batch_size),
        eval_batch_size=int(cfg.eval_batch_size),
        input_size=input_size(cfg),
        device=runtime.device,
        num_workers=0,
    )
    trainer = Trainer(cfg, runtime, tmp_path / "run", model, method, data)
    trainer._reseed(0)
    steps = len(data.train)
    assert steps > check_every and steps % check_every  # checks inside the epoch, and one at its end
    with HostSyncCounter(runtime.device) as syncs:
        trainer._train_one_epoch(0)
    checks = steps // check_every + 1
    sites = syncs.by_site()
    assert sites.pop(f"{HERE}:{line_of('# the method')}") == steps
    trainer_sites = {site.split(":")[0] for site in sites}
    assert trainer_sites == {"mixbench/engine/trainer.py"}, syncs.describe()
    assert sum(sites.values()) == checks + 1  # the finite checks and the epoch's sums
    assert syncs.count == steps + checks + 1
