"""Fixtures shared by the test modules; plain helpers live in ``tests/helpers/``.

torch and mixbench are imported inside the fixtures and hooks that use them: under pytest-xdist the
controller process loads this file too, and it runs no test, so it need not spend seconds importing them
before the workers can start.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a busy 2-core box.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swin_meta():
    """Swin-T at 32 px on the meta device: the stage contract without the memory or the init time."""
    import torch

    from mixbench.models import build_model

    with torch.device("meta"):
        return build_model("swin_t", num_classes=10, image_size=32)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (a real training, or fresh interpreters) first, each group in its own order:
    under pytest-xdist a minute-long test that starts last runs alone on one core while the others idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker gets one core's worth of threads (and so do the tools it starts), so
    that the workers together use the machine's cores without oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
