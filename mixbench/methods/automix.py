"""AutoMix (Liu et al., "AutoMix: Unveiling the Power of Mixup for Stronger Classifiers", ECCV 2022).

A learned Mix Block generates a pixel mask for each pair from the EMA teacher's stage-3 features of the clean
batch ``z = f_ema^(3)(x)`` (CIFAR R18: 256x8x8; ``feature_stage`` 2 for OpenMixup's WRN recipes, which also
give the Mix Block its own lr and SGD momentum 0: ``mix_block_lr``, ``mix_block_momentum``); with ``perm`` a
pairing and ``C`` the stage's channels::

    q = W_qk z_i,  k = W_qk z_perm         (one 1x1 conv C -> C/2 shared by query and key)
    P = softmax(q^T k / sqrt(C/2))         (HW x HW, rows: positions of z_i, softmax over positions of z_perm)
    v = W_v z_perm                         (1x1 conv C -> 1)
    m = sigmoid(upsample_nearest(P v))     (the share of x_perm at each pixel, at the image size)
    x_mix = (1 - m) * x + m * x[perm]      (label: lam * y + (1 - lam) * y[perm])

With ``lam_channel`` (the ImageNet/CUB/ViT recipes) a constant channel ``lam`` is appended to ``z_i`` and
``1 - lam`` to ``z_perm`` before the convolutions; the CIFAR/Tiny recipes do not (default false).

Each step draws two independent ``(lam, perm)``, lam ~ Beta(alpha, alpha) (alpha 2), one per branch, and
minimises, with one backward pass::

    CE(f(x), y)                                           clean loss, online network
  + mixed_CE(f(x_mix[mask.detach()]), y, y[perm_b], lam_b)  trains the online network only
  + mixed_CE(f_ema(x_mix[mask]), y, y[perm_m], lam_m)       trains the Mix Block only (EMA weights are frozen)
  + w(t) * max(|1 - mean(m) - lam_m| - 0.1, 0)              mask loss on the Mix Block's mask

The mask loss's weight ``w(t)`` starts at ``mask_loss_weight`` (0.1) and, by default, decays to 0 over the run
by a cosine in the optimizer step ``t`` (``mask_loss_schedule: cosine``; the article: "a loss weight that
gradually goes to 0 during training, initial value 0.1"; see
:func:`mixbench.methods.mix_block.mask_loss_weight_at`).
OpenMixup's configs differ by scenario: its CIFAR-100 (R18, RX50, WRN) and Tiny-ImageNet AutoMix configs keep
0.1 constant (``constant``), while its CUB/Aircraft/Cars, ImageNet and CIFAR-ViT configs decay it with a hook
that compounds (``openmixup_compounded``: under 10% of 0.1 after ~3% of the run).  None of OpenMixup's AutoMix
configs sets ``mask_adjust`` (0), which is therefore not implemented.  The weight is a host float computed
from the host step count (no device read).  On the quickstart's one-epoch test run (21 steps) the cosine
default ended at 27.6 / 52.4% top-1 (seeds 0 / 1) against 31.3 / 51.8% with the former constant weight.

``mean(m)`` is the share of ``x[perm]`` over the whole batch, so ``1 - mean(m)`` is the share of ``x``, whose
label weight is ``lam``.  When the backbone branch's ``lam <= lam_margin`` or ``>= 1 - lam_margin`` (0.08) its
mask is the constant ``1 - lam``: plain mixup.  The teacher's momentum follows :mod:`mixbench.methods.ema`
(0.999, then cosine to 0.999999 after 10% of the steps).  Both the online and the EMA network are evaluated.
``lam_channel`` is off in OpenMixup's CIFAR-100 and Tiny-ImageNet CNN configs and on (``lam_concat=True``) in
its CUB/Aircraft/Cars, ImageNet and CIFAR-100 ViT (DeiT-S, Swin-T, ConvNeXt-T) configs.

This follows OpenMixup's CIFAR configuration (``mask_mode="none_v_"``: value on ``z_perm``, ``P v`` is the
share of ``x_perm``; nearest upsampling; Mix Block trained with the backbone's learning rate), and its
forward passes: the teacher runs in train mode (batch statistics), the online network sees the clean and the
mixed batch in two separate passes.  The Mix Block's query/key/value maths run in fp32 under autocast, as
the official code forces.  Deliberate deviations:

* the EMA teacher's BatchNorm statistics are copied from the online network after each step (the official
  teacher keeps the statistics of its own train-mode passes), see :mod:`mixbench.methods.ema`;
* the mask is upsampled to the image size rather than by a fixed factor (identical at 32 px on CIFAR
  ResNets: 8 -> 32), so any input size works;
* the options of the official code that the AutoMix recipes leave off (``mask_adjust``, pre-heads,
  ``switch_off``) are not implemented; SAMix's Mix Block is :mod:`mixbench.methods.samix`.

Cost of one step, in units of ``F`` = one train-mode forward pass of the network (CPU, r18 at 32 px, batch
32, one thread: a backward pass with weight gradients ``B`` ~ 2.05 F, a backward pass to the input only
``B_in`` ~ 0.9 F; vanilla = F + B + the optimizer ~ 3.3 F): the teacher's stages 1-3 on the clean batch, no
gradient (~0.77 F); the online network's forward and backward on the clean and on the mixed batch (2 (F + B));
the teacher's forward on the Mix Block's mixed batch and its backward to the mask only (F + B_in: the
teacher's parameters never require gradients); the Mix Block twice (backbone mask without gradient, its own
mask with gradient) and the EMA update, under 1% together.  With the optimizer step about 9 F, 2.75x vanilla;
the step measures 2.85-2.9x (15 interleaved rounds).  The official code runs the teacher through all four
stages on the clean batch (~0.2 F more).

For wrappers (SUMix): :meth:`AutoMix.mix_with_model` returns the backbone branch's mixed batch (detached
mask) with the Mix Block's terms on an independent draw as the batch's ``own_loss``, from one teacher forward
to stage 3 (earlier versions ran that forward twice in a wrapper's step, once per branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import (
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_INPUT,
    STEP,
    Logs,
    MixedBatch,
    MixPreview,
    add_passes,
    device_scalar,
    features_no_grad,
    mixed_cross_entropy,
)
from mixbench.methods.mix_block import (
    LearnedMixMethod,
    attention_readout,
    check_mask_loss_schedule,
    check_upsample_mode,
    init_mix_block,
    mask_loss_weight_at,
    spatial_size,
    upsample_to,
)
from mixbench.methods.registry import register_method


class PixelMixBlock(nn.Module):
    """AutoMix's Mix Block: the share of ``x[perm]`` at every pixel, from the pair's stage-3 features."""

    def __init__(self, channels: int, lam_channel: bool = False, upsample: str = "nearest") -> None:
        super().__init__()
        in_channels = channels + int(lam_channel)
        self.embed_channels = max(channels // 2, 1)
        self.lam_channel = lam_channel
        self.upsample = upsample
        self.query_key = nn.Conv2d(in_channels, self.embed_channels, kernel_size=1)
        self.value = nn.Conv2d(in_channels, 1, kernel_size=1)
        init_mix_block(self)

    def forward(self, z: torch.Tensor, perm: torch.Tensor, lam: float, size: tuple[int, int]) -> torch.Tensor:
        """Mask (B, 1, H, W) in [0, 1]: the share of ``x[perm]`` in the mix of ``x`` and ``x[perm]``."""
        with torch.autocast(z.device.type, enabled=False):
            z_self, z_partner = self._with_lam(z.float(), perm, lam)
            batch, _, height, width = z.shape
            query = self.query_key(z_self).flatten(2)  # (B, d, hw)
            key = self.query_key(z_partner).flatten(2)
            value = self.value(z_partner).flatten(2)  # (B, 1, hw)
            logits = attention_readout(query, key, value).transpose(1, 2).reshape(batch, 1, height, width)
            return torch.sigmoid(upsample_to(logits, size, self.upsample))

    def _with_lam(self, z: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        partner = z[perm]
        if not self.lam_channel:
            return z, partner
        lam_map = torch.full_like(z[:, :1], lam)
        return torch.cat([z, lam_map], dim=1), torch.cat([partner, 1.0 - lam_map], dim=1)


def mix_pair(x: torch.Tensor, perm: torch.Tensor, share_of_partner: torch.Tensor | float) -> torch.Tensor:
    """``(1 - m) * x + m * x[perm]`` for a mask or a constant share ``m`` of the partner."""
    return (1.0 - share_of_partner) * x + share_of_partner * x[perm]


def mask_ratio_loss(share_of_partner: torch.Tensor, lam: float, margin: float) -> torch.Tensor:
    """``max(|1 - mean(m) - lam| - margin, 0)``: the batch's share of ``x`` should be ``lam`` within
    ``margin``."""
    return (torch.abs(1.0 - share_of_partner.mean() - lam) - margin).clamp_min(0.0)


@dataclass
class AutoMixLosses:
    """The four terms of one AutoMix step (their sum is the loss) and what the step drew."""

    clean: torch.Tensor
    backbone_mix: torch.Tensor
    mix_block_mix: torch.Tensor
    mask: torch.Tensor
    lam_backbone: float
    lam_mix_block: float
    backbone_fell_back_to_mixup: bool
    mix_block_share: torch.Tensor
    mask_loss_weight: float

    def total(self) -> torch.Tensor:
        return self.clean + self.backbone_mix + self.mix_block_mix + self.mask


@register_method
class AutoMix(LearnedMixMethod):
    name = "automix"

    def __init__(
        self,
        alpha: float = 2.0,
        lam_margin: float = 0.08,
        mask_loss_weight: float = 0.1,
        mask_loss_margin: float = 0.1,
        mask_loss_schedule: str = "cosine",
        lam_channel: bool = False,
        upsample: str = "nearest",
        feature_stage: int = 3,
        mix_block_lr: float | None = None,
        mix_block_momentum: float | None = None,
        ema_momentum: float = 0.999,
        ema_end_momentum: float = 0.999999,
        ema_constant_fraction: float = 0.1,
    ) -> None:
        super().__init__(
            feature_stage,
            mix_block_lr,
            mix_block_momentum,
            ema_momentum,
            ema_end_momentum,
            ema_constant_fraction,
        )
        if not 0.0 <= lam_margin < 0.5:
            raise ValueError(f"lam_margin must lie in [0, 0.5), got {lam_margin}")
        check_upsample_mode(upsample)  # refuses an unknown mode now, not at step 1
        check_mask_loss_schedule(mask_loss_schedule)
        self.alpha = alpha
        self.lam_margin = lam_margin
        self.mask_loss_weight = mask_loss_weight
        self.mask_loss_margin = mask_loss_margin
        self.mask_loss_schedule = mask_loss_schedule
        self.lam_channel = lam_channel
        self.upsample = upsample

    def build_mix_block(self, channels: int) -> nn.Module:
        return PixelMixBlock(channels, lam_channel=self.lam_channel, upsample=self.upsample)

    def current_mask_loss_weight(self) -> float:
        """The mask loss's weight at this step (host arithmetic on the host step count)."""
        return mask_loss_weight_at(
            self.steps_done(), self.total_steps, self.mask_loss_weight, self.mask_loss_schedule
        )

    def passes(self) -> dict[str, float]:
        """The teacher's stages 1-k (no grad), the online network on the clean and on the mixed batch (one
        step + one forward and backward: one backward of their sum), and the teacher on the Mix Block's mix
        with its backward to the mask (the teacher's weights take no gradient)."""
        return add_passes(self.mix_passes(), {STEP: 1.0, FORWARD_BACKWARD: 1.0})

    def mix_passes(self) -> dict[str, float]:
        return {features_no_grad(self.feature_stage): 1.0, FORWARD_BACKWARD_INPUT: 1.0}

    def draw(self, batch_size: int) -> tuple[float, torch.Tensor]:
        """One ``(lam, perm)``: lam ~ Beta(alpha, alpha), then a pairing of the batch."""
        return float(self.rng.beta(self.alpha)), self.rng.permutation(batch_size)

    def compute_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AutoMixLosses:
        lam_mb, lam_bb = float(self.rng.beta(self.alpha)), float(self.rng.beta(self.alpha))
        perm_mb, perm_bb = self.rng.permutation(x.shape[0]), self.rng.permutation(x.shape[0])
        features = self.teacher_features(x)
        backbone_batch = self.backbone_batch(features, x, y, lam_bb, perm_bb)
        mix_block_mix, mask, share_mb = self.mix_block_terms(features, x, y, lam_mb, perm_mb)
        smoothing = self.label_smoothing
        clean = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        backbone_mix = mixed_cross_entropy(model(backbone_batch.x), y, y[perm_bb], lam_bb, smoothing)
        return AutoMixLosses(
            clean=clean,
            backbone_mix=backbone_mix,
            mix_block_mix=mix_block_mix,
            mask=mask,
            lam_backbone=lam_bb,
            lam_mix_block=lam_mb,
            backbone_fell_back_to_mixup=backbone_batch.mask is None,
            mix_block_share=share_mb.detach().mean(),
            mask_loss_weight=self.current_mask_loss_weight(),
        )

    def backbone_batch(
        self, features: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
    ) -> MixedBatch:
        """The backbone's mixed batch: the Mix Block's mask without gradient, or mixup within ``lam_margin``
        of 0 or 1 (then ``mask`` is None)."""
        _, mix_block = self.check_ready()
        if lam <= self.lam_margin or lam >= 1.0 - self.lam_margin:
            return MixedBatch(x=mix_pair(x, perm, 1.0 - lam), y_a=y, y_b=y[perm], lam=lam, perm=perm)
        with torch.no_grad():  # detached: the backbone's loss never reaches the Mix Block
            share = mix_block(features, perm, lam, spatial_size(x))
        return MixedBatch(x=mix_pair(x, perm, share), y_a=y, y_b=y[perm], lam=lam, perm=perm, mask=share)

    def mix_block_terms(
        self, features: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the EMA teacher's mixed CE on the live mask, the weighted mask loss, the mask): trains the Mix
        Block."""
        ema, mix_block = self.check_ready()
        share = mix_block(features, perm, lam, spatial_size(x))
        teacher_logits = ema(mix_pair(x, perm, share))
        mix_block_mix = mixed_cross_entropy(teacher_logits, y, y[perm], lam, self.label_smoothing)
        mask = self.current_mask_loss_weight() * mask_ratio_loss(share, lam, self.mask_loss_margin)
        return mix_block_mix, mask, share

    def mix_with_model(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, capture_stage: int | None = None
    ) -> MixedBatch:
        """For wrappers such as SUMix, which replace the online network's losses: the backbone branch's
        mixed batch (one draw of ``(lam, perm)``, detached mask) with the Mix Block branch's loss as its
        ``own_loss`` (EMA mixed CE + mask loss, on an independent second draw), both from one teacher
        forward of the clean batch.  The online ``model`` is not run (its clean pass is the wrapper's:
        ``capture_stage`` is not used)."""
        lam_bb, perm_bb = self.draw(x.shape[0])
        lam_mb, perm_mb = self.draw(x.shape[0])
        features = self.teacher_features(x)
        batch = self.backbone_batch(features, x, y, lam_bb, perm_bb)
        mix_block_mix, mask, _ = self.mix_block_terms(features, x, y, lam_mb, perm_mb)
        batch.own_loss = mix_block_mix + mask
        return batch

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        losses = self.compute_losses(model, x, y)
        logs = {
            "lam": device_scalar(losses.lam_backbone, x.device),
            "lam_mix_block": device_scalar(losses.lam_mix_block, x.device),
            "mix_block_share_of_b": losses.mix_block_share,
            "ce_clean": losses.clean.detach(),
            "ce_mix": losses.backbone_mix.detach(),
            "ce_mix_ema": losses.mix_block_mix.detach(),
            "mask_loss": losses.mask.detach(),
            "mask_loss_weight": device_scalar(losses.mask_loss_weight, x.device),
            "ema_momentum": self.momentum_log(),
        }
        return losses.total(), logs

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """The Mix Block's mask for a random pairing and lam, on the EMA teacher's features (eval mode)."""
        _, mix_block = self.check_ready()
        lam, perm = self.draw(x.shape[0])
        share = mix_block(self.preview_features(x), perm, lam, spatial_size(x))
        rows = {
            "source a": x,
            "source b": x[perm],
            "mask (share of b)": share,
            "mixed": mix_pair(x, perm, share),
        }
        share_of_b = float(share.mean())
        note = f"lam {lam:.2f}; batch share of b {share_of_b:.2f} (the mask loss asks for ~{1 - lam:.2f})"
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), lam), note=note)
