"""Vanilla training: plain cross-entropy on the clean batch (the baseline of every table)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod
from mixbench.methods.registry import register_method


@register_method
class Vanilla(MixMethod):
    name = "vanilla"

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        return F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing), {}
