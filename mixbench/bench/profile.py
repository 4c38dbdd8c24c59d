"""Where a row's step time goes: a few steps under :mod:`torch.profiler`, summarised as the number of kernel
launches (CUDA) or operator calls (CPU) per step and the top entries by their own time.

On a GPU bound by launches rather than arithmetic (small images, small batches) the launch count explains a
method's cost better than its FLOPs: each launch costs a few microseconds of host time whatever its size.
``python tools/bench.py --profile DIR`` profiles every timed row after its timing (the profiled steps are not
timed) and writes ``DIR/<model>/<method>.txt``; the table gains a ``launches / step`` column, and on a GPU a
``GPU busy / step`` column: the kernels' own device time per step.  A step much longer than its busy time is
bound by the host issuing kernels, not by the GPU's arithmetic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mixbench.atomic import atomic_write_text

PROFILED_STEPS = 3
TOP_ENTRIES = 15


@dataclass
class StepProfile:
    """Launches (CUDA kernels, or CPU operator calls on a CPU) per step, the kernels' device time per step
    in ms (GPU only, else ``None``) and the top entries as text."""

    launches_per_step: float
    text: str
    busy_ms_per_step: float | None = None


def device_busy_ms(kernels, steps: int) -> float:
    """The kernels' own device time per step in ms: the sum over the profiler's averaged CUDA events of their
    self device time (microseconds), over ``steps``."""
    total_us = 0.0
    for event in kernels:
        own = getattr(event, "self_device_time_total", None)  # torch >= 2.4; older ones name it for CUDA
        total_us += own if own is not None else getattr(event, "self_cuda_time_total", 0.0)
    return total_us / 1000.0 / steps


def profile_steps(step, x: torch.Tensor, y: torch.Tensor, title: str) -> StepProfile:
    """Profile :data:`PROFILED_STEPS` calls of ``step(x, y)`` on ``x``'s device."""
    on_cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(PROFILED_STEPS):
            step(x, y)
        if on_cuda:
            torch.cuda.synchronize(x.device)
    events = profiler.key_averages()
    if on_cuda:
        kernels = [event for event in events if event.device_type == torch.autograd.DeviceType.CUDA]
        launches = sum(event.count for event in kernels)
        sort_by, what = "self_cuda_time_total", "CUDA kernels"
    else:
        kernels = [event for event in events if event.key.startswith("aten::")]
        launches = sum(event.count for event in kernels)
        sort_by, what = "self_cpu_time_total", "aten operator calls (no kernel launches on a CPU)"
    table = events.table(sort_by=sort_by, row_limit=TOP_ENTRIES, max_name_column_width=70)
    per_step = launches / PROFILED_STEPS
    busy = device_busy_ms(kernels, PROFILED_STEPS) if on_cuda else None
    busy_text = f"; GPU busy per step: {busy:.2f} ms" if busy is not None else ""
    summary = f"{PROFILED_STEPS} steps profiled; {what} per step: {per_step:.0f}{busy_text}"
    text = f"{title}\n{summary}\n\n{table}\n"
    return StepProfile(per_step, text, busy)


def spec_file_name(spec: str) -> str:
    """A file name for a row's spec: ``sumix[base=puzzlemix]`` -> ``sumix-base-puzzlemix``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", spec).strip("-")


def write_profile(profile_dir: Path, model: str, method: str, result: StepProfile) -> Path:
    """``profile_dir/<model>/<method>.txt`` (a variant's spec made a file name: ``sumix-base-puzzlemix``)."""
    path = profile_dir / model / f"{spec_file_name(method)}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(result.text, path)
    return path
