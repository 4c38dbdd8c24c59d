"""A whole benchmark: every requested row, step times relative to vanilla on the same model, vanilla re-timed
as a check that the device kept its speed, and the header's facts (device and commit from
:mod:`mixbench.provenance`, as in a run's ``summary.json``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from mixbench.bench.memory import memory_measured
from mixbench.bench.request import REFERENCE_METHOD, BenchRequest, compose_row_configs
from mixbench.bench.results import BenchReport, BenchRow
from mixbench.bench.timing import bench_row
from mixbench.engine.build import input_size
from mixbench.engine.runtime import Runtime
from mixbench.provenance import provenance

UNSTABLE_DRIFT = 0.15  # vanilla re-timed at the end differing by more than this marks the run as unreliable


def host_syncs_counted(device: torch.device) -> str:
    """What the host syncs column counts on ``device``, worded for the report."""
    steps = "per step, over up to 3 untimed steps after the timed ones (mixbench/engine/host_syncs.py)"
    if device.type == "cuda":
        return (
            "reads of CUDA tensors on the host (item, float, int, bool, tolist, numpy, ...) and blocking or "
            f"pageable copies between host and device, {steps}; CUDA syncs: the warnings of "
            "torch.cuda.set_sync_debug_mode('warn') over the same steps, which also see syncs inside kernels "
            "(nonzero, boolean masks)"
        )
    return (
        "reads of tensor values on the host (item, float, int, bool, tolist, numpy, ...) and host data "
        f"placed on the device by torch.tensor/as_tensor(..., device=), {steps}: what would sync on an "
        "accelerator; "
        "syncs inside kernels (nonzero, boolean masks) are not seen on a CPU"
    )


def run_benchmark(
    request: BenchRequest, runtime: Runtime, log: Callable[[str], None] | None = None
) -> BenchReport:
    """Measure every row of ``request``; ratios are to vanilla on the same model."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    configs = compose_row_configs(request)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # One untimed vanilla step first: one-off process costs (thread pools, kernel caches, the CUDA context)
    # would otherwise land in the first row's time and memory.
    bench_row(configs[request.models[0], REFERENCE_METHOD], runtime, steps=1, warmup=1)
    started_at = time.strftime("%Y-%m-%d %H:%M")
    rows: list[BenchRow] = []
    drifts: list[float] = []
    for model in request.models:
        model_rows = []
        for method in request.methods:
            row = bench_row(configs[model, method], runtime, request.steps, request.warmup)
            model_rows.append(row)
            timing = f"{row.step_ms:.1f} ms" if row.step_ms is not None else row.note
            log(f"{model} {method}: {timing}")
        reference = model_rows[0]  # vanilla comes first
        for row in model_rows:
            if row.step_ms is not None and reference.step_ms is not None:
                row.ratio_to_vanilla = row.step_ms / reference.step_ms
        if len(model_rows) > 1 and reference.step_ms is not None:
            drifts.append(
                _retime_reference(reference, configs[model, REFERENCE_METHOD], runtime, request, log)
            )
        rows += model_rows
    facts = provenance(runtime.device)
    first = configs[request.models[0], request.methods[0]]
    header = {
        "device": facts.device,
        "torch": torch.__version__,
        "precision": "bf16 autocast" if runtime.autocast_dtype is not None else "fp32",
        "channels_last": str(runtime.channels_last).lower(),
        "compile": str(runtime.compile).lower(),
        "batch size": str(request.batch_size),
        "image size": f"{input_size(first)} px",
        "data": f"{request.data} ({int(first.data.num_classes)} classes, synthetic)",
        "optimizer": f"{first.schedule.optimizer.name} (schedule {first.schedule.name})",
        "steps timed": f"{request.steps} after {request.warmup} warm-up",
        "date": started_at,
        "git commit": facts.commit_text,
    }
    if runtime.device.type == "cpu" and load is not None:  # other processes share the cores' time
        header["load average (1 min)"] = f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    if request.overrides:
        header["overrides"] = " ".join(request.overrides)
    if drifts and max(abs(drift) for drift in drifts) > UNSTABLE_DRIFT:
        worst = max(drifts, key=abs)
        header["warning"] = (
            f"vanilla re-timed after the other methods differs by {100 * worst:+.0f}%: the device's speed "
            "changed during the run (other processes?), so the step times and ratios are not reliable"
        )
    return BenchReport(
        rows,
        facts.device,
        facts.device_slug,
        header,
        memory_measured(runtime.device),
        host_syncs_counted(runtime.device),
    )


def _retime_reference(
    reference: BenchRow, cfg: DictConfig, runtime: Runtime, request: BenchRequest, log: Callable[[str], None]
) -> float:
    """Time vanilla again after the model's other rows; note it on vanilla's row and return the relative
    change, a check that the device kept its speed while the rows were timed."""
    again = bench_row(cfg, runtime, request.steps, request.warmup)
    drift = again.step_ms / reference.step_ms - 1.0
    reference.note = f"re-timed after the other methods: {again.step_ms:.1f} ms ({100 * drift:+.0f}%)"
    log(f"{reference.model} vanilla again: {again.step_ms:.1f} ms")
    return drift
