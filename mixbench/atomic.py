"""Atomic writes and safe loads.

A file is first written next to its destination, flushed to disk, then renamed over it (``os.replace`` is
atomic on POSIX), so a run killed at any moment leaves either the previous complete file or the new one,
never a torn one.  Checkpoints are read with ``torch.load(weights_only=True)``: they hold tensors, numbers,
strings, lists and dicts only, and loading never runs pickled code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(handle)`` on a binary file beside ``path`` (``.<name>.<random>.tmp``), flush it to disk,
    then rename it over ``path``: readers see the old or the whole new file; a failed write leaves none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    import torch  # here, not at the top: readers of run directories (mixbench.report) need no torch

    atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)
