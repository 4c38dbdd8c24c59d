"""AdAutoMix (Qin et al., "Adversarial AutoMixup", ICLR 2024).

A generator mixes ``N`` images (default 3; ``random_num_sources`` draws N uniformly in {2, .., num_sources}
each step) from the EMA teacher's stage-3 features of the clean batch ``z = f_ema^(3)(x)``.  With sources
``pi_1 = identity, pi_2, .., pi_N`` (random pairings) and ratios ``lam_i = u_i / sum_j u_j``,
``u_i ~ Beta(1, 1)``::

    z_i = lam_i * z[pi_i]                                   (lam embedding, see below)
    q_i = W_q z_i,  k_i = W_k z_i   (1x1 convs C -> C/2),    v_i = W_v z_i   (1x1 conv C -> 1)
    A_i = softmax(sum_{j != i} q_i^T k_j / sqrt(C/2))       (HW x HW, softmax over the last axis)
    M_i = softmax_i(upsample_bilinear(A_i v_i))              (masks sum to 1 at every pixel)
    x_gen = sum_i M_i * x[pi_i],    target t = sum_i lam_i * onehot(y[pi_i])

Losses (one backward pass).  The classifier (online network ``f``), on a generated batch whose masks are
computed without gradient and on an N-way mixup with the same ratios and pairings::

    L_f = softCE(f(x_gen.detach()), t) + (1 - a) * CE(f(x), y) + a * softCE(f(sum_i lam_i x[pi_i]), t),
    a = 0.5

The generator, through the frozen EMA teacher, on an independent draw of ratios and pairings; on adversarial
steps (every ``adv_interval`` = 2nd step, counted by the teacher's update counter, which survives
checkpoints)::

    L_g = -b * softCE(f_ema(x_gen), t) + (1 - b) * (1 - S),   b = 0.3
    S   = mean over the batch of sum_i lam_i * cos(f_ema(x_gen), f_ema(x[pi_i]))      (logits)

and ``L_g = softCE(f_ema(x_gen), t)`` (cooperative, as AutoMix) on the other steps.  The step's loss is
``L_f + L_g``.  Why one optimizer is enough: ``L_g``'s graph holds the generator's parameters and the teacher,
whose parameters never require gradients, and the features it reads are computed without gradient; ``L_f``'s
graph holds the online network and images whose masks were computed without gradient.  So the generator's
parameters receive exactly ``dL_g`` (the adversarial sign lives in the loss) and the online network exactly
``dL_f``: the backbone never gets the adversarial gradient, and no gradient reversal is needed.

Readings and deliberate deviations from the official code (OpenMixup ``AdAutoMix``/``AdaptiveMask``):

* **Sign of the similarity term.** The paper adds the cosine similarity to keep generated images close to
  their sources (to "prevent the collapse of the inherent meanings of images").  The official code *adds*
  ``+(1 - b) * S`` to the minimised loss, which pushes the generated images away from their sources.  Here the
  minimised term is the distance ``1 - S``, which decreases as the similarity increases.
* **How masks relate to lam_i.** Neither the paper nor the code constrains a mask's area to ``lam_i``
  (the config's ``mask_loss_mode`` is never used by AdAutoMix): the label weights are ``lam_i`` and the
  generator is *conditioned* on them.  Our reading of the paper: its generator takes ratio-embedded features
  ``z_i^{lam_i}``, AutoMix's lam embedding ``lam_i * z[pi_i]`` (default ``lam_embedding: multiply``); the
  official CIFAR configs embed nothing (``lam_mul=False, lam_concat=False``): ``lam_embedding: none``.
  The mean gap ``|mean(M_i) - lam_i|`` is logged (``mask_area_gap``) to show how far the areas drift.
* **lam_margin.** The official N >= 3 branch tests ``lam_margin >= lam_1 or lam_margin < 1 - lam_1``, which is
  almost always true, so its backbone is trained on plain N-way mixup instead of generated images.  Here the
  backbone's generated batch falls back to mixup only when a ratio is ``<= lam_margin`` or
  ``>= 1 - lam_margin`` (for N = 2 exactly the official two-way rule).
* **The a-weighted mixup term is used for every N.** The official N = 2 path drops it (its classifier loss is
  then ``CE(f(x)) + softCE(f(x_gen))``).
* **Ratios per branch.** The official N >= 3 path shares one ratio vector between the generator and the
  classifier branches (N = 2 draws one lam per branch); here each branch draws its own, as in AutoMix.
* **First source.** The official code permutes every source; here ``pi_1`` is the identity.  The loss is a
  batch mean, so this only relabels the samples and leaves the distribution of every term unchanged.
* The teacher's logits of the sources ``f_ema(x[pi_i])`` are the teacher's clean-batch logits, permuted
  (computed once from the stage-3 features; the official code runs the teacher once per source; BatchNorm's
  batch statistics are invariant to the permutation).  Masks are upsampled to the image size (= the official
  factor 4 on CIFAR ResNets).  Teacher BatchNorm statistics are copied from the online network
  (:mod:`mixbench.methods.ema`).  The generator's maths run in fp32 under autocast, as the official code
  forces.

Cost of one step (N = 3), in units of ``F`` = one train-mode forward pass (CPU, r18 at 32 px, batch 32, one
thread: ``B`` ~ 2.05 F with weight gradients, ``B_in`` ~ 0.9 F to the input only; vanilla ~ 3.3 F): the
teacher's forward on the clean batch, no gradient (stages 1-3 for the generator, stage 4 and the head for the
sources' logits: ~1 F); the online network's forward and backward on the generated, the clean and the mixup
batch (3 (F + B)); the teacher's forward on the generated batch and its backward to the generator only
(F + B_in); the generator twice and the EMA update, about 1% together.  With the optimizer step about 12.4 F,
3.8x vanilla; the step measures 4.1-4.2x (15 interleaved rounds).  The official code runs the teacher once
more per source (N F more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import (
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_INPUT,
    FORWARD_NO_GRAD,
    STEP,
    Logs,
    MixPreview,
    device_scalar,
    soft_cross_entropy,
)
from mixbench.methods.mix_block import (
    LearnedMixMethod,
    attention_readout,
    check_upsample_mode,
    init_mix_block,
    spatial_size,
    upsample_to,
)
from mixbench.methods.registry import register_method

LAM_EMBEDDINGS = ("multiply", "none")


class MultiSourceMaskGenerator(nn.Module):
    """AdAutoMix's generator: N masks summing to 1 per pixel from the N sources' stage-3 features."""

    def __init__(self, channels: int, lam_embedding: str = "multiply", upsample: str = "bilinear") -> None:
        super().__init__()
        self.embed_channels = max(channels // 2, 1)
        self.lam_embedding = lam_embedding
        self.upsample = upsample
        self.query = nn.Conv2d(channels, self.embed_channels, kernel_size=1)
        self.key = nn.Conv2d(channels, self.embed_channels, kernel_size=1)
        self.value = nn.Conv2d(channels, 1, kernel_size=1)
        init_mix_block(self)

    def forward(
        self, z: torch.Tensor, sources: torch.Tensor, lams: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Masks (N, B, 1, H, W): ``sources`` (N, B) indexes the batch, ``lams`` (N,) the ratios."""
        with torch.autocast(z.device.type, enabled=False):
            num_sources, batch = sources.shape
            _, _, height, width = z.shape
            embedded = z.float()[sources]  # (N, B, C, h, w)
            if self.lam_embedding == "multiply":
                embedded = embedded * lams.float().view(-1, 1, 1, 1, 1)
            flat = embedded.flatten(0, 1)
            query = self.query(flat).flatten(2).unflatten(0, (num_sources, batch))  # (N, B, d, hw)
            key = self.key(flat).flatten(2).unflatten(0, (num_sources, batch))
            value = self.value(flat).flatten(2).unflatten(0, (num_sources, batch))  # (N, B, 1, hw)
            other_keys = key.sum(dim=0, keepdim=True) - key  # sum over j != i of k_j
            maps = attention_readout(query, other_keys, value)  # (N, B, hw, 1)
            maps = maps.reshape(num_sources * batch, 1, height, width)
            upsampled = upsample_to(maps, size, self.upsample).unflatten(0, (num_sources, batch))
            return torch.softmax(upsampled, dim=0)


def combine(weights: torch.Tensor, x: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[i] * x[sources[i]]`` for masks (N, B, 1, H, W) or ratios broadcast to that shape."""
    return (weights * x[sources]).sum(dim=0)


def soft_targets(
    y: torch.Tensor, sources: torch.Tensor, lams: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``sum_i lam_i * onehot(y[sources[i]])``: (B, K), rows sum to 1."""
    onehot = F.one_hot(y[sources], num_classes).to(lams.dtype)  # (N, B, K)
    return (lams.view(-1, 1, 1) * onehot).sum(dim=0)


def smooth(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[1]


def source_similarity(logits: torch.Tensor, source_logits: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_i lam_i cos(logits_b, source_logits[i]_b)`` for ``source_logits`` (N, B, K)."""
    cosine = F.cosine_similarity(logits.float().unsqueeze(0), source_logits.float(), dim=-1)  # (N, B)
    return (lams.view(-1, 1) * cosine).sum(dim=0).mean()


@dataclass
class Draw:
    """One branch's random choices: the sources (N, B) of each generated sample and their ratios (N,)."""

    sources: torch.Tensor
    lams: torch.Tensor
    host_lams: np.ndarray  # the same ratios on the host, for decisions that must not read the device


@dataclass
class AdAutoMixLosses:
    """The terms of one AdAutoMix step; ``classifier() + generator`` is the loss."""

    generated: torch.Tensor
    clean: torch.Tensor
    mixup: torch.Tensor
    generator: torch.Tensor
    teacher_ce: torch.Tensor
    similarity: torch.Tensor
    adversarial: bool
    backbone_fell_back_to_mixup: bool
    mixup_weight: float
    classifier_draw: Draw
    generator_draw: Draw
    mask_area_gap: torch.Tensor

    def classifier(self) -> torch.Tensor:
        return self.generated + (1.0 - self.mixup_weight) * self.clean + self.mixup_weight * self.mixup

    def total(self) -> torch.Tensor:
        return self.classifier() + self.generator


@register_method
class AdAutoMix(LearnedMixMethod):
    name = "adautomix"

    def __init__(
        self,
        alpha: float = 1.0,
        num_sources: int = 3,
        random_num_sources: bool = False,
        mixup_weight: float = 0.5,
        adversarial_weight: float = 0.3,
        adv_interval: int = 2,
        lam_margin: float = 0.03,
        lam_embedding: str = "multiply",
        upsample: str = "bilinear",
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
        if num_sources < 2:
            raise ValueError(f"num_sources must be at least 2, got {num_sources}")
        if lam_embedding not in LAM_EMBEDDINGS:
            raise ValueError(f"unknown lam_embedding '{lam_embedding}'; valid: {', '.join(LAM_EMBEDDINGS)}")
        if adv_interval < 1:
            raise ValueError(f"adv_interval must be a positive number of steps, got {adv_interval}")
        for key, value in (("mixup_weight", mixup_weight), ("adversarial_weight", adversarial_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must lie in [0, 1], got {value}")
        check_upsample_mode(upsample)  # refuses an unknown mode now, not at step 1
        self.alpha = alpha
        self.num_sources = num_sources
        self.random_num_sources = random_num_sources
        self.mixup_weight = mixup_weight
        self.adversarial_weight = adversarial_weight
        self.adv_interval = adv_interval
        self.lam_margin = lam_margin
        self.lam_embedding = lam_embedding
        self.upsample = upsample

    def build_mix_block(self, channels: int) -> nn.Module:
        return MultiSourceMaskGenerator(channels, lam_embedding=self.lam_embedding, upsample=self.upsample)

    # -- random choices ------------------------------------------------------------------------------
    def draw_count(self) -> int:
        return self.rng.integer(2, self.num_sources + 1) if self.random_num_sources else self.num_sources

    def draw_ratios(self, count: int) -> np.ndarray:
        raw = np.asarray(self.rng.beta(self.alpha, count), dtype=np.float64)
        return raw / raw.sum()

    def passes(self) -> dict[str, float]:
        """The teacher on the clean batch (stages 1-k for the generator, then to the head: one forward, no
        grad), the online network on the generated, the clean and the mixup batch (one step + two forwards
        and backwards), and the teacher on the generated batch with its backward to the generator."""
        return {STEP: 1.0, FORWARD_BACKWARD: 2.0, FORWARD_NO_GRAD: 1.0, FORWARD_BACKWARD_INPUT: 1.0}

    def draw(self, count: int, batch: int, device: torch.device) -> Draw:
        """Ratios, then ``count - 1`` random pairings (the first source is the batch itself)."""
        ratios = self.draw_ratios(count)
        identity = torch.arange(batch, device=device)
        sources = torch.stack([identity] + [self.rng.permutation(batch).to(device) for _ in range(count - 1)])
        # one fill per ratio: no host-to-device copy (which would wait for the kernels queued before it)
        lams = torch.stack([device_scalar(ratio, device) for ratio in ratios])
        return Draw(sources=sources, lams=lams, host_lams=ratios)

    def falls_back_to_mixup(self, draw: Draw) -> bool:
        """A ratio within ``lam_margin`` of 0 or 1 (checked on the host copy: no device read)."""
        ratios = draw.host_lams
        return bool(np.any(ratios <= self.lam_margin) or np.any(ratios >= 1.0 - self.lam_margin))

    def is_adversarial_step(self) -> bool:
        ema, _ = self.check_ready()
        return ema.updates_done % self.adv_interval == 0

    # -- the step ------------------------------------------------------------------------------------
    def compute_losses(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, adversarial: bool | None = None
    ) -> AdAutoMixLosses:
        ema, generator = self.check_ready()
        adversarial = self.is_adversarial_step() if adversarial is None else adversarial
        count, batch, size = self.draw_count(), x.shape[0], spatial_size(x)
        draw_mb = self.draw(count, batch, x.device)
        draw_bb = self.draw(count, batch, x.device)
        features = self.teacher_features(x)
        with torch.no_grad():
            teacher_clean_logits = ema.module.forward_from(features, self.feature_stage)

        generated, clean, mixup, fell_back = self._classifier_terms(model, x, y, features, draw_bb)
        masks_mb = generator(features, draw_mb.sources, draw_mb.lams, size)
        teacher_logits = ema(combine(masks_mb, x, draw_mb.sources))
        targets_mb = smooth(
            soft_targets(y, draw_mb.sources, draw_mb.lams, self.num_classes), self.label_smoothing
        )
        teacher_ce = soft_cross_entropy(teacher_logits.float(), targets_mb)
        similarity = source_similarity(teacher_logits, teacher_clean_logits[draw_mb.sources], draw_mb.lams)
        if adversarial:
            weight = self.adversarial_weight
            generator_loss = -weight * teacher_ce + (1.0 - weight) * (1.0 - similarity)
        else:
            generator_loss = teacher_ce
        area_gap = (masks_mb.detach().mean(dim=(1, 2, 3, 4)) - draw_mb.lams).abs().mean()
        return AdAutoMixLosses(
            generated=generated,
            clean=clean,
            mixup=mixup,
            generator=generator_loss,
            teacher_ce=teacher_ce,
            similarity=similarity,
            adversarial=adversarial,
            backbone_fell_back_to_mixup=fell_back,
            mixup_weight=self.mixup_weight,
            classifier_draw=draw_bb,
            generator_draw=draw_mb,
            mask_area_gap=area_gap,
        )

    def _classifier_terms(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, features: torch.Tensor, draw: Draw
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """softCE on the detached generated batch, CE on the clean batch, softCE on the N-way mixup."""
        _, generator = self.check_ready()
        ratios = draw.lams.view(-1, 1, 1, 1, 1)
        mixup_images = combine(ratios, x, draw.sources)
        fell_back = self.falls_back_to_mixup(draw)
        if fell_back:
            generated_images = mixup_images
        else:
            with torch.no_grad():  # the classifier's loss never reaches the generator
                masks = generator(features, draw.sources, draw.lams, spatial_size(x))
            generated_images = combine(masks, x, draw.sources)
        targets = smooth(soft_targets(y, draw.sources, draw.lams, self.num_classes), self.label_smoothing)
        generated = soft_cross_entropy(model(generated_images).float(), targets)
        clean = F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)
        mixup = soft_cross_entropy(model(mixup_images).float(), targets)
        return generated, clean, mixup, fell_back

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        losses = self.compute_losses(model, x, y)
        logs = {
            "lam": losses.classifier_draw.lams[0].detach(),
            "num_sources": device_scalar(losses.classifier_draw.sources.shape[0], x.device),
            "adversarial": device_scalar(losses.adversarial, x.device),
            "ce_generated": losses.generated.detach(),
            "ce_clean": losses.clean.detach(),
            "ce_mixup": losses.mixup.detach(),
            "ce_generated_ema": losses.teacher_ce.detach(),
            "similarity": losses.similarity.detach(),
            "mask_area_gap": losses.mask_area_gap,
            "ema_momentum": self.momentum_log(),
        }
        return losses.total(), logs

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """Each source, its mask from the generator (EMA teacher in eval mode), and the generated image."""
        _, generator = self.check_ready()
        draw = self.draw(self.num_sources, x.shape[0], x.device)
        masks = generator(self.preview_features(x), draw.sources, draw.lams, spatial_size(x))
        rows: dict[str, torch.Tensor] = {}
        for index in range(draw.sources.shape[0]):
            rows[f"source {index + 1}"] = x[draw.sources[index]]
        for index in range(draw.sources.shape[0]):
            rows[f"mask {index + 1}"] = masks[index]
        rows["generated"] = combine(masks, x, draw.sources)
        ratios = ", ".join(f"{value:.2f}" for value in draw.lams.tolist())
        areas = ", ".join(f"{value:.2f}" for value in masks.mean(dim=(1, 2, 3, 4)).tolist())
        note = f"label ratios lam_i = {ratios}; mask areas = {areas} (areas are not constrained to lam_i)"
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), float(draw.lams[0])), note=note)
