"""Peak memory of one benchmark row.

On a GPU: the growth of ``torch.cuda.max_memory_allocated`` (reset before the row's objects are built) over
the memory allocated at that moment, so the rows of the same model kept alive for round-robin timing do not
count in each other's.  On a CPU: the
growth of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over its
resident set at the row's start, after freed memory has been handed back to the system; where that is not
available the measurement is ``None``.
"""

from __future__ import annotations

import ctypes
import gc
import re
from pathlib import Path

import torch

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None


def memory_measured(device: torch.device) -> str:
    """What :class:`PeakMemory` measures on ``device``, worded for the report."""
    if device.type == "cuda":
        return "growth of torch.cuda.max_memory_allocated over the memory allocated before the row was built"
    return "growth of the process's peak resident set (VmHWM) over its size at the row's start, approximate"


class PeakMemory:
    """Peak memory of one row: CUDA allocated bytes, or the growth of the host's peak resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_kib: int | None = None
        self.baseline_bytes = 0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return
        _release_freed_host_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
            self.baseline_kib = _proc_status_kib("VmRSS")
        except OSError:
            self.baseline_kib = None

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.baseline_bytes) / 2**20
        if self.baseline_kib is None:
            return None
        try:
            return max(_proc_status_kib("VmHWM") - self.baseline_kib, 0) / 1024
        except OSError:
            return None


def _proc_status_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field_name}")
    return int(match.group(1))


def _release_freed_host_memory() -> None:
    """Hand memory freed by the previous row back to the system (glibc), so that it shows as growth again."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def minor_page_faults() -> int | None:
    """This process's minor page faults so far (``getrusage``), ``None`` where the platform has no count.

    A step's count is the host memory it touched for the first time since the allocator took it from the
    system (pages zero-filled by the kernel): what a step pays when the C library returns freed tensor memory
    to the system and maps it again on the next step (results/bench/README.md, "Page faults")."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
