"""An EMA copy of the model for any method: ``ema={momentum, end_momentum, constant_fraction}`` at the root.

The learned methods (AutoMix, AdAutoMix) keep a momentum teacher and report its accuracy; the baselines do
not, so a published comparison mixes "EMA of the learned method" with "online net of the baseline".  With
``ema=`` the run keeps the same kind of copy for any method, under the same schedule, and evaluates it every
epoch under the same label::

    theta_ema <- m(t) * theta_ema + (1 - m(t)) * theta      after every optimizer step (foreach ops)
    buffers_ema <- buffers                                  (BatchNorm statistics copied, as the teachers do)
    m(t): 0.999 for the first 10% of the steps, then a cosine up to 0.999999   (mixbench.methods.ema)

It is :class:`mixbench.methods.ema.EmaModel` itself (the learned methods' teacher: the same schedule code,
the same buffer rule, no host read per step), held by :class:`ModelEma`, a method that wraps the run's
method: the step, the optimizer groups and the previews are the wrapped method's; ``after_step`` adds the
EMA update; ``eval_models`` adds the copy as ``"ema"`` (metrics ``ema_top1``, summary ``ema_*``, the tables'
EMA columns).  Being part of the method, the copy and its update count are in the method's ``state_dict``, so
``checkpoint.pt`` and ``best.pt`` hold them (a killed run resumes to the same numbers) and every tool that
builds a run's method (``tools/evaluate.py``, the cost suite) sees the copy too.  The copy never feeds back
into training: a run with ``ema=`` trains exactly as the run without it.

Refused (one line): a method that already evaluates a network labelled ``ema`` (its own teacher: AutoMix,
AdAutoMix, SUMix on one of them), since two EMA networks under one label cannot be told apart; and a method
whose evaluated network is not the model itself (AlignMixup/AE classifies through a head of its own, which an
EMA copy of the model alone would lack).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods import MixMethod, MixPreview
from mixbench.methods.base import Logs
from mixbench.methods.ema import EmaModel
from mixbench.models import StagedNet
from mixbench.rng import MixRandom

EMA_LABEL = "ema"  # the label of the learned methods' teacher: metrics ema_top1, summary ema_*


def own_ema_conflict(method: MixMethod, model: nn.Module) -> str | None:
    """Why ``method`` (set up for ``model``) cannot get an EMA copy of the model, or ``None`` when it can."""
    networks = method.eval_models(model)
    if EMA_LABEL in networks:
        return (
            f"method {method.name} keeps its own EMA teacher, already evaluated as '{EMA_LABEL}' (its "
            "options ema_momentum, ema_end_momentum, ema_constant_fraction set the schedule); drop ema="
        )
    if networks.get("") is not model:
        return (
            f"method {method.name} evaluates a network of its own rather than the model, which an EMA copy "
            "of the model would not be; drop ema="
        )
    return None


class ModelEma(MixMethod):
    """``method`` plus an EMA copy of the model, updated after each step and evaluated as ``"ema"``.

    ``ModelEma(method, momentum, end_momentum, constant_fraction)``; :meth:`attach` (or :meth:`setup`, which
    also sets ``method`` up) makes the copy of the model.
    """

    def __init__(
        self,
        method: MixMethod,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        constant_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= end_momentum <= 1.0 or not 0.0 <= constant_fraction <= 1.0:
            raise ValueError(
                "an EMA schedule needs 0 <= momentum <= end_momentum <= 1 and 0 <= constant_fraction <= 1, "
                f"got {momentum}, {end_momentum}, {constant_fraction}"
            )
        self.method = method
        self.name = method.name
        self.required_stages = method.required_stages
        self.schedule = {
            "momentum": momentum,
            "end_momentum": end_momentum,
            "constant_fraction": constant_fraction,
        }
        self.ema: EmaModel | None = None

    def setup(self, model: StagedNet, num_classes: int) -> None:
        """Set the wrapped method up for ``model``, then :meth:`attach` the copy."""
        self.method.setup(model, num_classes)
        self.attach(model)

    def attach(self, model: nn.Module) -> None:
        """Make the EMA copy of ``model`` (the wrapped method already set up); ``ValueError`` (one line) for a
        method that cannot have one (:func:`own_ema_conflict`)."""
        conflict = own_ema_conflict(self.method, model)
        if conflict is not None:
            raise ValueError(conflict)
        self.ema = EmaModel(
            model,
            self.schedule["momentum"],
            self.schedule["end_momentum"],
            self.schedule["constant_fraction"],
        )

    def _ready(self) -> EmaModel:
        if self.ema is None:
            raise RuntimeError("ModelEma: call setup() or attach() before training")
        return self.ema

    def bind(self, rng: MixRandom, label_smoothing: float = 0.0, total_steps: int = 1) -> None:
        super().bind(rng, label_smoothing, total_steps)
        self.method.bind(rng, label_smoothing, total_steps)

    def check_model(self, model: StagedNet) -> None:
        self.method.check_model(model)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return self.method.param_groups(lr, weight_decay)  # the copy is frozen: nothing of its own to train

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        return self.method.training_step(model, x, y)

    def after_step(self, model: nn.Module) -> None:
        self.method.after_step(model)
        self._ready().update(model, self.total_steps)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        return {**self.method.eval_models(model), EMA_LABEL: self._ready().module}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        return self.method.preview(model, x, y)


__all__ = ["EMA_LABEL", "ModelEma", "own_ema_conflict"]
