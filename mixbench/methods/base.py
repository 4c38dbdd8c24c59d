"""The method interface and the loss every mixing method shares.

A method is an ``nn.Module`` (so that it may own trainable parts that join the optimizer) with

* ``training_step(model, x, y) -> (loss, logs)``: one training loss on a clean batch;
* ``after_step(model)``: called after each optimizer step (EMA updates);
* ``eval_models(model) -> {label: network}``: the networks to evaluate each epoch (``""`` = online);
* ``required_stages``: the hidden states (stage indices of :mod:`mixbench.models.base`) it needs.

Input-space methods only implement :meth:`InputMixMethod.mix`; the step is inherited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.models.base import StagedNet
from mixbench.rng import MixRandom

Logs = dict[str, torch.Tensor]


def mixed_cross_entropy(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float | torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``mean(lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b))``; ``lam`` is a scalar or per sample."""
    loss_a = F.cross_entropy(logits, y_a, reduction="none", label_smoothing=label_smoothing)
    loss_b = F.cross_entropy(logits, y_b, reduction="none", label_smoothing=label_smoothing)
    return (lam * loss_a + (1.0 - lam) * loss_b).mean()


@dataclass
class MixedBatch:
    """A mixed batch: sample ``i`` is ``lam_i`` parts ``y_a[i]`` and ``1 - lam_i`` parts ``y_b[i]``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float | torch.Tensor

    def lam_mean(self) -> float | torch.Tensor:
        return self.lam.mean() if torch.is_tensor(self.lam) else self.lam


class MixMethod(nn.Module):
    """Base class of every mixing method."""

    name: str = "base"
    required_stages: tuple[int, ...] = (0,)

    def __init__(self) -> None:
        super().__init__()
        self.rng = MixRandom(0)
        self.label_smoothing = 0.0

    def bind(self, rng: MixRandom, label_smoothing: float = 0.0) -> None:
        """Give the method the run's random generators and the recipe's label smoothing."""
        self.rng = rng
        self.label_smoothing = label_smoothing

    def check_model(self, model: StagedNet) -> None:
        """Raise ``StageUnavailableError`` when ``model`` cannot serve this method."""
        for stage in self.required_stages:
            model.check_stage(stage)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups for the method's own trainable parts (none for most methods)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        raise TypeError(f"{type(self).__name__} must define training_step()")

    def after_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (EMA updates); nothing by default."""

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Networks evaluated each epoch, by label; ``""`` is the online network."""
        return {"": model}


class InputMixMethod(MixMethod):
    """A method that mixes images only: subclasses implement :meth:`mix`."""

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        raise TypeError(f"{type(self).__name__} must define mix()")

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        batch = self.mix(x, y)
        logits = model(batch.x)
        loss = mixed_cross_entropy(logits, batch.y_a, batch.y_b, batch.lam, self.label_smoothing)
        return loss, {"lam": torch.as_tensor(batch.lam_mean(), dtype=torch.float32)}
