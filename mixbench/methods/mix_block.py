"""What the learned mixing methods (AutoMix, AdAutoMix) share.

* a momentum (EMA) teacher of the backbone (:mod:`mixbench.methods.ema`), whose stage-3 features of the clean
  batch drive the mask generator and whose classification of the generated images trains it;
* a mask generator ("Mix Block") built in :meth:`LearnedMixMethod.setup`, sized to the channel count of the
  teacher's hidden state at ``feature_stage`` (3 by default; OpenMixup's WRN recipes use 2) that a dummy
  forward pass finds; it joins the optimizer through :meth:`LearnedMixMethod.param_groups` with its own
  learning rate and SGD momentum when the recipe gives them (``mix_block_lr``, ``mix_block_momentum``;
  ``None`` = the backbone's);
* both networks are evaluated every epoch: ``""`` (online) and ``"ema"`` (teacher), written as ``top1`` and
  ``ema_top1``; the published numbers take the better of the two, which this benchmark never does silently.

The Mix Block's initial weights come from torch's global generator, which the trainer seeds for the initial
weights of the run (``setup`` runs right after the model is built); every per-step random choice comes from
the run's :class:`~mixbench.rng.MixRandom`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import MixMethod
from mixbench.methods.ema import EmaModel
from mixbench.models.base import StagedNet

FEATURE_STAGE = 3  # default: the Mix Block reads the hidden state after the third stage (CIFAR R18: 256x8x8)
PROBE_SIZE = 32  # side of the dummy image used to find the stage's channel count


@torch.no_grad()
def stage_channels(model: StagedNet, stage: int) -> int:
    """Channels of ``model``'s hidden state at ``stage``, found with one dummy forward pass in eval mode."""
    model.check_stage(stage)
    reference = next(model.parameters())
    probe = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()
    try:
        hidden = model.forward_features(probe, stage)
    finally:
        model.train(was_training)
    return int(hidden.shape[1])


def init_mix_block(block: nn.Module, std: float = 0.01) -> None:
    """Normal(0, std) weights and zero biases for every conv (OpenMixup's Mix Block init): masks start flat."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def attention_scale(channels: int) -> float:
    """``1 / sqrt(d)`` for a query/key embedding of ``d`` channels."""
    return 1.0 / math.sqrt(channels)


def upsample_to(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Feature-grid maps (B, 1, h, w) resized to the image size (``nearest`` or ``bilinear``)."""
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"unknown upsampling mode '{mode}'; valid: nearest, bilinear")


class LearnedMixMethod(MixMethod):
    """Base class: an EMA teacher, a Mix Block on the teacher's stage-k features, both networks evaluated."""

    required_stages: tuple[int, ...] = (FEATURE_STAGE,)

    def __init__(
        self,
        feature_stage: int = FEATURE_STAGE,
        mix_block_lr: float | None = None,
        mix_block_momentum: float | None = None,
        ema_momentum: float = 0.999,
        ema_end_momentum: float = 0.999999,
        ema_constant_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if feature_stage < 1:
            raise ValueError(f"feature_stage must be a hidden stage (>= 1), got {feature_stage}")
        if mix_block_lr is not None and mix_block_lr <= 0:
            raise ValueError(f"mix_block_lr must be positive or null (= the backbone's lr), got {mix_block_lr}")
        if not 0.0 <= ema_momentum <= ema_end_momentum <= 1.0:
            raise ValueError(
                f"need 0 <= ema_momentum <= ema_end_momentum <= 1, got {ema_momentum} and {ema_end_momentum}"
            )
        self.feature_stage = int(feature_stage)
        self.required_stages = (self.feature_stage,)
        self.mix_block_lr = mix_block_lr
        self.mix_block_momentum = mix_block_momentum
        self.ema_momentum = ema_momentum
        self.ema_end_momentum = ema_end_momentum
        self.ema_constant_fraction = ema_constant_fraction
        self.num_classes = 0
        self.ema: EmaModel | None = None
        self.mix_block: nn.Module | None = None

    # -- building ------------------------------------------------------------------------------------
    def build_mix_block(self, channels: int) -> nn.Module:
        raise TypeError(f"{type(self).__name__} must define build_mix_block()")

    def setup(self, model: StagedNet, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        reference = next(model.parameters())
        self.mix_block = self.build_mix_block(stage_channels(model, self.feature_stage)).to(reference.device)
        self.ema = EmaModel(model, self.ema_momentum, self.ema_end_momentum, self.ema_constant_fraction)

    def check_ready(self) -> tuple[EmaModel, nn.Module]:
        if self.ema is None or self.mix_block is None:
            raise RuntimeError(f"{self.name}: call setup(model, num_classes) before training or previewing")
        return self.ema, self.mix_block

    # -- the trainer's hooks -------------------------------------------------------------------------
    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        _, mix_block = self.check_ready()
        params = [p for p in mix_block.parameters() if p.requires_grad]
        group = {"params": params, "lr": lr if self.mix_block_lr is None else float(self.mix_block_lr)}
        group["weight_decay"] = weight_decay
        if self.mix_block_momentum is not None:  # SGD's momentum for this group (OpenMixup WRN: 0)
            group["momentum"] = float(self.mix_block_momentum)
        return [group]

    def after_step(self, model: nn.Module) -> None:
        ema, _ = self.check_ready()
        ema.update(model, self.total_steps)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        ema, _ = self.check_ready()
        return {"": model, "ema": ema.module}

    # -- shared pieces of a step ---------------------------------------------------------------------
    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """The EMA teacher's hidden state at ``feature_stage`` of the clean batch (no gradient to anything)."""
        ema, _ = self.check_ready()
        return ema.module.forward_features(x, self.feature_stage)

    def momentum_log(self) -> torch.Tensor:
        ema, _ = self.check_ready()
        return torch.tensor(ema.momentum(self.total_steps), dtype=torch.float64)
