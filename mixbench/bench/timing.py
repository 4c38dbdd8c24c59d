"""Benchmark rows: a configuration's training step timed through :class:`~mixbench.engine.step.TrainingStep`
(the trainer's own step; the benchmark has no copy of it), with its host syncs counted and its step times
interleaved with the other rows of the same model.

A row is first *prepared* (:func:`prepare_row`): its model, method and step are built by the trainer's
functions, ``warmup`` untimed steps run, then :data:`SYNC_COUNT_STEPS` more untimed steps inside a
:class:`~mixbench.engine.host_syncs.HostSyncCounter` (the row reports the syncs per counted step and where
they are, and on CUDA the syncs CUDA's sync debug mode reported), and its peak memory is read.  The prepared
rows of one model are then timed **round-robin** (:func:`time_round_robin`): each round times one step of
every row, each step alone (``torch.cuda.synchronize`` before and after on a GPU), and the order of the rows
rotates from round to round, so a change of the device's speed (other processes, clocks, caches) hits every
row alike instead of whichever row was being timed.  :func:`finish_row` then reads the median step time,
its interquartile range, and the ratio to vanilla as the median of the per-round ratios (each row's step
over vanilla's step of the same round: paired, so a drift between rounds cancels) with their interquartile
range, the spread a ratio must leave to be claimed.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

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

SYNC_COUNT_STEPS = 3  # untimed steps counted for host syncs after the warm-up (the count varies little)


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


@dataclass
class PreparedRow:
    """A row built and warmed up, ready to be timed: its step, its batch and the seconds timed so far."""

    row: BenchRow
    step: TrainingStep
    x: torch.Tensor
    y: torch.Tensor
    seconds: list[float] = field(default_factory=list)


def prepare_row(cfg: DictConfig, runtime: Runtime, warmup: int, steps: int) -> PreparedRow | BenchRow:
    """Build one configuration's step, run ``warmup`` untimed steps, count the host syncs of
    :data:`SYNC_COUNT_STEPS` more and read the peak memory.  A row that cannot run here (n/a, skipped,
    out of memory) comes back as a finished :class:`BenchRow` saying why."""
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
        cfg, runtime, model, method, updates_per_epoch=warmup + SYNC_COUNT_STEPS + steps
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
        with syncs:
            for _ in range(SYNC_COUNT_STEPS):
                step(x, y)
    except torch.cuda.OutOfMemoryError:
        del step, model, method
        row.status, row.note = "failed", f"failed: out of GPU memory at batch {cfg.schedule.batch_size}"
        return row
    row.peak_memory_mb = memory.peak_mb()
    row.host_syncs_per_step = syncs.count / SYNC_COUNT_STEPS
    row.host_sync_sites = {site: count / SYNC_COUNT_STEPS for site, count in syncs.by_site().items()}
    if syncs.cuda_count is not None:
        row.cuda_syncs_per_step = syncs.cuda_count / SYNC_COUNT_STEPS
    return PreparedRow(row, step, x, y)


def time_round_robin(prepared: list[PreparedRow], rounds: int) -> None:
    """``rounds`` rounds, each timing one step of every row; round ``r`` starts at row ``r mod n``."""
    for round_index in range(rounds):
        start = round_index % len(prepared)
        for entry in prepared[start:] + prepared[:start]:
            entry.seconds.append(timed_step(entry.step, entry.x, entry.y))


def finish_row(entry: PreparedRow, reference: PreparedRow | None) -> BenchRow:
    """The row's median step time and spread, and its ratio to ``reference`` (vanilla, timed in the same
    rounds) as the median and quartiles of the per-round ratios."""
    row, seconds = entry.row, entry.seconds
    row.step_ms = 1000.0 * statistics.median(seconds)
    row.step_ms_q1, row.step_ms_q3 = (1000.0 * value for value in quartiles(seconds))
    row.images_per_s = int(entry.x.shape[0]) / statistics.median(seconds)
    if reference is not None and len(reference.seconds) == len(seconds):
        ratios = [mine / theirs for mine, theirs in zip(seconds, reference.seconds, strict=True)]
        row.ratio_to_vanilla = 1.0 if entry is reference else statistics.median(ratios)
        row.ratio_q1, row.ratio_q3 = (1.0, 1.0) if entry is reference else quartiles(ratios)
    if not math.isfinite(float(entry.step.sums.loss)):
        row.note = "loss became non-finite during the timed steps"
    return row


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (``statistics.quantiles``, inclusive method; a single value for both)."""
    if len(values) == 1:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def bench_row(cfg: DictConfig, runtime: Runtime, steps: int, warmup: int) -> BenchRow:
    """One configuration on its own: prepared, then ``steps`` timed steps (no reference, no ratio)."""
    prepared = prepare_row(cfg, runtime, warmup, steps)
    if isinstance(prepared, BenchRow):
        return prepared
    time_round_robin([prepared], steps)
    return finish_row(prepared, None)


def timed_step(step: TrainingStep, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one step (bracketed by ``torch.cuda.synchronize`` on a GPU)."""
    on_cuda = x.device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(x.device)
    started = time.perf_counter()
    step(x, y)
    if on_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - started
