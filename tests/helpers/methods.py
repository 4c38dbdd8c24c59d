"""Small models, rigged generators and recorders the method tests share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixbench.models.base import StagedNet
from mixbench.rng import MixRandom


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


class InputOnlyNet(StagedNet):
    """A classifier that exposes no hidden state, only the input stage (what feature methods must refuse)."""

    name = "input_only"

    def __init__(self, size: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * size * size, classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def stage_modules(self) -> list[nn.Module]:
        return []

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.flatten(1))

    @property
    def feature_stages(self) -> tuple[int, ...]:
        return (0,)
