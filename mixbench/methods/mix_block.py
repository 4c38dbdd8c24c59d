"""What the learned mixing methods (AutoMix, SAMix, AdAutoMix) share.

* a momentum (EMA) teacher of the backbone (:mod:`mixbench.methods.ema`), whose stage-3 features of the clean
  batch drive the mask generator and whose classification of the generated images trains it;
* a mask generator ("Mix Block") built in :meth:`LearnedMixMethod.setup`, sized to the channel count of the
  teacher's hidden state at ``feature_stage`` (3 by default; OpenMixup's WRN recipes use 2) that a dummy
  forward pass finds; it joins the optimizer through :meth:`LearnedMixMethod.param_groups` with its own
  learning rate and SGD momentum when the recipe gives them (``mix_block_lr``, ``mix_block_momentum``;
  ``None`` = the backbone's);
* both networks are evaluated every epoch: ``""`` (online) and ``"ema"`` (teacher), written as ``top1`` and
  ``ema_top1``; the published numbers take the better of the two, which this benchmark never does silently;
* the Mix Blocks' common maths: mask logits read by spatial attention over the feature grid
  (:func:`attention_readout`) and upsampled to the image (:func:`upsample_to`), and previews drawn from the
  teacher's features in eval mode (:meth:`LearnedMixMethod.preview_features`);
* the schedule of the mask loss's weight (AutoMix, SAMix), :func:`mask_loss_weight_at`, driven by the
  teacher's host copy of the optimizer-step count (:meth:`LearnedMixMethod.steps_done`), so that it survives
  checkpoints and no step reads a device value.
* under ``compile=true`` (:meth:`LearnedMixMethod.compile_parts`) the teacher's train-mode passes
  (``teacher(x)``, ``forward_features`` to the feature stage, ``forward_from``) and the Mix Block's train-mode
  forward run compiled, each through a :class:`TrainModePass` held in the network's instance attributes, out
  of the module tree (the ``state_dict`` keys and checkpoints are those of an eager run); the compiled
  functions read the parameters at each call, so they see the EMA updates made in place.  Eval-mode passes
  (evaluation, previews, the stage probe) stay eager.

The Mix Block's initial weights come from torch's global generator, which the trainer seeds for the initial
weights of the run (``setup`` runs right after the model is built); every per-step random choice comes from
the run's :class:`~mixbench.rng.MixRandom`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import MixMethod, device_scalar
from mixbench.methods.ema import EmaModel
from mixbench.methods.stage_probe import evaluating, stage_shape
from mixbench.models.base import StagedNet

# what the learned methods call on the teacher: teacher(x), and its two halves
TEACHER_PASSES = ("forward", "forward_features", "forward_from")
FEATURE_STAGE = 3  # default: the Mix Block reads the hidden state after the third stage (CIFAR R18: 256x8x8)
PROBE_SIZE = 32  # side of the dummy image used to find the stage's channel count
UPSAMPLE_MODES = ("nearest", "bilinear")
MASK_LOSS_SCHEDULES = ("cosine", "constant", "openmixup_compounded")
COMPOUNDED_FLOOR = 1e-30  # below this the compounded weight is 0 (it reaches it within ~5% of a run)


def stage_channels(model: StagedNet, stage: int) -> int:
    """Channels of ``model``'s hidden state at ``stage``, found with one dummy forward pass in eval mode."""
    return int(stage_shape(model, stage, PROBE_SIZE)[0])


def init_mix_block(block: nn.Module, std: float = 0.01) -> None:
    """Normal(0, std) weights and zero biases for every conv (OpenMixup's Mix Block init): masks start
    flat."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def attention_scale(channels: int) -> float:
    """``1 / sqrt(d)`` for a query/key embedding of ``d`` channels."""
    return 1.0 / math.sqrt(channels)


def attention_readout(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``softmax(q^T k / sqrt(d)) v^T``: each query position's attention-weighted value, (..., hw, 1).

    ``query`` and ``key`` (..., d, hw) embed the positions of the feature grid, ``value`` (..., 1, hw) is one
    logit per position; the softmax runs over the key positions.  Both Mix Blocks read their mask logits so.
    """
    scores = query.transpose(-1, -2) @ key * attention_scale(query.shape[-2])
    return torch.softmax(scores, dim=-1) @ value.transpose(-1, -2)


def check_upsample_mode(mode: str) -> None:
    """Raise a ``ValueError`` naming the valid modes when :func:`upsample_to` cannot use ``mode``."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"unknown upsampling mode '{mode}'; valid: {', '.join(UPSAMPLE_MODES)}")


def upsample_to(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Feature-grid maps (B, 1, h, w) resized to the image size (``nearest`` or ``bilinear``)."""
    check_upsample_mode(mode)
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def spatial_size(x: torch.Tensor) -> tuple[int, int]:
    """``(H, W)`` of a batch (B, C, H, W): the size a Mix Block's masks are upsampled to."""
    return x.shape[-2], x.shape[-1]


def check_mask_loss_schedule(schedule: str) -> None:
    """Raise a ``ValueError`` naming the valid schedules when :func:`mask_loss_weight_at` cannot use it."""
    if schedule not in MASK_LOSS_SCHEDULES:
        raise ValueError(f"unknown mask_loss_schedule '{schedule}'; valid: {', '.join(MASK_LOSS_SCHEDULES)}")


def mask_loss_weight_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    """The mask loss's weight at optimizer step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``cosine`` (the AutoMix article: "a loss weight that gradually goes to 0 during training, initial value
    0.1")::

        w(t) = base * (1 + cos(pi * t / T)) / 2          (base at t = 0, 0 at t = T)

    ``constant``: ``base`` throughout (OpenMixup's CIFAR/Tiny CNN configs of AutoMix and SAMix have no hook on
    the weight).  ``openmixup_compounded``: what OpenMixup's ``CustomCosineAnnealingHook`` (``attr_base=0.1,
    min_attr=0, by_epoch=False``, in its CUB/Aircraft/Cars, ImageNet and CIFAR-ViT configs) computes: every
    iteration it anneals the *current* value rather than the base, so the factors multiply::

        w(t) = base * prod_{s=0..t} (1 + cos(pi * s / T)) / 2

    which falls below 10% of ``base`` after 3.3% of a CUB run (200 epochs of 374 steps) and below 0.1% after
    4.8% (ImageNet, 100 epochs of 5,005 steps: 1.8% and 2.6%).
    """
    check_mask_loss_schedule(schedule)
    total = max(int(total_steps), 1)
    step = min(max(int(step), 0), total)
    if schedule == "constant":
        return float(base)
    if schedule == "cosine":
        return float(base) * (1.0 + math.cos(math.pi * step / total)) / 2.0
    factors = compounded_cosine_factors(total)
    return float(base) * float(factors[step]) if step < len(factors) else 0.0


@functools.lru_cache(maxsize=4)
def compounded_cosine_factors(total_steps: int) -> np.ndarray:
    """``prod_{s=0..t} (1 + cos(pi s / T)) / 2`` for t = 0, 1, ... while above :data:`COMPOUNDED_FLOOR`
    (computed once per run length, on the host)."""
    steps = np.arange(total_steps + 1, dtype=np.float64)
    products = np.cumprod((1.0 + np.cos(np.pi * steps / total_steps)) / 2.0)
    return products[products > COMPOUNDED_FLOOR]


class TrainModePass:
    """``module.<name>(...)`` through ``compiled`` while ``module`` is in train mode, the class's own method
    otherwise.

    Held in the module's instance attributes (set with ``object.__setattr__``), so the method's existing calls
    (``teacher(x)``, ``teacher.forward_from(h, k)``, ``mix_block(z, ...)``) reach it unchanged, while the
    module tree, hence ``state_dict``, is untouched.  Inside a trace (``torch.compiler.is_compiling()``) it
    calls the eager method, so that a compiled ``forward`` inlines the ``forward_features`` and
    ``forward_from`` it calls rather than nesting compiled functions.  Eval-mode calls (evaluation, previews,
    the stage probe) stay eager: they would each add graphs for a few calls per epoch.  A deep copy or an
    unpickled copy of the module holds eager passes of its own (the compiled function belongs to the original
    module).
    """

    def __init__(self, module: nn.Module, name: str, compiled: Callable | None) -> None:
        self.module, self.name, self.compiled = module, name, compiled

    def __call__(self, *args, **kwargs):
        if self.compiled is not None and self.module.training and not torch.compiler.is_compiling():
            return self.compiled(*args, **kwargs)
        return getattr(type(self.module), self.name)(self.module, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> TrainModePass:
        return TrainModePass(memo.get(id(self.module), self.module), self.name, None)

    def __getstate__(self) -> dict:
        return {"module": self.module, "name": self.name, "compiled": None}


def compile_train_passes(
    module: nn.Module, names: Sequence[str], compiler: Callable[[Callable], Callable]
) -> None:
    """Route each ``module.<name>`` through ``compiler`` applied to the class's method bound to ``module``
    (see :class:`TrainModePass`).  A compiled bound method reads the module's parameters and buffers at
    every call: in-place updates (the EMA step) are seen without a new trace."""
    for name in names:
        eager = getattr(type(module), name).__get__(module)
        object.__setattr__(module, name, TrainModePass(module, name, compiler(eager)))


class LearnedMixMethod(MixMethod):
    """Base class: an EMA teacher, a Mix Block on the teacher's stage-k features, both networks evaluated.

    Under ``compile=true``, :meth:`compile_parts` compiles the teacher's train-mode passes (its full forward,
    ``forward_features`` and ``forward_from``) and the Mix Block's train-mode forward in place, without
    changing the module tree (module docstring).
    """

    required_stages: tuple[int, ...] = (FEATURE_STAGE,)

    def __init__(
        self,
        feature_stage: int,
        mix_block_lr: float | None,
        mix_block_momentum: float | None,
        ema_momentum: float,
        ema_end_momentum: float,
        ema_constant_fraction: float,
    ) -> None:
        """The options every learned method takes; their defaults live in each method's signature (its
        config)."""
        super().__init__()
        if feature_stage < 1:
            raise ValueError(f"feature_stage must be a hidden stage (>= 1), got {feature_stage}")
        if mix_block_lr is not None and mix_block_lr <= 0:
            raise ValueError(
                f"mix_block_lr must be positive or null (= the backbone's lr), got {mix_block_lr}"
            )
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

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        """The teacher's passes (:data:`TEACHER_PASSES`) and the Mix Block's forward, compiled for train
        mode.

        Every call keeps its arguments: the teacher's are the batch (or a hidden state) and a stage fixed for
        the run; the Mix Block's are the features, the pairing (a tensor), ``lam`` and the image size.
        ``lam`` is a host float that changes every step: AutoMix's Mix Block does not read it (without
        ``lam_channel``, see :meth:`mix_block_compiles`) and SAMix's reads it as a graph input from its
        second value on (Dynamo does not specialise floats: one more trace, then none), so neither is traced
        again per step; AdAutoMix passes its ratios as a tensor.
        """
        ema, mix_block = self.check_ready()
        compile_train_passes(ema.module, TEACHER_PASSES, compiler)
        if self.mix_block_compiles():
            compile_train_passes(mix_block, ("forward",), compiler)

    def mix_block_compiles(self) -> bool:
        """Whether :meth:`compile_parts` compiles the Mix Block: not AutoMix's with ``lam_channel``, whose
        ``torch.full_like(z, lam)`` makes Dynamo specialise on each step's ``lam`` (a new trace every step,
        eager after the recompile limit); that Mix Block is under 1% of the step."""
        return not getattr(self.mix_block, "lam_channel", False)

    # -- shared pieces of a step ---------------------------------------------------------------------
    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """The EMA teacher's hidden state at ``feature_stage`` of the clean batch (no gradient to
        anything)."""
        ema, _ = self.check_ready()
        return ema.module.forward_features(x, self.feature_stage)

    @torch.no_grad()
    def preview_features(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`teacher_features` with the teacher in eval mode (its running statistics), for previews."""
        ema, _ = self.check_ready()
        with evaluating(ema):
            return self.teacher_features(x)

    def steps_done(self) -> int:
        """Optimizer steps taken so far: the teacher's host copy of its update count (restored with the
        checkpoint)."""
        ema, _ = self.check_ready()
        return ema.updates_done

    def momentum_log(self) -> torch.Tensor:
        """The momentum the next EMA update will use, as a float64 log value on the Mix Block's device."""
        ema, mix_block = self.check_ready()
        device = next(mix_block.parameters()).device
        return device_scalar(ema.momentum(self.total_steps), device, dtype=torch.float64)
