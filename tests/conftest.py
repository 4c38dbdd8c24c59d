"""Shared helpers: composing configs with Hydra's compose API, a tiny training setup, running the CLI, and the
small models, generators and recorders the method tests share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from mixbench.config import CONFIG_DIR
from mixbench.models import build_model
from mixbench.rng import MixRandom

REPO = Path(__file__).resolve().parents[1]


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``tools/train.py`` would see for these command-line overrides."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_overrides(runs_root: Path, epochs: int = 3, window: int = 2) -> list[str]:
    """The quickstart shrunk to seconds: digits at 8 px, PreActResNet18 of width 4."""
    return [
        "experiment=quickstart",
        f"runs_root={runs_root}",
        "model.width=4",
        "data.image_size=8",
        f"schedule.epochs={epochs}",
        f"schedule.metric_window={window}",
        "progress=false",
        "device=cpu",
    ]


def run_cli(arguments: list[str], cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tools/train.py <arguments>`` in a fresh process; returns the completed process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


# ------------------------------------------------------------------------------------------ method tests


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


class FixedLam(MixRandom):
    """The run's generator with ``beta`` rigged to a known lam (every other draw unchanged)."""

    def __init__(self, seed: int, lam: float) -> None:
        super().__init__(seed)
        self.lam = lam

    def beta(self, alpha: float, size: int | None = None) -> float:
        return self.lam


class LinearNet(nn.Module):
    """A linear classifier of flattened ``3 x size x size`` images, weights fixed by seed 0."""

    def __init__(self, size: int, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * size * size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def hand_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy written out: ``logsumexp(z) - z_y``."""
    return torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]


class StageRecorder:
    """Wraps a StagedNet's forward_features/forward_from to record the stages and the states passed on.

    ``calls`` holds ``("features", stage, output)`` and ``("from", stage, input)``; ``logits`` the last output
    of ``forward_from``.  Stage 0's features are the input itself.
    """

    def __init__(self, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int, torch.Tensor]] = []
        features, continue_from = model.forward_features, model.forward_from

        def forward_features(x, stage):
            h = features(x, stage)
            self.calls.append(("features", stage, h.detach().clone()))
            return h

        def forward_from(h, stage):
            self.calls.append(("from", stage, h.detach().clone()))
            logits = continue_from(h, stage)
            self.logits = logits.detach().clone()
            return logits

        monkeypatch.setattr(model, "forward_features", forward_features)
        monkeypatch.setattr(model, "forward_from", forward_from)
