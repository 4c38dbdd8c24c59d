"""One benchmark row: a configuration's training step timed through
:class:`~mixbench.engine.step.TrainingStep` (the trainer's own step; the benchmark has no copy of it), with
its host syncs counted.

The row's model, method and step are built by the trainer's functions; ``warmup`` untimed steps run first,
then ``steps`` steps each timed alone (``torch.cuda.synchronize`` before and after on a GPU), then
``min(steps, SYNC_COUNT_STEPS)`` more steps inside a :class:`~mixbench.engine.host_syncs.HostSyncCounter`:
the row reports the syncs per counted step, where they are, and on CUDA the syncs CUDA's sync debug mode
reported.  The counted steps are not timed, so neither the counter's Python wrappers nor the debug mode
cost anything in the step times.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from omegaconf import DictConfig

from mixbench.bench.memory import PeakMemory
from mixbench.bench.results import BenchRow
from mixbench.config import ConfigError
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.runtime import Runtime
from mixbench.engine.step import TrainingStep, build_training_step
from mixbench.methods import METHODS
from mixbench.models import StageUnavailableError

SYNC_COUNT_STEPS = 3  # steps counted for host syncs after the timed ones (the count varies little per step)


def synthetic_batch(cfg: DictConfig, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised image batch of the config's size and class count, already on the device."""
    size, batch = input_size(cfg), int(cfg.schedule.batch_size)
    device = runtime.device
    mean = torch.tensor(list(cfg.data.mean), device=device).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std), device=device).view(1, -1, 1, 1)
    x = (torch.rand(batch, 3, size, size, device=device) - mean) / std
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, int(cfg.data.num_classes), (batch,), device=device)
    return x, y


def bench_row(cfg: DictConfig, runtime: Runtime, steps: int, warmup: int) -> BenchRow:
    """Time ``steps`` training steps of one configuration after ``warmup`` untimed ones."""
    model_name, method_name = str(cfg.model.name), str(cfg.method.name)
    method_class = METHODS[method_name]
    memory = PeakMemory(runtime.device)
    memory.start()
    torch.manual_seed(int(cfg.seed))
    try:
        model, method = build_model_and_method(cfg, runtime)
    except ConfigError as error:
        if isinstance(error.__cause__, StageUnavailableError):
            return BenchRow(model_name, method_name, "n/a", note=f"n/a: {error.__cause__}")
        if getattr(method_class, "needs_external_weights", False):
            reason = str(error.__cause__ or error).split(": ", 1)[0]
            return BenchRow(model_name, method_name, "skipped", note=f"skipped: {reason}")
        raise
    step = build_training_step(
        cfg, runtime, model, method, updates_per_epoch=warmup + steps + SYNC_COUNT_STEPS
    )
    x, y = synthetic_batch(cfg, runtime)
    row = BenchRow(
        model_name,
        method_name,
        "ok",
        model_params=sum(p.numel() for p in model.parameters()),
        method_params=sum(p.numel() for p in method.parameters() if p.requires_grad),
    )
    syncs = HostSyncCounter(runtime.device)
    try:
        for _ in range(warmup):
            step(x, y)
        seconds = [_timed(step, x, y) for _ in range(steps)]
        counted = min(steps, SYNC_COUNT_STEPS)
        with syncs:
            for _ in range(counted):
                step(x, y)
        loss_sum = step.sums.loss
    except torch.cuda.OutOfMemoryError:
        row.status, row.note = "failed", f"failed: out of GPU memory at batch {cfg.schedule.batch_size}"
        return row
    finally:
        peak = memory.peak_mb()
        del step, model, method
    row.step_ms = 1000.0 * statistics.median(seconds)
    row.images_per_s = int(cfg.schedule.batch_size) / statistics.median(seconds)
    row.peak_memory_mb = peak
    row.host_syncs_per_step = syncs.count / counted
    row.host_sync_sites = {site: count / counted for site, count in syncs.by_site().items()}
    if syncs.cuda_count is not None:
        row.cuda_syncs_per_step = syncs.cuda_count / counted
    if not math.isfinite(float(loss_sum)):
        row.note = "loss became non-finite during the timed steps"
    return row


def _timed(step: TrainingStep, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one step (bracketed by ``torch.cuda.synchronize`` on a GPU)."""
    on_cuda = x.device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    step(x, y)
    if on_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - started
