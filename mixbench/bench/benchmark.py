"""A whole benchmark: every requested row, step times relative to vanilla on the same model (rows timed
round-robin, ratios paired by round, with their spreads), and the header's facts (device and commit from
:mod:`mixbench.provenance`, as in a run's ``summary.json``)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from mixbench.bench.data_path import compare_loops
from mixbench.bench.external_weights import RANDOM_WEIGHTS_NOTE, write_random_adain_files
from mixbench.bench.memory import memory_measured
from mixbench.bench.passes import floor_seconds, prepare_units, units_needed
from mixbench.bench.profile import profile_steps, write_profile
from mixbench.bench.request import (
    REFERENCE_METHOD,
    BenchRequest,
    compose_row_configs,
    data_classes,
    needs_external_weights,
)
from mixbench.bench.results import BenchReport, BenchRow, UnitTiming
from mixbench.bench.timing import (
    PreparedRow,
    bench_row,
    bootstrap_interval,
    finish_row,
    prepare_row,
    time_round_robin,
)
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.runtime import Runtime
from mixbench.provenance import provenance

UNSTABLE_SPREAD = 0.15  # vanilla's interquartile range over its mean step beyond which the header warns


def host_syncs_counted(device: torch.device, compiled: bool = False) -> str:
    """What the host syncs column counts on ``device``, worded for the report."""
    steps = "per step, over 3 untimed steps after the warm-up (mixbench/engine/host_syncs.py)"
    operators = (
        " (not under compile: the watcher would disturb the compiled graphs)"
        if compiled
        else "; and the operators that sync inside (nonzero, boolean-mask indexing, unique, "
        "t[index] = number, ...: mixbench/engine/kernel_syncs.py)"
    )
    if device.type == "cuda":
        return (
            "reads of CUDA tensors on the host (item, float, int, bool, tolist, numpy, ...) and blocking or "
            f"pageable copies between host and device{operators}, {steps}; CUDA syncs: the warnings of "
            "torch.cuda.set_sync_debug_mode('warn') over the same steps, CUDA's own view"
        )
    return (
        "reads of tensor values on the host (item, float, int, bool, tolist, numpy, ...) and host data "
        f"placed on the device by torch.tensor/as_tensor(..., device=){operators}, {steps}: what would sync "
        "on an accelerator"
    )


def run_benchmark(
    request: BenchRequest, runtime: Runtime, log: Callable[[str], None] | None = None
) -> BenchReport:
    """Measure every row of ``request``, model by model: its rows prepared one after the other, then timed
    round-robin (:mod:`mixbench.bench.timing`); ratios are to vanilla on the same model, paired by round."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if request.random_adain and not request.stand_in_weights:  # the stand-in files live as long as the run
        with tempfile.TemporaryDirectory(prefix="mixbench-random-adain-") as folder:
            files = write_random_adain_files(Path(folder), data_classes(request))
            return run_benchmark(replace(request, stand_in_weights=files), runtime, log)
    configs = compose_row_configs(request)
    # the tree as it was when the run began: the profiles written below must not read as uncommitted changes
    facts = provenance(runtime.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # One untimed vanilla step first: one-off process costs (thread pools, kernel caches, the CUDA context)
    # would otherwise land in the first row's memory.
    bench_row(configs[request.models[0], REFERENCE_METHOD], runtime, steps=1, warmup=1)
    started_at = time.strftime("%Y-%m-%d %H:%M")
    rows: list[BenchRow] = []
    spreads: list[float] = []
    units: list[UnitTiming] = []
    for model in request.models:
        rows += _model_rows(model, request, configs, runtime, log, spreads, units)
    loops = []
    if request.loop_windows:
        for model in request.models:
            log(f"{model}: the trainer's loop against a bare loop, {request.loop_windows} windows each")
            loop = compare_loops(
                configs[model, REFERENCE_METHOD],
                runtime,
                request.loop_window,
                request.loop_windows,
                warmup=max(request.warmup, 1),
            )
            log(f"{model}: bare {loop.bare_ms:.1f} ms, trainer {loop.trainer_ms:.1f} ms per step")
            loops.append(loop)
    first = configs[request.models[0], request.methods[0]]
    header = {
        "device": facts.device,
        "torch": torch.__version__,
        "precision": "bf16 autocast" if runtime.autocast_dtype is not None else "fp32",
        "channels_last": str(runtime.channels_last).lower(),
        "compile": f"true (mode {runtime.compile_mode})" if runtime.compile else "false",
        "batch size": str(request.batch_size),
        "image size": f"{input_size(first)} px",
        "data": f"{request.data} ({int(first.data.num_classes)} classes, synthetic)",
        "optimizer": f"{first.schedule.optimizer.name} (schedule {first.schedule.name})",
        "steps timed": f"{request.steps} per row, round-robin, after {request.warmup} warm-up",
        "date": started_at,
        "git commit": facts.commit_text,
    }
    if runtime.device.type == "cpu" and load is not None:  # other processes share the cores' time
        header["load average (1 min)"] = f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    if request.overrides:
        header["overrides"] = " ".join(request.overrides)
    if spreads and max(spreads) > UNSTABLE_SPREAD:
        header["warning"] = (
            f"vanilla's step times spread by {100 * max(spreads):.0f}% of their mean (interquartile "
            "range): the device's speed varied during the run (other processes?); the paired ratios and "
            "their spreads still hold, the absolute step times less so"
        )
    return BenchReport(
        rows,
        facts.device,
        facts.device_slug,
        header,
        memory_measured(runtime.device),
        host_syncs_counted(runtime.device, runtime.compile),
        loops,
        units,
    )


def _model_rows(
    model: str,
    request: BenchRequest,
    configs: dict[tuple[str, str], DictConfig],
    runtime: Runtime,
    log: Callable[[str], None],
    spreads: list[float],
    unit_timings: list[UnitTiming],
) -> list[BenchRow]:
    """One model's rows in the requested order (vanilla first): prepared, timed round-robin with the pass
    units their floors need (:mod:`mixbench.bench.passes`; eager runs only), finished."""
    results: list[PreparedRow | BenchRow] = []
    for method in request.methods:
        prepared = prepare_row(configs[model, method], runtime, request.warmup, request.steps, method)
        results.append(prepared)
        log(f"{model} {method}: " + ("prepared" if isinstance(prepared, PreparedRow) else prepared.note))
    timed = [entry for entry in results if isinstance(entry, PreparedRow)]
    reference = results[0] if isinstance(results[0], PreparedRow) else None  # vanilla comes first
    units = []
    floors = reference is not None and not runtime.compile  # the units are eager: no floors for compiled rows
    needed = units_needed([entry.row.passes for entry in timed]) if floors else []
    if needed:
        try:
            torch.manual_seed(int(configs[model, REFERENCE_METHOD].seed))
            network, _ = build_model_and_method(configs[model, REFERENCE_METHOD], runtime)
            units = prepare_units(needed, network, runtime, reference.x, reference.y, request.warmup)
            log(f"{model}: pass units {', '.join(needed)} prepared")
        except torch.cuda.OutOfMemoryError:  # the rows stand; only their floors are lost
            floors, units = False, []
            log(f"{model}: out of GPU memory for the pass units: no floors for this model")
    if timed:
        log(f"{model}: timing {len(timed)} rows, {len(units)} pass units round-robin, {request.steps} rounds")
        time_round_robin([*timed, *units], request.steps)
        if request.profile_dir is not None:
            for entry in timed:
                title = f"{model} {entry.row.method} on {runtime.device} (tools/bench.py --profile)"
                result = profile_steps(entry.step, entry.x, entry.y, title)
                entry.row.launches_per_step = result.launches_per_step
                entry.row.gpu_busy_ms_per_step = result.busy_ms_per_step
                path = write_profile(request.profile_dir, model, entry.row.method, result)
                log(f"{model} {entry.row.method}: profile in {path}")
    rows = [finish_row(entry, reference) if isinstance(entry, PreparedRow) else entry for entry in results]
    if floors:
        unit_seconds = {entry.unit: entry.seconds for entry in units}
        for entry in timed:
            if entry.row.passes is not None:
                seconds = floor_seconds(entry.row.passes, reference.seconds, unit_seconds)
                entry.row.floor = sum(seconds) / sum(reference.seconds)
                entry.row.floor_low, entry.row.floor_high = bootstrap_interval(seconds, reference.seconds)
        for entry in units:
            low, high = bootstrap_interval(entry.seconds, reference.seconds)
            ratio = sum(entry.seconds) / sum(reference.seconds)
            ms = 1000.0 * sum(entry.seconds) / len(entry.seconds)
            unit_timings.append(UnitTiming(model, entry.unit, ms, ratio, low, high))
    vanilla = rows[0]
    if vanilla.step_ms:
        spread = (vanilla.step_ms_q3 - vanilla.step_ms_q1) / vanilla.step_ms
        spreads.append(spread)
        vanilla.note = (
            f"its own steps' interquartile range: {vanilla.step_ms_q1:.1f}–{vanilla.step_ms_q3:.1f} ms "
            f"({100 * spread:.0f}% of the mean)"
        )
    for row in rows:
        if row.status == "ok" and request.stand_in_weights and needs_external_weights(row.method):
            row.note = RANDOM_WEIGHTS_NOTE
        if row.step_ms is not None:
            log(f"{model} {row.method}: {row.step_ms:.1f} ms, × vanilla {row.ratio_to_vanilla:.2f}")
    return rows
