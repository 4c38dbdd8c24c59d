"""AlignMixup (Venkataramanan, Kijak, Amsaleg & Avrithis, "AlignMixup: Improving Representations By
Interpolating Aligned Features", CVPR 2022, arXiv:2103.15375).

Per step, with ``lam ~ Beta(alpha, alpha)`` (alpha 2) and ``perm = randperm(B)``:

* with probability ``input_mix_prob`` (0.5): input mixup, ``x~ = lam * x + (1 - lam) * x[perm]``;
* otherwise AlignMix on the last feature tensor ``A`` (stage ``n`` of the model, e.g. 512x4x4 for
  PreActResNet18 at 32 px).  ``A`` and ``A' = A[perm]`` are read as ``c x r`` matrices (``r = h * w``
  positions, columns ``a_i``, ``a'_j``):

      M_ij = ||a_i - a'_j||^2                                   (squared Euclidean, not normalised)
      P    = argmin_{P 1 = 1/r, P^T 1 = 1/r} <P, M> - eps * H(P)     (Sinkhorn, log domain, eps 0.1)
      R    = r * P                                               (P detached: no gradient through it)

  and, direction drawn 0.5/0.5,

      keep A's geometry:   A~ = lam * A + (1 - lam) * A' R^T      (position i gets sum_j R_ij a'_j)
      keep A''s geometry:  A~ = lam * A R + (1 - lam) * A'        (position j gets sum_i R_ij a_i)

  and the network continues from ``A~`` (``model(x, mix_stage=n, mix_fn=...)``, so DDP sees a forward).

Both branches use the mixed cross-entropy ``lam * CE(f(.), y) + (1 - lam) * CE(f(.), y[perm])``.

The official Sinkhorn (see :mod:`mixbench.methods.sinkhorn`) stops after at most 100 iterations, or after the
first iteration whose change of the dual ``u``, summed over the ``r`` positions and averaged over the batch,
is below 0.1.  On post-ReLU features the costs average several hundred, so with eps 0.1 the rule is never
met: every step runs 100 iterations and returns a plan close to a hard assignment whose **column** sums are
exact (``sum_i R_ij = 1``: the last update is the column one) while its **row** sums are not (errors of
several units after scaling by ``r``).  Hence ``A R`` (keep A''s geometry) is, at every position, a convex
combination of A's feature vectors, while the weights of ``A' R^T`` at a position sum only to about 1.
``sinkhorn="official"`` (the default) reproduces that loop and its result, since it produced the published
numbers.

A consequence worth knowing: with a head that is global average pooling followed by a linear layer right
after the mixed tensor (PreActResNet18, torchvision ResNet-50, and the official WRN16-8), exact column sums
make ``pool(A' R^T) = pool(A')``, so "keep A's geometry" gives exactly the logits of plain feature mixup at
that stage; only "keep A''s geometry" differs, through the row sums of ``R`` (it re-weights A's positions).
With a converged (doubly stochastic) ``R`` both directions would give plain feature-mixup logits on those
heads.

Deliberate deviations from the official code (``cifar10_100/models/*_classifier.py``, ``utils/OT.py``):

* The cost is computed as ``||a||^2 + ||a'||^2 - 2 a.a'`` with one batched matrix product (clamped at 0),
  not by broadcasting a B x r x r x c difference tensor (1-2.5 GB); the two agree to float rounding.
* The stopping rule is evaluated on the device every iteration and a met rule freezes the potentials by
  masking (the result is the one the official loop returns when it breaks); the host reads the flag only
  every 10 iterations, to skip the rest, instead of an ``.item()`` sync per iteration.
* The marginals are exactly ``log(1/r)``, not ``log(1/r + 1e-8)`` (a relative change of 1e-7).
* The alignment (cost, Sinkhorn, the product with ``R``) runs in float32 with autocast disabled, so that
  bf16 autocast does not wreck the cost expansion or the column sums.
* The official code wraps the model in ``nn.DataParallel``: with several GPUs each replica pairs, aligns
  and tests the stopping rule on its own slice of the batch.  Here the whole batch is one pairing.
* Wide-ResNets: the official WRN16-8 encoder ends with BN-ReLU and AlignMix aligns its output; in mixbench
  that BN-ReLU belongs to the model's head, which the stage contract does not let a method bypass, so
  AlignMix aligns the last stage's output *before* the final BN-ReLU (PreActResNet18 and ResNet-50 have no
  such layer: there the aligned tensor is the official one).
* ``sinkhorn="converged"`` (an option, not the default) divides each cost matrix by its mean (so that eps is
  relative to the typical cost), stops each sample on its own once ``sum_i |log(row sum_i of R)|`` is below
  ``converged_tol`` (the dual change divided by eps; at most ``converged_max_iter`` iterations), and so
  returns plans whose rows and columns both sum to 1 -- but softer than the official near-hard ones.

Defaults (CIFAR, Tiny-ImageNet, ImageNet): alpha 2.0, input-mixup probability 0.5, eps 0.1, 100 iterations,
threshold 0.1.  Logged per step: ``lam``, ``feature_mix`` (1 on AlignMix steps), ``keep_a_geometry``,
``sinkhorn_iterations`` and ``row_sum_error`` (mean |row sum of R - 1|); the last two are 0 on input-mixup
steps, so their epoch means divided by the mean of ``feature_mix`` are the per-AlignMix-step values.

AlignMixup/AE (:mod:`mixbench.methods.alignmixup_ae`) shares the draws, the Sinkhorn options and the aligned
mixing step through :class:`AlignMixMethod`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod, MixPreview, device_scalar, mixed_cross_entropy
from mixbench.methods.registry import register_method
from mixbench.methods.sinkhorn import SinkhornResult, log_sinkhorn, squared_euclidean_cost
from mixbench.models.base import StageUnavailableError

SinkhornMode = Literal["official", "converged"]
SINKHORN_MODES = ("official", "converged")
HOST_CHECK_EVERY = 10  # Sinkhorn iterations between host reads of the "all stopped" flag


@dataclass(frozen=True)
class SinkhornOptions:
    """How the assignment is solved; ``official`` reproduces the official loop (see the module docstring)."""

    eps: float = 0.1
    max_iter: int = 100
    threshold: float = 0.1
    mode: SinkhornMode = "official"
    converged_tol: float = 1e-3
    converged_max_iter: int = 1000

    def __post_init__(self) -> None:
        if self.mode not in SINKHORN_MODES:
            raise ValueError(f"unknown sinkhorn mode '{self.mode}'; valid: {', '.join(SINKHORN_MODES)}")
        if self.eps <= 0 or self.max_iter < 1 or self.converged_max_iter < 1:
            raise ValueError("sinkhorn needs eps > 0 and at least one iteration")

    def solve(self, cost: torch.Tensor) -> SinkhornResult:
        if self.mode == "official":
            return log_sinkhorn(
                cost, self.eps, self.max_iter, self.threshold, per_sample=False, check_every=HOST_CHECK_EVERY
            )
        relative_cost = cost / cost.mean(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(cost.dtype).tiny)
        return log_sinkhorn(
            relative_cost,
            self.eps,
            self.converged_max_iter,
            self.eps * self.converged_tol,
            per_sample=True,
            check_every=HOST_CHECK_EVERY,
        )


@dataclass
class AlignMixDraw:
    """The random choices of one AlignMixup step."""

    lam: float
    perm: torch.Tensor
    input_mix: bool
    keep_first_geometry: bool  # lam*A + (1-lam)*A'R^T (True) or lam*A R + (1-lam)*A' (False)


@torch.no_grad()
def transport_assignment(
    features: torch.Tensor, partner: torch.Tensor, options: SinkhornOptions
) -> tuple[torch.Tensor, SinkhornResult]:
    """``R = r * P`` (B, r, r) aligning the positions of ``features`` (rows i) to those of ``partner``
    (columns j), both (B, c, r); float32, no gradient."""
    with torch.autocast(features.device.type, enabled=False):
        points = features.detach().float().transpose(1, 2)
        partner_points = partner.detach().float().transpose(1, 2)
        result = options.solve(squared_euclidean_cost(points, partner_points))
    return result.plan * points.shape[1], result


def align_mix(
    features: torch.Tensor,
    perm: torch.Tensor,
    lam: float | torch.Tensor,
    keep_first_geometry: bool,
    options: SinkhornOptions,
) -> tuple[torch.Tensor, SinkhornResult]:
    """AlignMix of a (B, c, h, w) feature tensor with its partners ``features[perm]``; returns the mixed
    tensor (same shape and dtype) and the Sinkhorn result.  Gradients reach ``features`` through both terms,
    never through the plan."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    partner = flat[perm]
    assignment, result = transport_assignment(flat, partner, options)
    with torch.autocast(features.device.type, enabled=False):
        flat, partner = flat.float(), partner.float()
        if keep_first_geometry:
            mixed = lam * flat + (1.0 - lam) * torch.bmm(partner, assignment.transpose(1, 2))
        else:
            mixed = lam * torch.bmm(flat, assignment) + (1.0 - lam) * partner
    return mixed.reshape(batch, channels, height, width).to(features.dtype), result


def last_feature_stage(model: nn.Module) -> int:
    """The deepest hidden state the model exposes (the tensor AlignMix aligns)."""
    hidden = [stage for stage in model.feature_stages if stage > 0]
    if not hidden:
        raise StageUnavailableError(
            f"model {model.name} exposes no hidden feature tensor (stages {list(model.feature_stages)}); "
            "AlignMix aligns the last one, so it needs a CNN backbone"
        )
    return max(hidden)


def alignment_logs(result: SinkhornResult, assignment_rows: int) -> Logs:
    """Iterations run and mean |row sum of R - 1| (0 when converged), for the epoch logs."""
    row_error = (result.plan.sum(-1) * assignment_rows - 1.0).abs().mean()
    return {"sinkhorn_iterations": result.iterations.float().mean(), "row_sum_error": row_error}


def unaligned_logs(device: torch.device | str = "cpu") -> Logs:
    """The alignment logs of a step that aligned nothing: zeros on ``device`` (see the module docstring on
    epoch means)."""
    return {
        "sinkhorn_iterations": torch.zeros((), device=device),
        "row_sum_error": torch.zeros((), device=device),
    }


def mix_with_partners(values: torch.Tensor, perm: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """``lam * v + (1 - lam) * v[perm]``: plain mixup of images or embeddings with their partners."""
    return lam * values + (1.0 - lam) * values[perm]


def move_patches(images: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Images whose patch ``i`` (cell of the h x w feature grid) is ``sum_j weights[:, i, j] * patch_j``: the
    pixel-space picture of applying an assignment to feature positions."""
    height, width = images.shape[-2:]
    patch = (math.ceil(height / grid[0]), math.ceil(width / grid[1]))
    size = (grid[0] * patch[0], grid[1] * patch[1])
    resized = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear")
    patches = F.unfold(resized, kernel_size=patch, stride=patch)
    moved = F.fold(torch.bmm(patches, weights.transpose(1, 2)), size, kernel_size=patch, stride=patch)
    return moved if size == (height, width) else F.interpolate(moved, size=(height, width), mode="bilinear")


def alignment_preview(
    model: nn.Module, x: torch.Tensor, draw: AlignMixDraw, options: SinkhornOptions
) -> dict[str, torch.Tensor]:
    """Rows showing both alignments of a pairing as moved image patches, and the input-mixup branch."""
    features = model.forward_features(x, last_feature_stage(model))
    flat = features.flatten(2)
    assignment, _ = transport_assignment(flat, flat[draw.perm], options)
    grid = (features.shape[-2], features.shape[-1])
    partner = x[draw.perm]
    return {
        "source a": x,
        "source b": partner,
        "b aligned to a (A'R^T)": move_patches(partner, assignment, grid),
        "a aligned to b (AR)": move_patches(x, assignment.transpose(1, 2), grid),
        "input mixup": mix_with_partners(x, draw.perm, draw.lam),
    }


class AlignMixMethod(MixMethod):
    """What AlignMixup and AlignMixup/AE share: per step ``lam ~ Beta(alpha, alpha)`` and a pairing, the
    Sinkhorn options, the last feature tensor of a CNN as the tensor to align, and the aligned-mixing step."""

    def __init__(
        self,
        alpha: float,
        eps: float,
        max_iter: int,
        threshold: float,
        sinkhorn: SinkhornMode,
        converged_tol: float,
        converged_max_iter: int,
    ) -> None:
        """The options both variants take; their defaults live in each method's signature (its config)."""
        super().__init__()
        self.alpha = alpha
        self.sinkhorn = SinkhornOptions(
            eps, int(max_iter), threshold, sinkhorn, converged_tol, int(converged_max_iter)
        )

    def check_model(self, model: nn.Module) -> None:
        model.check_stage(last_feature_stage(model))

    def draw_lam_and_pairing(self, batch_size: int) -> tuple[float, torch.Tensor]:
        """lam ~ Beta(alpha, alpha), then a pairing of the batch, from the run's generators."""
        return float(self.rng.beta(self.alpha)), self.rng.permutation(batch_size)

    def aligned_mix(
        self,
        features: torch.Tensor,
        perm: torch.Tensor,
        lam: float | torch.Tensor,
        keep_first_geometry: bool,
        logs: Logs,
    ) -> torch.Tensor:
        """:func:`align_mix` of ``features`` with ``features[perm]``; its Sinkhorn statistics go to
        ``logs``."""
        mixed, result = align_mix(features, perm, lam, keep_first_geometry, self.sinkhorn)
        logs.update(alignment_logs(result, features.shape[-2] * features.shape[-1]))
        return mixed


@register_method
class AlignMixup(AlignMixMethod):
    name = "alignmixup"

    def __init__(
        self,
        alpha: float = 2.0,
        input_mix_prob: float = 0.5,
        eps: float = 0.1,
        max_iter: int = 100,
        threshold: float = 0.1,
        sinkhorn: SinkhornMode = "official",
        converged_tol: float = 1e-3,
        converged_max_iter: int = 1000,
    ) -> None:
        super().__init__(alpha, eps, max_iter, threshold, sinkhorn, converged_tol, converged_max_iter)
        if not 0.0 <= input_mix_prob <= 1.0:
            raise ValueError(f"input_mix_prob must lie in [0, 1], got {input_mix_prob}")
        self.input_mix_prob = input_mix_prob
        self.mix_stage: int | None = None  # set by setup(); read from the model when setup was skipped

    def setup(self, model: nn.Module, num_classes: int) -> None:
        """Remember the stage to align, so that the step needs no attribute of a (possibly wrapped) model."""
        self.mix_stage = last_feature_stage(model)

    def draw(self, batch_size: int) -> AlignMixDraw:
        """This step's lam, pairing, branch and direction, from the run's generators."""
        lam, perm = self.draw_lam_and_pairing(batch_size)
        input_mix = self.rng.uniform() < self.input_mix_prob
        keep_first_geometry = (not input_mix) and self.rng.uniform() < 0.5
        return AlignMixDraw(lam, perm, input_mix, keep_first_geometry)

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        draw = self.draw(x.shape[0])
        # lam as a tensor: a Python float in the closure would make torch.compile recompile for every value.
        lam = device_scalar(draw.lam, x.device)
        logs: Logs = {
            "lam": lam,
            "feature_mix": device_scalar(not draw.input_mix, x.device),
            "keep_a_geometry": device_scalar(draw.keep_first_geometry, x.device),
        }
        if draw.input_mix:
            logits = model(mix_with_partners(x, draw.perm, lam))
            logs.update(unaligned_logs(x.device))
        else:

            def mix_fn(features: torch.Tensor) -> torch.Tensor:
                return self.aligned_mix(features, draw.perm, lam, draw.keep_first_geometry, logs)

            stage = self.mix_stage if self.mix_stage is not None else last_feature_stage(model)
            logits = model(x, mix_stage=stage, mix_fn=mix_fn)
        loss = mixed_cross_entropy(logits, y, y[draw.perm], draw.lam, self.label_smoothing)
        return loss, logs

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        draw = self.draw(x.shape[0])
        note = (
            "AlignMix mixes feature tensors; the rows move image patches of the feature grid by the same "
            "assignment R (half the steps mix the inputs instead)"
        )
        rows = alignment_preview(model, x, draw, self.sinkhorn)
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), draw.lam), note=note)
