"""SAMix (Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup",
arXiv 2111.15454, 2021-2023), supervised version, as OpenMixup runs it (``AutoMixup`` with the SAMix
``PixelMixBlock`` options of ``configs/classification/cifar100/samix/basic/r18_l2_a2_bili_val_dp0_mul_x_cat_
L1_var_01_mlr5e_2.py``).

It is AutoMix's momentum pipeline (:mod:`mixbench.methods.automix`: EMA teacher, two independent draws of
``(lam, perm)`` per step, a backbone branch on a detached mask with plain mixup within ``lam_margin``, a Mix
Block branch through the frozen teacher, one backward pass) with a different Mix Block ("Mixer") and a
different Mix Block objective.  With ``z = f_ema^(3)(x)`` (C channels) and ``perm`` the pairing:

**lam embedding** (``lam_mul`` with ``lam_residual``; lam rescaled by ``lam_mul_k`` = k)::

    lam' = (4/3 lam^3 - 2 lam^2 + (k + 1) lam) / (k + 1/3)        (k = None: lam' = lam)
    a = z * (1 + lam'),   b = z[perm] * (2 - lam')

``lam'`` is an S-shaped map of [0, 1] onto itself with ``lam'(1/2) = 1/2``.

**Mixer** (``x_qk_concat``: query and key read the pair together; non-linear value network)::

    c = concat(a, b)                                   (2C channels)
    q = W_q c,  k = W_k c                              (two 1x1 convs 2C -> C/2, with bias)
    P = softmax(q^T k / sqrt(C/2))                     (HW x HW)
    v = V(b),  V = conv1x1(C -> C/2) - BN - ELU - conv1x1(C/2 -> 1) [- dropout]   (no conv bias)
    m = sigmoid(upsample_bilinear(P v))                (the share of x[perm] at each pixel)
    x_mix = (1 - m) * x + m * x[perm]

**Mix Block objective** (the teacher's logits ``s`` on ``x_mix``, classes ``i = y``, ``j = y[perm]``)::

    L_mix_block = l_eta + w(t) * [ max(|1 - mean(m) - lam| - 0.1, 0) - 2 * Var(m) ]
    l_eta = l_local + eta * l_global,  with  g = log(e^{s_i} + e^{s_j})   (g = s_i when i = j)
    l_local  = -[lam (s_i - g) + (1 - lam) (s_j - g)]      (the two mixed classes against each other)
    l_global = logsumexp(s) - g                           (the mixed pair against all other classes)

``mean`` and ``Var`` run over the whole batch's mask (OpenMixup's "L1+Variance" mask loss: the ratio term of
AutoMix minus twice the mask's variance, which rewards decisive masks).  ``l_local + l_global`` is exactly
the mixup cross-entropy ``-lam log p_i - (1 - lam) log p_j``, so ``eta = 1`` is AutoMix's objective and
``eta < 1`` weighs the global discrimination from the other classes less than the local smoothness between the
two mixed classes: the paper's eta-balanced mixup loss, on our reading (below).  The step's loss is
``CE(f(x), y) + mixed_CE(f(x_mix_bb), ...) + L_mix_block``.  Defaults: OpenMixup's CIFAR-100 R18 config
(alpha 2, lam_margin 0.08, ``lam_mul_k`` 0.25, eta 0.5, mask loss 0.1 constant with margin 0.1, bilinear
upsampling, value dropout 0, Mix Block at the backbone's lr; EMA 0.999 -> 0.999999 as AutoMix).  Its other
configs: ``lam_mul_k`` 1 on CUB/Aircraft, None (no rescaling) on Tiny R18, ImageNet and ViTs (0.25 on Tiny
RX50); value dropout 0.1 on CUB/ImageNet/ViTs; the mask loss's weight decays there (``openmixup_compounded``);
``neg_weight`` 1 on ImageNet and no eta at all on CUB/Aircraft (their Mix Block uses the backbone's mixup CE).

Checked against OpenMixup (``openmixup/models/heads/pmix_block.py``: ``PixelMixBlock.forward``,
``rescale_lam_mult``, ``mask_loss``; ``openmixup/models/necks/conv_necks.py``: ``ConvNeck``;
``openmixup/models/classifiers/automix.py``: ``forward_train``, ``pixel_mixup``, ``forward_k``) and the
CIFAR-100 R18 config, and found equal: the lam embedding (``lam_mul=True`` is a factor 1, ``lam_residual``),
the rescaling, the concatenation order (own, partner) read by both q and k, q/k convs with bias and no norm or
activation (``ConvModule(bias='auto')``), the value network (``ConvNeck``: bias-free convs, BN, ELU, no norm
after the last conv) on the scaled partner features, the softmax over key positions with ``1/sqrt(C/2)``,
upsampling before the sigmoid, Normal(0, 0.01) init, the L1+Variance loss on the partner's share with the Mix
Block branch's lam, the teacher's stage-3 features of the clean batch (``mask_layer=2``, 0-based) feeding both
branches, the backbone branch's detached mask with the mixup fallback within ``lam_margin``.

Readings and deliberate deviations from OpenMixup:

* **eta.** OpenMixup passes eta as ``neg_weight=0.5`` of the Mix Block's head ("eta in SAMix"): a per-class
  weight, 0.5 on the classes outside the pair, of a *softmax* soft-target cross-entropy.  Those classes have
  target 0, so the weight multiplies zeros and the official CIFAR/Tiny loss equals the plain mixup CE (eta
  has no effect; checked: the weighted and unweighted losses agree to the last bit on random logits).  Here
  eta weighs the part of the mixup CE that involves the other classes, so ``eta: 1.0`` reproduces what the
  official code computes and the default 0.5 gives eta the role the paper describes.
* The teacher's BatchNorm statistics are copied from the online network (:mod:`mixbench.methods.ema`); masks
  are upsampled to the image size (the official factor 4 on CIFAR ResNets); the Mixer's maths run in fp32
  under autocast, as the official code forces.
* The step logs AutoMix's keys; ``ce_mix_ema`` holds ``l_eta``.  The Mixer has 164,480 parameters on a CIFAR
  R18 (C = 256; AutoMix's Mix Block: 33,153).  On the quickstart's one-epoch test run (42 steps) SAMix ended
  at 33.6 / 41.8% top-1 (seeds 0 / 1).
* **One classifier head.**  OpenMixup's ``AutoMixup`` puts two linear heads on the backbone, ``head_one``
  (the clean CE) and ``head_mix`` (the mixed CE), and the Mix Block's loss reads the teacher's ``head_mix_k``
  (the EMA of ``head_mix``); its test reports up to four heads.  Here one head serves both CE terms and the
  teacher is the EMA of the whole network (the shared AutoMix machinery, :mod:`mixbench.methods.automix`).
* Not implemented, off in the SAMix recipes used here: ``mask_adjust`` (0 in every default config, 0.25 only
  in two 800/400-epoch variants), the label-free (self-supervised) objectives, SAMix-P (pre-trained Mixer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.automix import AutoMix, mask_ratio_loss, mix_pair
from mixbench.methods.base import MixPreview
from mixbench.methods.mix_block import (
    attention_readout,
    init_mix_block,
    spatial_size,
    upsample_to,
)
from mixbench.methods.registry import register_method
from mixbench.methods.stage_probe import evaluating


def rescale_lam(lam: float, k: float | None) -> float:
    """SAMix's S-shaped rescaling of lam (``lam_mul_k``): ``(4/3 lam^3 - 2 lam^2 + (k+1) lam) / (k + 1/3)``;
    fixes 0, 1/2 and 1; ``k = None`` leaves lam unchanged."""
    if k is None:
        return float(lam)
    slope = k + 1.0
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + slope * lam) / (slope - 2.0 / 3.0)


class ValueNetwork(nn.Sequential):
    """SAMix's non-linear content model: conv1x1 (C -> C/2) - BN - ELU - conv1x1 (C/2 -> 1) [- dropout]."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        hidden = max(channels // 2, 1)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ELU(),
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class SAMixBlock(nn.Module):
    """SAMix's Mixer: the share of ``x[perm]`` at each pixel from the pair's lam-embedded stage-3 features."""

    def __init__(
        self,
        channels: int,
        lam_mul_k: float | None = 0.25,
        upsample: str = "bilinear",
        value_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_channels = max(channels // 2, 1)
        self.lam_mul_k = lam_mul_k
        self.upsample = upsample
        self.query = nn.Conv2d(2 * channels, self.embed_channels, kernel_size=1)
        self.key = nn.Conv2d(2 * channels, self.embed_channels, kernel_size=1)
        self.value = ValueNetwork(channels, value_dropout)
        init_mix_block(self)  # convs Normal(0, 0.01), biases 0; BatchNorm weight 1, bias 0 (torch's default)

    def embed(self, z: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z * (1 + lam'), z[perm] * (2 - lam'))``: the pair's features, each scaled by its share."""
        rescaled = rescale_lam(lam, self.lam_mul_k)
        return z * (1.0 + rescaled), z[perm] * (2.0 - rescaled)

    def forward(self, z: torch.Tensor, perm: torch.Tensor, lam: float, size: tuple[int, int]) -> torch.Tensor:
        """Mask (B, 1, H, W) in [0, 1]: the share of ``x[perm]`` in the mix of ``x`` and ``x[perm]``."""
        with torch.autocast(z.device.type, enabled=False):
            own, partner = self.embed(z.float(), perm, lam)
            batch, _, height, width = z.shape
            pair = torch.cat([own, partner], dim=1)
            query = self.query(pair).flatten(2)  # (B, d, hw)
            key = self.key(pair).flatten(2)
            value = self.value(partner).flatten(2)  # (B, 1, hw)
            logits = attention_readout(query, key, value).transpose(1, 2).reshape(batch, 1, height, width)
            return torch.sigmoid(upsample_to(logits, size, self.upsample))


def eta_balanced_mixup_loss(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
    eta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``mean(l_local + eta * l_global)`` (module docstring); ``eta = 1`` is the mixup cross-entropy.

    With label smoothing ``e`` the loss is ``(1 - e) * l_eta + e * mean_c(-log p_c)``, which for ``eta = 1``
    is the mixup cross-entropy with smoothed targets.
    """
    logits = logits.float()
    logit_a = logits.gather(1, y_a[:, None])[:, 0]
    logit_b = logits.gather(1, y_b[:, None])[:, 0]
    pair = torch.where(y_a == y_b, logit_a, torch.logaddexp(logit_a, logit_b))
    local = -(lam * (logit_a - pair) + (1.0 - lam) * (logit_b - pair))
    global_term = torch.logsumexp(logits, dim=1) - pair
    loss = local + eta * global_term
    if label_smoothing > 0:
        uniform = -F.log_softmax(logits, dim=1).mean(dim=1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
    return loss.mean()


def mask_variance(share_of_partner: torch.Tensor) -> torch.Tensor:
    """The variance of the batch's mask values around their batch mean (OpenMixup's "Variance" term)."""
    return ((share_of_partner - share_of_partner.mean()) ** 2).mean()


def samix_mask_loss(
    share_of_partner: torch.Tensor, lam: float, margin: float, variance_weight: float
) -> torch.Tensor:
    """``max(|1 - mean(m) - lam| - margin, 0) - variance_weight * Var(m)`` (OpenMixup's "L1+Variance")."""
    return mask_ratio_loss(share_of_partner, lam, margin) - variance_weight * mask_variance(share_of_partner)


@register_method
class SAMix(AutoMix):
    name = "samix"

    def __init__(
        self,
        alpha: float = 2.0,
        lam_margin: float = 0.08,
        eta: float = 0.5,
        mask_loss_weight: float = 0.1,
        mask_loss_margin: float = 0.1,
        mask_loss_schedule: str = "constant",
        mask_variance_weight: float = 2.0,
        lam_mul_k: float | None = 0.25,
        value_dropout: float = 0.0,
        upsample: str = "bilinear",
        feature_stage: int = 3,
        mix_block_lr: float | None = None,
        mix_block_momentum: float | None = None,
        ema_momentum: float = 0.999,
        ema_end_momentum: float = 0.999999,
        ema_constant_fraction: float = 0.1,
    ) -> None:
        super().__init__(
            alpha=alpha,
            lam_margin=lam_margin,
            mask_loss_weight=mask_loss_weight,
            mask_loss_margin=mask_loss_margin,
            mask_loss_schedule=mask_loss_schedule,
            lam_channel=False,
            upsample=upsample,
            feature_stage=feature_stage,
            mix_block_lr=mix_block_lr,
            mix_block_momentum=mix_block_momentum,
            ema_momentum=ema_momentum,
            ema_end_momentum=ema_end_momentum,
            ema_constant_fraction=ema_constant_fraction,
        )
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        if lam_mul_k is not None and lam_mul_k < 0:
            raise ValueError(f"lam_mul_k must be >= 0 or null (no rescaling), got {lam_mul_k}")
        if not 0.0 <= value_dropout < 1.0:
            raise ValueError(f"value_dropout must lie in [0, 1), got {value_dropout}")
        self.eta = eta
        self.mask_variance_weight = mask_variance_weight
        self.lam_mul_k = lam_mul_k
        self.value_dropout = value_dropout

    def build_mix_block(self, channels: int) -> nn.Module:
        return SAMixBlock(channels, self.lam_mul_k, self.upsample, self.value_dropout)

    def mix_block_terms(
        self, features: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the teacher's eta-balanced loss on the live mask, the weighted L1+Variance mask loss, the
        mask)."""
        ema, mix_block = self.check_ready()
        share = mix_block(features, perm, lam, spatial_size(x))
        teacher_logits = ema(mix_pair(x, perm, share))
        balanced = eta_balanced_mixup_loss(teacher_logits, y, y[perm], lam, self.eta, self.label_smoothing)
        mask = self.current_mask_loss_weight() * samix_mask_loss(
            share, lam, self.mask_loss_margin, self.mask_variance_weight
        )
        return balanced, mask, share

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """AutoMix's preview with the Mixer in eval mode too (its value network's BatchNorm statistics)."""
        _, mix_block = self.check_ready()
        with evaluating(mix_block):
            return super().preview(model, x, y)
