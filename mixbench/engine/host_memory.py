"""Keep freed tensor memory inside the process on the CPU, so that every step does not fault it back in.

PyTorch's CPU allocator takes tensor memory from the C library's ``malloc``.  glibc serves a request above
its *mmap threshold* (adjusted as the program runs, at most 32 MiB on 64-bit) with a fresh mapping that it
returns to the operating system on ``free``, and gives the free top of its heap back above its *trim
threshold*.  A training step frees its activations and allocates the same sizes again on the next step, so
those pages come back as page faults, each zero-filled by the kernel.  The methods with the largest and most
varied working sets pay most (the benchmark's ``page faults / step`` column counts them; what keeping the
memory buys is measured by ``tools/bench.py`` against ``tools/bench.py --default-malloc``, see
results/bench/README.md, "Host memory").

:func:`keep_freed_host_memory` sets both thresholds to 1 GiB with glibc's ``mallopt`` (which also stops their
adjustment): memory freed by one step stays in the heap for the next.  The cost is that the process keeps the
memory its largest step needed (its peak resident set, which it reaches anyway) until it exits.  This is the
effect PyTorch's CPU performance guide obtains by preloading jemalloc or tcmalloc, without a preload.  Where
``mallopt`` is not glibc's (macOS, musl, Windows) nothing is changed.  The trainer and the benchmark call it
when the run's device is the CPU; on a GPU the tensors live in CUDA's caching allocator, which keeps freed
blocks already.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEPT_BYTES = 1 << 30  # requests up to 1 GiB come from the heap; its free top is kept up to 1 GiB

_applied: bool | None = None  # None: not asked yet in this process


def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); whether they are raised."""
    global _applied
    if _applied is None:
        _applied = _raise_thresholds()
    return _applied


def _raise_thresholds() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a refused value leaves glibc's default behaviour.
    trimmed = mallopt(M_TRIM_THRESHOLD, KEPT_BYTES) == 1
    mapped = mallopt(M_MMAP_THRESHOLD, KEPT_BYTES) == 1
    return trimmed and mapped


def host_memory_note() -> str:
    """One line for benchmark headers: whether freed host memory is kept (this module) in this process."""
    if _applied:
        return "freed tensor memory kept in the process (glibc mmap/trim thresholds 1 GiB)"
    return "the C library's default (freed memory may return to the OS)"


def minor_page_faults() -> int | None:
    """This process's minor page faults so far (``getrusage``), ``None`` where the platform has no count."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
