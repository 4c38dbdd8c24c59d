"""Where a number comes from: the device, the library versions and the git commit, worded once.

The trainer writes these facts into ``summary.json`` and the benchmark into its table's header, from the same
:class:`Provenance`, so the same machine and tree are described by the same strings in both.  They are
computed once per process (the git commit is one ``git`` subprocess, not one per epoch or per rank).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Provenance:
    device: str  # "NVIDIA H100 80GB HBM3" or "CPU (AMD EPYC 7B13), 2 threads"
    device_slug: str  # "nvidia-h100-80gb-hbm3" or "cpu-2-threads": file names of per-device results
    versions: dict[str, str]
    git_commit: str | None  # the full commit of the mixbench tree, None outside a git checkout
    git_dirty: bool  # tracked files differ from that commit

    @property
    def commit_text(self) -> str:
        """``66652e0`` or ``66652e0 (with uncommitted changes)`` or ``unknown``."""
        if self.git_commit is None:
            return "unknown"
        return self.git_commit[:7] + (" (with uncommitted changes)" if self.git_dirty else "")


def provenance(device: torch.device) -> Provenance:
    """The facts of this process on ``device`` (the thread count is read now; the rest is cached)."""
    commit, dirty = git_state()
    return Provenance(device_name(device), device_slug(device), versions(), commit, dirty)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({cpu_model()}), {threads} thread{'s' if threads > 1 else ''}"


def device_slug(device: torch.device) -> str:
    """``nvidia-h100-80gb-hbm3`` for a GPU, ``cpu-2-threads`` for the CPU."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{torch.get_num_threads()}-threads"


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def versions() -> dict[str, str]:
    import timm
    import torchvision

    import mixbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "mixbench": mixbench.__version__,
    }


@functools.cache
def git_state() -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the tree mixbench is imported from; ``(None, False)`` outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=PACKAGE_DIR
        )
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=PACKAGE_DIR,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    if commit.returncode != 0 or not commit.stdout.strip():
        return None, False
    return commit.stdout.strip(), bool(changes.stdout.strip())


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's contents (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
