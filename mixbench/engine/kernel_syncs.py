"""Syncs made inside operators, seen from the operators' calls: what a CPU run cannot feel but a GPU would.

Some operators read a device value on the host *inside* their C++ code, which no Python-level patch of
:mod:`mixbench.engine.host_syncs` sees:

* operators whose output size depends on the data: ``nonzero`` (also ``argwhere`` and one-argument
  ``torch.where``), ``masked_select``, indexing with a boolean mask (``t[mask]``, which calls ``nonzero``),
  ``unique`` and ``unique_consecutive``, ``repeat_interleave`` with tensor repeats and no ``output_size``,
  ``bincount`` (its length is ``max + 1``): the host must learn the size before it can allocate the output;
* ``t[index] = 0.5`` with a tensor ``index`` (advanced indexing) and a Python number: PyTorch makes the
  number a CPU tensor, and ``index_put_`` copies it to the device with a blocking copy.  A boolean mask as the
  only index is the exception (``t[mask] = 0.5`` runs ``masked_fill_`` with the number: no copy), and so are
  slices (``t[1:3] = 0.5`` is a ``fill_``).  ``t.index_fill_(0, index, 0.5)`` does the same work without the
  copy.

On a GPU, CUDA's sync debug mode sees these when they run (the bench's CUDA-syncs column); on a CPU nothing
waits, so :class:`KernelSyncWatcher`, a ``TorchDispatchMode``, reads them from the operator calls
themselves: every aten call the thread makes (forward and backward) passes through it, and
:func:`kernel_sync_kind` names the calls above.  A Python number in ``t[index] = number`` reaches aten as a
0-dim tensor made by ``aten.lift_fresh``; the watcher remembers the last such tensor to tell it from a 0-dim
device tensor (``t[index] = value_tensor``, no copy).

The list is of the operators PyTorch documents or is known to sync; an operator of a library (a custom
CUDA kernel) or one added to PyTorch later is not in it.  Calls inside a ``torch.compile`` graph are not
seen one by one, and the mode itself changes what dynamo traces: watch eager code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operators whose output size is read from the data (name of the overload packet -> the kind recorded).
DATA_SIZED = {
    "nonzero": "nonzero (output size read on the host)",
    "masked_select": "masked_select (output size read on the host)",
    "_unique": "unique (output size read on the host)",
    "_unique2": "unique (output size read on the host)",
    "unique_dim": "unique (output size read on the host)",
    "unique_consecutive": "unique_consecutive (output size read on the host)",
    "unique_dim_consecutive": "unique_consecutive (output size read on the host)",
    "bincount": "bincount (output size read on the host)",
}
INDEX_PUTS = {"index_put_", "index_put", "_index_put_impl_"}
BOOLEAN_MASK = "boolean-mask index (nonzero inside)"
HOST_SCALAR = "t[index] = number (host-to-device copy of the number)"


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def kernel_sync_kind(
    func: Any, args: tuple, kwargs: dict[str, Any], lifted: torch.Tensor | None = None
) -> str | None:
    """What a call of the aten operator ``func`` would sync on an accelerator, or ``None``.

    ``lifted`` is the 0-dim tensor the last ``aten.lift_fresh`` made from a Python number, if any.
    """
    name = func.overloadpacket.__name__
    if name in DATA_SIZED:
        return DATA_SIZED[name]
    if name == "repeat_interleave" and func is aten.repeat_interleave.Tensor:
        sized = kwargs.get("output_size") is not None
        return None if sized else "repeat_interleave (output size read on the host)"
    if name == "index" and len(args) > 1:
        return BOOLEAN_MASK if any(_is_mask(index) for index in args[1]) else None
    if name in INDEX_PUTS and len(args) > 2:
        indices = [index for index in args[1] if index is not None]
        from_number = lifted is not None and args[2] is lifted
        if any(_is_mask(index) for index in indices):
            only_mask = len(indices) == 1 and _is_mask(indices[0])
            return None if (only_mask and from_number) else BOOLEAN_MASK  # the lone mask: masked_fill_
        return HOST_SCALAR if from_number else None
    return None


class KernelSyncWatcher(TorchDispatchMode):
    """Calls ``record(kind)`` for every aten call that :func:`kernel_sync_kind` names, while ``watching()``.

    Thread-local like every dispatch mode: only the thread that entered it is watched.
    """

    def __init__(self, record: Callable[[str], None], watching: Callable[[], bool]) -> None:
        super().__init__()
        self.record = record
        self.watching = watching
        self._lifted: torch.Tensor | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func is aten.lift_fresh.default:
            self._lifted = result  # the next index_put_ may receive it
            return result
        if self.watching():
            kind = kernel_sync_kind(func, args, kwargs, self._lifted)
            if kind is not None:
                self.record(kind)
        self._lifted = None
        return result


__all__ = ["KernelSyncWatcher", "kernel_sync_kind"]
