"""A method's solver replayed as one CUDA graph: thousands of small kernels launched by one call.

Co-Mixup's labelling (4 rounds x 20 outputs of a few dozen small operations), AlignMixup's Sinkhorn loop (100
iterations of 26) and Puzzle Mix's block sweeps and transport are loops of tiny kernels over tensors of fixed
shape, with no host sync and no gradient.  On a GPU their cost is the launches, not the arithmetic (the H200
profiles at 5b521f1: Co-Mixup 7,847 launches a step against vanilla's 365, results/bench/README.md).  CUDA
graphs (``torch.cuda.CUDAGraph``) record such a loop once and replay it with one launch.

:class:`SolverGraph` wraps a solver ``function(*args)``: a pure function of its tensor arguments and of fixed
Python values (sizes, flags, coefficients), that draws no random numbers and returns a tensor or a tuple of
tensors.  On the first call with a new signature -- the tensors' shapes, dtypes and devices, and the Python
arguments' values -- it

1. runs ``function`` eagerly on the call's arguments: that result is returned, and is the reference;
2. records ``function`` on static copies of the tensor arguments (the backend: :class:`CudaGraphs`);
3. replays the recording once and compares its outputs with the reference, **bit for bit**.  A mismatch, an
   error while recording, or a recording that would hold more device memory than allowed (its intermediates
   stay reserved while it lives; :class:`CudaGraphs`) turns capture off for that signature with one warning:
   the eager function runs from then on, so a solver that cannot be captured stays correct, only slower.

Later calls with that signature copy the tensor arguments into the static inputs, replay, and return copies of
the static outputs (the next replay overwrites them).  A Python value is baked into the recording, so it is
part of the signature: a new value records a new graph.  Recording synchronises the device once per signature
(``torch.cuda.graph`` does, and so does the bitwise check); replays never do.

Capture applies only to tensors on a CUDA device and when ``enabled``; elsewhere (the CPU, or a method
compiled by ``torch.compile``, whose own modes handle launches) the call is ``function(*args)`` itself.  The
backend is a parameter so that the bookkeeping (static buffers, signatures, the check, the memory limit, the
fallback) is tested on the CPU with a stand-in that replays by running the function again
(``tests/test_solver_graph.py``).  Results never depend on whether a solver was replayed: the recording runs
the same kernels on the same values, checked once bit for bit.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Outputs = torch.Tensor | tuple[torch.Tensor, ...]


class GraphBackend(Protocol):
    """Records ``function(*static_args)``; returns the replay, the outputs it writes and the device memory
    the recording holds for as long as it lives (its intermediates)."""

    def capture(
        self, function: Callable[..., Outputs], static_args: Sequence
    ) -> tuple[Callable[[], None], Outputs, int]: ...

    def memory_limit(self, args: Sequence) -> int:
        """The most memory a recording for these arguments may hold."""
        ...


class CudaGraphs:
    """``torch.cuda.CUDAGraph`` recording, after one warm-up run on a side stream (lazy initialisation of
    cuBLAS and the caching allocator must not happen while recording).

    A recording keeps its intermediates in a private memory pool for as long as it lives, where the eager
    solver would hand them back to the model's activations after each call.  The pool's size is measured (the
    device memory reserved during the recording, after emptying the cache) and :class:`SolverGraph` refuses a
    recording above :data:`MEMORY_SHARE` of the device or :data:`MEMORY_CAP` bytes: Puzzle Mix's transport at
    224 px builds a dense cells x cells cost per image (tens of GB at batch 256).
    """

    def capture(
        self, function: Callable[..., Outputs], static_args: Sequence
    ) -> tuple[Callable[[], None], Outputs, int]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            function(*[_clone(arg) for arg in static_args])
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        gc.collect()  # as torch.cuda.graph does on entry, so that its cleaning does not shrink the baseline
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved()
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's unsafe calls break the recording (a loader thread may pin memory)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = function(*static_args)
        return graph.replay, outputs, torch.cuda.memory_reserved() - reserved

    def memory_limit(self, args: Sequence) -> int:
        device = next(arg.device for arg in args if isinstance(arg, torch.Tensor))
        return min(MEMORY_CAP, int(MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory))


MEMORY_SHARE = 0.05  # of the device's memory, at most, held by one recording
MEMORY_CAP = 1 << 30  # bytes, at most, held by one recording


@dataclass
class _Recording:
    static_args: list
    replay: Callable[[], None]
    outputs: Outputs


_EAGER = None  # a signature whose recording failed: run the function eagerly


class SolverGraph:
    """``function`` replayed as one CUDA graph per signature (see the module docstring)."""

    def __init__(self, function: Callable[..., Outputs], backend: GraphBackend | None = None) -> None:
        self.function = function
        self.backend = backend if backend is not None else CudaGraphs()
        self.enabled = True
        self.any_device = backend is not None  # a stand-in backend captures CPU tensors too (tests)
        self.fallbacks: list[str] = []  # why a signature runs eagerly, one line each
        self._recordings: dict[Hashable, _Recording | None] = {}

    def __call__(self, *args) -> Outputs:
        if not self.enabled or torch.compiler.is_compiling() or not self._capturable(args):
            return self.function(*args)
        key = signature(args)
        if key not in self._recordings:
            return self._record(key, args)
        recording = self._recordings[key]
        if recording is _EAGER:
            return self.function(*args)
        for static, arg in zip(recording.static_args, args, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(arg)
        recording.replay()
        return _copy_outputs(recording.outputs)

    @property
    def recorded(self) -> int:
        """How many signatures replay a recording (not counting those that fell back to eager)."""
        return sum(recording is not _EAGER for recording in self._recordings.values())

    def _capturable(self, args: Sequence) -> bool:
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        return bool(tensors) and (self.any_device or all(tensor.is_cuda for tensor in tensors))

    def _record(self, key: Hashable, args: Sequence) -> Outputs:
        static_args = [_clone(arg) for arg in args]
        with torch.no_grad():
            expected = self.function(*args)
            try:
                replay, outputs, held = self.backend.capture(self.function, static_args)
                limit = self.backend.memory_limit(args)
                if held > limit:
                    del replay, outputs  # the recording and its memory pool go
                    self._fall_back(
                        key, f"its recording would hold {_megabytes(held)} (limit {_megabytes(limit)})"
                    )
                    return expected
                replay()
                same = _bitwise_equal(outputs, expected)
            except Exception as error:  # noqa: BLE001 - any failure to record means: run eagerly
                self._fall_back(key, f"recording failed ({type(error).__name__}: {error})")
                return expected
        if not same:
            self._fall_back(key, "the replay differs from the eager run")
            return expected
        self._recordings[key] = _Recording(static_args, replay, outputs)
        return expected

    @property
    def name(self) -> str:
        return getattr(self.function, "__name__", repr(self.function))

    def _fall_back(self, key: Hashable, why: str) -> None:
        self._recordings[key] = _EAGER
        self.fallbacks.append(why)
        warnings.warn(f"{self.name}: not replayed as a CUDA graph, {why}; it runs eagerly", stacklevel=4)


def replay_summary(graphs: Sequence[SolverGraph]) -> str:
    """One line on what a method's solvers did: the recordings replayed and the fallbacks to eager, by
    solver; empty when none was recorded or refused (the CPU, ``cuda_graph: false``, ``compile=true``)."""
    parts = []
    for graph in graphs:
        if graph.recorded:
            plural = "s" if graph.recorded > 1 else ""
            parts.append(f"{graph.name} replayed as a CUDA graph ({graph.recorded} shape{plural})")
        parts += [f"{graph.name} ran eagerly: {why}" for why in dict.fromkeys(graph.fallbacks)]
    return "; ".join(parts)


def signature(args: Sequence) -> Hashable:
    """Shapes, dtypes and devices of the tensor arguments, values of the others (which must be hashable)."""
    return tuple(
        ("tensor", tuple(arg.shape), arg.dtype, arg.device)
        if isinstance(arg, torch.Tensor)
        else ("value", arg)
        for arg in args
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def _clone(arg):
    return arg.clone() if isinstance(arg, torch.Tensor) else arg


def _as_tuple(outputs: Outputs) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def _copy_outputs(outputs: Outputs) -> Outputs:
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    return tuple(output.clone() for output in outputs)


def _bitwise_equal(outputs: Outputs, expected: Outputs) -> bool:
    ours, theirs = _as_tuple(outputs), _as_tuple(expected)
    return len(ours) == len(theirs) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        for a, b in zip(ours, theirs, strict=True)
    )


__all__ = ["CudaGraphs", "GraphBackend", "SolverGraph", "replay_summary", "signature"]
