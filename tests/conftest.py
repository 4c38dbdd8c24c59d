"""Fixtures shared by the test modules; plain helpers live in ``tests/helpers/``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mixbench.models import build_model


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a busy 2-core box.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swin_meta() -> nn.Module:
    """Swin-T at 32 px on the meta device: the stage contract without the memory or the init time."""
    with torch.device("meta"):
        return build_model("swin_t", num_classes=10, image_size=32)
