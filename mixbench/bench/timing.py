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
row alike instead of whichever row was being timed.  :func:`finish_row` then reads the mean step time (what
a run pays per step: methods that draw a branch per step -- AlignMixup's input or feature mix, a
Switch's child, StyleMix's prob -- cost different amounts on different steps, and a median would report the
commonest branch) with the quartiles of the steps, and the ratio to vanilla as the ratio of the two rows'
totals over the same rounds (paired: a drift between rounds scales both) with a 90% bootstrap interval over
the rounds (:data:`BOOTSTRAP_RESAMPLES` resamples, a fixed seed): the uncertainty a ratio must leave to be
claimed.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from mixbench.bench.memory import PeakMemory, minor_page_faults
from mixbench.bench.passes import TimedUnit
from mixbench.bench.results import BenchRow
from mixbench.config import ConfigError
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.runtime import Runtime
from mixbench.engine.step import TrainingStep, build_training_step
from mixbench.methods import METHODS
from mixbench.methods.solver_graph import replay_summary
from mixbench.models import StageUnavailableError

BOOTSTRAP_RESAMPLES = 2000  # resamples of the rounds for the ratio's interval
INTERVAL = (0.05, 0.95)  # its lower and upper quantiles
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
    page_faults: list[int] = field(default_factory=list)  # minor page faults of each timed step


def prepare_row(
    cfg: DictConfig, runtime: Runtime, warmup: int, steps: int, label: str | None = None
) -> PreparedRow | BenchRow:
    """Build one configuration's step, run ``warmup`` untimed steps, count the host syncs of
    :data:`SYNC_COUNT_STEPS` more and read the peak memory.  A row that cannot run here (n/a, skipped,
    out of memory) comes back as a finished :class:`BenchRow` saying why.  The row is named ``label``
    (a variant's spec, e.g. ``sumix[base=puzzlemix]``), the method's name by default."""
    model_name, method_name = str(cfg.model.name), label or str(cfg.method.name)
    method_class = METHODS[str(cfg.method.name)]
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
        passes=method.passes(),
    )
    syncs = HostSyncCounter(runtime.device, watch_kernels=not runtime.compile)  # a dispatch mode: eager only
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


def time_round_robin(prepared: Sequence[PreparedRow | TimedUnit], rounds: int) -> None:
    """``rounds`` rounds, each timing one step of every row; round ``r`` starts at row ``r mod n``."""
    for round_index in range(rounds):
        start = round_index % len(prepared)
        for entry in prepared[start:] + prepared[:start]:
            faults_before = minor_page_faults()
            entry.seconds.append(timed_step(entry.step, entry.x, entry.y))
            if faults_before is not None:
                entry.page_faults.append(minor_page_faults() - faults_before)


def finish_row(entry: PreparedRow, reference: PreparedRow | None) -> BenchRow:
    """The row's mean step time and the quartiles of its steps, and its ratio to ``reference`` (vanilla,
    timed in the same rounds): the ratio of their totals with its bootstrap interval over the rounds."""
    row, seconds = entry.row, entry.seconds
    row.step_ms = 1000.0 * statistics.fmean(seconds)
    row.step_ms_q1, row.step_ms_q3 = (1000.0 * value for value in quartiles(seconds))
    row.images_per_s = int(entry.x.shape[0]) / statistics.fmean(seconds)
    if entry.page_faults:
        row.page_faults_per_step = statistics.fmean(entry.page_faults)
    if reference is not None and len(reference.seconds) == len(seconds):
        if entry is reference:
            row.ratio_to_vanilla, row.ratio_low, row.ratio_high = 1.0, 1.0, 1.0
        else:
            row.ratio_to_vanilla = sum(seconds) / sum(reference.seconds)
            row.ratio_low, row.ratio_high = bootstrap_interval(seconds, reference.seconds)
    notes = [row.note, replay_summary(entry.step.method.solver_graphs())]
    if not math.isfinite(float(entry.step.sums.loss)):
        notes.append("loss became non-finite during the timed steps")
    row.note = "; ".join(note for note in notes if note)
    return row


def bootstrap_interval(mine: list[float], theirs: list[float]) -> tuple[float, float]:
    """The :data:`INTERVAL` quantiles of ``sum(mine) / sum(theirs)`` over rounds resampled with replacement
    (pairs kept together; seeded, so the same timings give the same interval)."""
    generator = random.Random(0)
    rounds = len(mine)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picks = [generator.randrange(rounds) for _ in range(rounds)]
        ratios.append(sum(mine[i] for i in picks) / sum(theirs[i] for i in picks))
    ratios.sort()
    low, high = (ratios[round(q * (BOOTSTRAP_RESAMPLES - 1))] for q in INTERVAL)
    return low, high


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
