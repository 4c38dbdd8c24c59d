"""Counting host syncs: the calls that make the host wait for the device while a block of code runs.

On an accelerator the host queues kernels and runs ahead of them.  A call that needs a device value on the
host (``loss.item()``, ``if flag:``), or a blocking copy between host and device, makes the host wait until
every kernel queued before it has run: a *host sync*.  One per training step is enough to leave a fast GPU
idle between steps.  :class:`HostSyncCounter` counts them while it is active::

    with HostSyncCounter(runtime.device) as syncs:
        step(x, y)
    syncs.count, syncs.by_site()          # 2, {"mixbench/methods/sinkhorn.py:87": 2}

It replaces, for the duration, the methods of ``torch.Tensor`` and the factory functions below by wrappers
that record each call that reads or copies as a :class:`HostSync` with its *site*: ``file:line`` of the
first frame outside torch and this module, so that a report says where each sync is.  With
``raise_on_sync=True`` the first one raises :class:`HostSyncError` (for tests) instead.

What is counted, on a CUDA run (``device`` a CUDA device):

* reads of a CUDA tensor's value on the host: ``Tensor.item``, ``__float__``, ``__int__``, ``__bool__``
  (``if t:``), ``__index__`` (``range(t)``, ``list[t]``), ``tolist``, ``numpy``, ``__repr__`` (printing),
  ``Tensor.equal`` / ``torch.equal`` and ``Tensor.allclose`` / ``torch.allclose`` (a host bool); Python code
  that reads through these (``__format__``, ``__array__``, ``in``) counts once, at its caller;
* device-to-host copies: ``Tensor.cpu()``, and ``Tensor.to`` / ``copy_`` from a CUDA tensor to the CPU
  unless ``non_blocking=True`` (an asynchronous copy is no sync; its values are valid only after one);
* host-to-device copies: ``Tensor.to`` / ``Tensor.cuda`` / ``copy_`` from a CPU tensor to a CUDA device,
  unless the source is pinned *and* ``non_blocking=True`` (a blocking copy waits for the stream; one from
  pageable memory goes through the driver's staging buffers); ``torch.tensor``, ``torch.as_tensor`` and
  ``Tensor.new_tensor`` whose result lands on a CUDA device from host data (Python numbers, lists, NumPy
  arrays, CPU tensors): always a blocking copy.  ``torch.full(..., device=...)`` and the other fills are
  not copies and are not counted;
* in addition, the run is under ``torch.cuda.set_sync_debug_mode("warn")`` (``"error"`` with
  ``raise_on_sync``), and the warnings it emits are counted apart, in :attr:`HostSyncCounter.cuda_syncs`:
  CUDA's own view, which also sees syncs made inside C++ kernels (below), but names the innermost Python
  line, possibly inside torch.

On a CPU run every tensor lives on the "device", and nothing ever waits for anything.  The count is then
what *would* sync on an accelerator, read from the code's intent:

* every read of a tensor's value on the host is counted (the first list above, for any CPU tensor): on an
  accelerator the tensor read would be a device tensor, unless the code made it on the host on purpose, so
  the CPU count can exceed the CUDA one (e.g. an optimizer reading its CPU step counter);
* ``torch.tensor`` / ``torch.as_tensor`` from host data with an explicit ``device=`` argument, and
  ``Tensor.new_tensor`` from host data, are counted (they copy host data to the run's device);
* ``Tensor.to`` / ``.cuda()`` / ``copy_`` / ``.cpu()`` are not counted: between two CPU tensors there is no
  host and device to tell apart, and ``.cpu()`` of a CPU tensor is a no-op (the read that follows counts).

Syncs inside operators, on either device (with ``watch_kernels``, the default): the operators that read a
device value in their C++ code to size their output (``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, ``repeat_interleave`` with tensor repeats, ``bincount``) and ``t[index] = number`` with a tensor
index, whose number ``index_put_`` copies to the device, are counted from the operator calls by
:class:`~mixbench.engine.kernel_syncs.KernelSyncWatcher` (a dispatch mode; see that module for the list).
On a CUDA run CUDA's sync debug mode sees them too, in its own count.

What cannot be seen here:

* syncs inside operators not in that list (CUDA kernels of libraries, operators added to PyTorch later):
  only CUDA's sync debug mode (the second count, on a CUDA run) catches those;
* calls that bypass the patched names: ``from torch import tensor`` bound before the counter started,
  ``torch._C`` functions, and reads inside a ``torch.compile`` graph (the patched functions are Python, so
  counting under ``torch.compile`` also changes what dynamo traces: count eager code, or pass
  ``watch_kernels=False`` around compiled code, whose dispatch mode would disturb its graphs);
* calls from other threads (a data loader's pin-memory thread, a logger): only the thread that entered the
  counter is watched;
* ``torch.cuda.synchronize`` and the like, which are explicit waits, not reads; wrap them in
  :meth:`HostSyncCounter.paused` so that the sync debug mode does not report them either.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixbench.engine import kernel_syncs
from mixbench.engine.kernel_syncs import KernelSyncWatcher

TORCH_DIR = str(Path(torch.__file__).resolve().parent)
THIS_FILE = str(Path(__file__).resolve())
WATCHER_FILE = str(Path(kernel_syncs.__file__).resolve())
REPO_DIR = Path(__file__).resolve().parents[2]
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"  # the text of the sync debug mode's warnings

# Tensor methods that hand a device value to the host (counted for tensors on a device of the run's type).
READS = (
    "item",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
    "tolist",
    "numpy",
    "__repr__",
    "equal",
    "allclose",
)
TORCH_READS = ("equal", "allclose")  # the same reads as torch.* functions (the first tensor decides)


class HostSyncError(RuntimeError):
    """A host sync inside a :class:`HostSyncCounter` with ``raise_on_sync=True``."""


@dataclass(frozen=True)
class HostSync:
    """One counted call: what it was (``item``, ``to (host to device)``, ``tensor``...) and where."""

    kind: str
    site: str  # "mixbench/methods/sinkhorn.py:87": the first frame outside torch and this module


def relative_site(filename: str, line: int) -> str:
    """``file:line`` with the file relative to the repository when it lies inside it."""
    path = Path(filename)
    try:
        path = path.resolve().relative_to(REPO_DIR)
    except (ValueError, OSError):
        pass
    return f"{path.as_posix()}:{line}"


def caller_site() -> str:
    """``file:line`` of the innermost frame that is neither torch's nor this module's."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (filename.startswith(TORCH_DIR) or filename in (THIS_FILE, WATCHER_FILE)):
            return relative_site(filename, frame.f_lineno)
        frame = frame.f_back
    return "unknown"


def copy_direction(source: str, target: str, pinned: bool, non_blocking: bool) -> str | None:
    """``"host to device"``, ``"device to host"`` or ``None`` (no sync) for a copy from a tensor on the device
    type ``source`` to ``target`` (``"cpu"``, ``"cuda"``); ``pinned``: the source's memory is page-locked.

    A host-to-device copy syncs unless it is ``non_blocking`` from pinned memory; a device-to-host copy syncs
    unless it is ``non_blocking`` (its values are then valid only after a later sync).
    """
    if source == "cpu" and target == "cuda":
        return None if (non_blocking and pinned) else "host to device"
    if source == "cuda" and target == "cpu":
        return None if non_blocking else "device to host"
    return None


def copies_host_data(data: Any, result_device: str, run_device: str, placed: bool) -> bool:
    """Whether ``torch.tensor(data, ...)`` / ``as_tensor`` / ``new_tensor`` that made a tensor on
    ``result_device`` copied host data onto the run's device type ``run_device``.

    On CUDA: the result is on a CUDA device and ``data`` was not already a CUDA tensor.  On the CPU: the call
    asked for a device (``placed``: ``device=`` given, or ``new_tensor``) and ``data`` is not a tensor
    (Python numbers and lists, NumPy arrays: what would be copied to an accelerator).
    """
    if run_device == "cuda":
        from_cuda = isinstance(data, torch.Tensor) and data.device.type == "cuda"
        return result_device == "cuda" and not from_cuda
    return placed and result_device == run_device and not isinstance(data, torch.Tensor)


def _non_blocking(args: tuple, kwargs: dict[str, Any], position: int | None) -> bool:
    """The ``non_blocking`` flag of a copy call: a keyword, or the positional bool at ``position`` (``None``:
    the first positional bool, as in ``Tensor.to(device, dtype, non_blocking)``)."""
    if "non_blocking" in kwargs:
        return bool(kwargs["non_blocking"])
    if position is None:
        return next((arg for arg in args if isinstance(arg, bool)), False)
    return bool(args[position]) if len(args) > position and isinstance(args[position], bool) else False


class HostSyncCounter:
    """Counts host syncs of the entering thread while active (see the module docstring for what counts).

    ``device`` is the run's device: its type decides which tensors are "on the device" and whether CUDA's
    sync debug mode runs too.  ``watch_kernels`` also counts the syncs inside operators
    (:mod:`mixbench.engine.kernel_syncs`).  The counter may be entered again after it exits; counts
    accumulate.
    """

    def __init__(
        self, device: torch.device | str, raise_on_sync: bool = False, watch_kernels: bool = True
    ) -> None:
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        # CUDA's sync debug mode needs a GPU; without one a "cuda" counter still applies the CUDA rules
        self.debug_mode = self.on_cuda and torch.cuda.is_available()
        self.raise_on_sync = raise_on_sync
        self.watch_kernels = watch_kernels
        self._watcher: KernelSyncWatcher | None = None
        self.syncs: list[HostSync] = []
        self.cuda_syncs: list[str] = []  # sites of the sync debug mode's warnings (CUDA runs only)
        self._owner: int | None = None
        self._paused = False
        self._depth = 0  # > 0 while a counted call runs: reads it makes itself are not counted again
        self._restore: list[Callable[[], None]] = []
        self._caught_warnings: contextlib.AbstractContextManager | None = None
        self._warning_records: list[warnings.WarningMessage] = []
        self._previous_debug_mode = 0

    # -- results ---------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Host syncs seen through the patched calls."""
        return len(self.syncs)

    @property
    def cuda_count(self) -> int | None:
        """Syncs reported by CUDA's sync debug mode; ``None`` where it did not run (a CPU run)."""
        return len(self.cuda_syncs) if self.debug_mode else None

    def by_site(self) -> dict[str, int]:
        """Counted syncs per ``file:line``, the most frequent first."""
        return dict(Counter(sync.site for sync in self.syncs).most_common())

    def describe(self) -> str:
        """One line: ``none``, or ``3 at a.py:10 (item), 1 at b.py:5 (tolist)``."""
        if not self.syncs:
            return "none"
        kinds: dict[str, set[str]] = {}
        for sync in self.syncs:
            kinds.setdefault(sync.site, set()).add(sync.kind)
        return ", ".join(
            f"{count} at {site} ({', '.join(sorted(kinds[site]))})" for site, count in self.by_site().items()
        )

    # -- the context -----------------------------------------------------------------------------------
    def __enter__(self) -> HostSyncCounter:
        if self._owner is not None:
            raise RuntimeError("this HostSyncCounter is already active")
        self._owner = threading.get_ident()
        self._paused = False
        try:
            self._patch()
            if self.watch_kernels:
                self._watcher = KernelSyncWatcher(self._record, self._watching)
                self._watcher.__enter__()
            if self.debug_mode:
                self._start_cuda_debug_mode()
        except BaseException:
            self._stop_watcher()
            self._unpatch()
            self._owner = None
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.debug_mode:
                self._stop_cuda_debug_mode()
        finally:
            self._stop_watcher()
            self._unpatch()
            self._owner = None

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            watcher.__exit__(None, None, None)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Count nothing inside (an explicit ``torch.cuda.synchronize`` around a timed step)."""
        was_paused, self._paused = self._paused, True
        if self.debug_mode and self._owner is not None:
            torch.cuda.set_sync_debug_mode(0)
        try:
            yield
        finally:
            self._paused = was_paused
            if self.debug_mode and self._owner is not None and not was_paused:
                torch.cuda.set_sync_debug_mode(self._debug_mode())

    # -- recording ---------------------------------------------------------------------------------------
    def _watching(self) -> bool:
        return not self._paused and self._depth == 0 and threading.get_ident() == self._owner

    def _on_device(self, tensor: torch.Tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.device.type == self.device.type

    def _record(self, kind: str) -> None:
        site = caller_site()
        if self.raise_on_sync:
            raise HostSyncError(f"host sync: {kind} at {site} reads or copies a device value on the host")
        self.syncs.append(HostSync(kind, site))

    def _run(self, original: Callable, *args: Any, **kwargs: Any) -> Any:
        """``original(*args, **kwargs)`` with nested counting off."""
        self._depth += 1
        try:
            return original(*args, **kwargs)
        finally:
            self._depth -= 1

    # -- the wrappers --------------------------------------------------------------------------------
    def _read(self, name: str, original: Callable) -> Callable:
        """A read of its first argument's value (``Tensor.item``, ``torch.equal``...): counted when that
        tensor is on a device of the run's type."""
        counter = self

        @functools.wraps(original)
        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not counter._watching() or not counter._on_device(tensor):
                return original(tensor, *args, **kwargs)
            result = counter._run(original, tensor, *args, **kwargs)
            counter._record(name)
            return result

        return read

    def _copy(self, name: str, original: Callable, non_blocking_position: int | None) -> Callable:
        """``to``, ``cuda``, ``cpu``: a copy is judged from the source and the result (CUDA runs only)."""
        counter = self

        @functools.wraps(original)
        def copy(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not counter.on_cuda or not counter._watching():
                return original(tensor, *args, **kwargs)
            result = counter._run(original, tensor, *args, **kwargs)
            non_blocking = _non_blocking(args, kwargs, non_blocking_position)
            if isinstance(result, torch.Tensor):
                counter._judge_copy(name, tensor, result.device, non_blocking)
            return result

        return copy

    def _copy_into(self, original: Callable) -> Callable:
        """``copy_(src)``: the destination is the tensor itself (CUDA runs only)."""
        counter = self

        @functools.wraps(original)
        def copy_(destination: torch.Tensor, source: Any, *args: Any, **kwargs: Any) -> Any:
            if not counter.on_cuda or not counter._watching() or not isinstance(source, torch.Tensor):
                return original(destination, source, *args, **kwargs)
            result = counter._run(original, destination, source, *args, **kwargs)
            counter._judge_copy("copy_", source, destination.device, _non_blocking(args, kwargs, 0))
            return result

        return copy_

    def _judge_copy(self, name: str, source: torch.Tensor, target: torch.device, non_blocking: bool) -> None:
        pinned = source.device.type == "cpu" and target.type == "cuda" and source.is_pinned()
        direction = copy_direction(source.device.type, target.type, pinned, non_blocking)
        if direction is not None:
            self._record(f"{name} ({direction})")

    def _factory(self, name: str, original: Callable, method: bool = False) -> Callable:
        """``torch.tensor(data, ..., device=)`` / ``torch.as_tensor(data, ..., device=)``, or with ``method``
        ``Tensor.new_tensor(data)``, whose result goes to the tensor's device: counted when host data lands
        on the run's device (see the module docstring)."""
        counter = self

        @functools.wraps(original)
        def make(*args: Any, **kwargs: Any) -> Any:
            if not counter._watching():
                return original(*args, **kwargs)
            result = counter._run(original, *args, **kwargs)
            if method:
                data, placed = (args[1] if len(args) > 1 else kwargs.get("data")), True
            else:
                data = args[0] if args else kwargs.get("data")
                placed = kwargs.get("device") is not None  # keyword-only in both functions
            if isinstance(result, torch.Tensor) and copies_host_data(
                data, result.device.type, counter.device.type, placed
            ):
                counter._record(f"{name} (host to device)")
            return result

        return make

    # -- patching --------------------------------------------------------------------------------------
    def _replace(self, owner: Any, name: str, wrapper: Callable) -> None:
        had_own = name in vars(owner)
        original = vars(owner)[name] if had_own else None
        setattr(owner, name, wrapper)
        if had_own:
            self._restore.append(lambda: setattr(owner, name, original))
        else:
            self._restore.append(lambda: delattr(owner, name))

    def _patch(self) -> None:
        tensor = torch.Tensor
        for name in READS:
            self._replace(tensor, name, self._read(name, getattr(tensor, name)))
        for name in TORCH_READS:
            self._replace(torch, name, self._read(name, getattr(torch, name)))
        self._replace(tensor, "to", self._copy("to", tensor.to, None))
        self._replace(tensor, "cuda", self._copy("cuda", tensor.cuda, 1))
        self._replace(tensor, "cpu", self._copy("cpu", tensor.cpu, None))
        self._replace(tensor, "copy_", self._copy_into(tensor.copy_))
        self._replace(tensor, "new_tensor", self._factory("new_tensor", tensor.new_tensor, method=True))
        self._replace(torch, "tensor", self._factory("tensor", torch.tensor))
        self._replace(torch, "as_tensor", self._factory("as_tensor", torch.as_tensor))

    def _unpatch(self) -> None:
        while self._restore:
            self._restore.pop()()

    # -- CUDA's sync debug mode ------------------------------------------------------------------------
    def _debug_mode(self) -> int:
        return 2 if self.raise_on_sync else 1  # "error" or "warn"

    def _start_cuda_debug_mode(self) -> None:
        self._previous_debug_mode = torch.cuda.get_sync_debug_mode()
        self._caught_warnings = warnings.catch_warnings(record=True)
        self._warning_records = self._caught_warnings.__enter__()
        warnings.simplefilter("always")  # every sync warns, not only the first at each line
        torch.cuda.set_sync_debug_mode(self._debug_mode())

    def _stop_cuda_debug_mode(self) -> None:
        torch.cuda.set_sync_debug_mode(self._previous_debug_mode)
        records, self._warning_records = self._warning_records, []
        if self._caught_warnings is not None:
            self._caught_warnings.__exit__(None, None, None)
            self._caught_warnings = None
        for record in records:
            if CUDA_SYNC_WARNING in str(record.message):
                self.cuda_syncs.append(relative_site(record.filename, record.lineno))
            else:  # not ours: let it through as if it had not been caught
                warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)


__all__ = [
    "HostSync",
    "HostSyncCounter",
    "HostSyncError",
    "caller_site",
    "copies_host_data",
    "copy_direction",
]
