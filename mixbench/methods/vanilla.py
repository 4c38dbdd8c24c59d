"""Vanilla training: plain cross-entropy on the clean batch (the baseline of every table)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod
from mixbench.methods.registry import register_method


def loss_of_forward(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``model(x)`` and its cross-entropy in one call: under ``compile=true`` one graph with the network."""
    return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)


@register_method
class Vanilla(MixMethod):
    name = "vanilla"
    forward_loss: Callable[..., torch.Tensor] = staticmethod(loss_of_forward)

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        """Under ``compile=true`` the forward and the loss are one compiled call (the model inlined in it)."""
        super().compile_parts(compiler)
        self.forward_loss = compiler(loss_of_forward)

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        return self.forward_loss(model, x, y, self.label_smoothing), {}
