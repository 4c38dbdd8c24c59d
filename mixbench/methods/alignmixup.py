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
* The stopping rule is evaluated on the device after all ``max_iter`` iterations, on every iteration's
  potentials, and the first iteration that met it gives the result (the one the official loop returns when
  it breaks, to the bit); the host never reads it: all ``max_iter`` iterations are queued, without the
  official ``.item()`` sync per iteration.  Since the rule is not met on post-ReLU features (above), the
  official loop runs all 100 iterations too: skipping "no-op" iterations would save nothing, and the
  former read of the flag every 10 iterations cost 10 host syncs per aligning step (the CPU benchmark's
  6.67 per step for AlignMixup/AE at 8383cd4) for no gain.  The ``converged`` option below, which does stop
  early, reads the flag every 10 iterations (documented host syncs: it is not the default).
* The marginals are exactly ``log(1/r)``, not ``log(1/r + 1e-8)`` (a relative change of 1e-7).
* The alignment (cost, Sinkhorn, the product with ``R``) runs in float32 with autocast disabled, so that
  bf16 autocast does not wreck the cost expansion or the column sums.
* On a GPU, in eager mode, the official loop (100 iterations of 16 kernels, no host sync, no gradient) is
  recorded once per cost shape and replayed as one CUDA graph (``cuda_graph: true``, the default;
  :mod:`mixbench.methods.solver_graph`): the same kernels, one launch.  The first replay is checked against
  the eager loop bit for bit, else the loop runs eagerly.  Not yet measured on a GPU (the H200's eager
  AlignMixup row at 5b521f1, 3.36x vanilla on r18 with a floor of 1.00, was its launches).
* The official code wraps the model in ``nn.DataParallel``: with several GPUs each replica pairs, aligns
  and tests the stopping rule on its own slice of the batch.  Here the whole batch is one pairing.
* ``sinkhorn="converged"`` (an option, not the default) divides each cost matrix by its mean (so that eps is
  relative to the typical cost), stops each sample on its own once ``sum_i |log(row sum_i of R)|`` is below
  ``converged_tol`` (the dual change divided by eps; at most ``converged_max_iter`` iterations), and so
  returns plans whose rows and columns both sum to 1 -- but softer than the official near-hard ones.

Defaults (CIFAR, Tiny-ImageNet, ImageNet): alpha 2.0, input-mixup probability 0.5, eps 0.1, 100 iterations,
threshold 0.1.  Logged per step: ``lam``, ``feature_mix`` (1 on AlignMix steps), ``keep_a_geometry``,
``sinkhorn_iterations`` and ``row_sum_error`` (mean |row sum of R - 1|); the last two are 0 on input-mixup
steps, so their epoch means divided by the mean of ``feature_mix`` are the per-AlignMix-step values.

The aligned tensor is the official one on every backbone the paper uses: PreActResNet18's last stage ends
with a residual sum and ResNet-50's with its ReLU, as in the official encoders, and mixbench's Wide-ResNets
end stage 3 with the final BN-ReLU, as the official WRN16-8 encoder does (see
:mod:`mixbench.models.wide_resnet`), so AlignMix aligns the activated ``512x8x8`` tensor that the classifier
pools.

Ablations of the paper's Table 6 (CIFAR-100, PreActResNet18), as options of both variants.  The official
repository has no code for them and the table names its rows only by the mixing set and the resolution of
``A``; how each is obtained below is our choice:

* ``align: false`` (the "unaligned" column): the feature branch interpolates ``A`` and ``A'`` directly,
  ``A~ = lam * A + (1 - lam) * A'``, with the same lam, pairing and label rule; no Sinkhorn runs (its logs
  are 0).  On a pooling head this is plain feature mixup at the last stage.
* ``mix_grid: 2`` (the rows ``A2x2``): ``A`` is average-pooled to ``2 x 2`` (``adaptive_avg_pool2d``)
  before the alignment and the mixing, so ``r = 4`` and the cost and ``R`` are ``4 x 4``; the network
  continues from the pooled, mixed tensor (the heads pool globally: where the grid divides the map
  evenly, pooling alone leaves the logits unchanged).  ``null`` (the default) mixes at the stage's own
  resolution.  A grid larger than the feature map is refused.
* ``remove_last_downsampling: true`` (the rows ``A8x8``): in :meth:`setup` every strided convolution of the
  model's last stage is set to stride 1 (for PreActResNet18 the first block's 3x3 conv and its 1x1
  shortcut), so the last stage keeps the resolution of the one before it: ``512x8x8`` at 32 px instead of
  ``512x4x4``.  The weights are unchanged (a convolution's stride is no parameter), so checkpoints keep
  their keys; the change holds for the whole run, training and evaluation, since every run builds its model
  and method through ``build_model_and_method``, which calls :meth:`setup`.  A model whose last stage has
  no strided convolution, or down-samples by pooling, is refused.
* ``direction`` (not a Table 6 cell): ``random`` (the default and the official code: each aligned step draws
  the direction 0.5/0.5), ``keep_a_geometry`` (always ``lam * A + (1 - lam) * A' R^T``; the caption of the
  paper's Fig. 2 calls this "A aligned to A'", giving ``A~``, interpolated with ``A``, and the official code
  computes that ``A~`` as ``A' R^T``) or ``keep_partner_geometry`` (always ``lam * A R + (1 - lam) * A'``,
  the caption's symmetric case).  As said above, on a pooling head ``keep_a_geometry`` gives the logits of
  unaligned mixing.

AlignMixup/AE (:mod:`mixbench.methods.alignmixup_ae`) shares the draws, the Sinkhorn options, the ablation
options and the feature-mixing step through :class:`AlignMixMethod`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod, MixPreview, device_scalar, mixed_cross_entropy
from mixbench.methods.registry import register_method
from mixbench.methods.sinkhorn import SinkhornResult, log_sinkhorn, squared_euclidean_cost
from mixbench.methods.solver_graph import SolverGraph
from mixbench.models.base import StageUnavailableError

SinkhornMode = Literal["official", "converged"]
SINKHORN_MODES = ("official", "converged")
Direction = Literal["random", "keep_a_geometry", "keep_partner_geometry"]
DIRECTIONS = ("random", "keep_a_geometry", "keep_partner_geometry")
CONVERGED_CHECK_EVERY = 10  # sinkhorn="converged": iterations between host reads of the "all stopped" flag


def official_sinkhorn(
    cost: torch.Tensor, eps: float, max_iter: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official loop (batch-wide stopping rule, never read on the host): plan, iterations, converged
    (the last two made contiguous: a recording's outputs are buffers that each replay writes whole)."""
    result = log_sinkhorn(cost, eps, max_iter, threshold, per_sample=False, check_every=0)
    return result.plan, result.iterations.contiguous(), result.converged.contiguous()


@dataclass(frozen=True)
class SinkhornOptions:
    """How the assignment is solved; ``official`` reproduces the official loop (see the module docstring).

    On a GPU the official loop (``max_iter`` iterations of 16 kernels, no host sync) is replayed as one CUDA
    graph per cost shape (``official_solver``, :mod:`mixbench.methods.solver_graph`) unless ``cuda_graph`` is
    false; ``converged`` reads its stopping flag on the host, so it runs eagerly."""

    eps: float = 0.1
    max_iter: int = 100
    threshold: float = 0.1
    mode: SinkhornMode = "official"
    converged_tol: float = 1e-3
    converged_max_iter: int = 1000
    cuda_graph: bool = True
    official_solver: SolverGraph = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in SINKHORN_MODES:
            raise ValueError(f"unknown sinkhorn mode '{self.mode}'; valid: {', '.join(SINKHORN_MODES)}")
        if self.eps <= 0 or self.max_iter < 1 or self.converged_max_iter < 1:
            raise ValueError("sinkhorn needs eps > 0 and at least one iteration")
        solver = SolverGraph(official_sinkhorn)
        solver.enabled = bool(self.cuda_graph)
        object.__setattr__(self, "official_solver", solver)

    def solve(self, cost: torch.Tensor) -> SinkhornResult:
        if self.mode == "official":
            plan, iterations, converged = self.official_solver(cost, self.eps, self.max_iter, self.threshold)
            return SinkhornResult(plan=plan, iterations=iterations, converged=converged)
        relative_cost = cost / cost.mean(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(cost.dtype).tiny)
        return log_sinkhorn(
            relative_cost,
            self.eps,
            self.converged_max_iter,
            self.eps * self.converged_tol,
            per_sample=True,
            check_every=CONVERGED_CHECK_EVERY,
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


def pool_to_grid(features: torch.Tensor, grid: int | None) -> torch.Tensor:
    """``features`` (B, c, h, w) average-pooled to ``grid x grid`` (adaptive pooling); unchanged when ``grid``
    is None or already the map's size.  A grid larger than the map is refused (pooling cannot add
    positions)."""
    if grid is None or tuple(features.shape[-2:]) == (grid, grid):
        return features
    if grid > features.shape[-2] or grid > features.shape[-1]:
        raise ValueError(
            f"mix_grid {grid} is larger than the {features.shape[-2]}x{features.shape[-1]} feature map"
        )
    return F.adaptive_avg_pool2d(features, grid)


def strided_convolutions(stage: nn.Module) -> list[nn.Conv2d]:
    """The convolutions of ``stage`` whose stride is not 1: its down-sampling."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) != (1, 1)]


def check_last_downsampling(model: nn.Module) -> None:
    """Refuse a model whose last stage does not down-sample by strided convolutions only (nothing for
    :func:`remove_last_downsampling` to remove, or a pooling it cannot), unless it was removed already."""
    if getattr(model, "last_downsampling_removed", False):
        return
    stage = model.stage_modules()[-1]
    if any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in stage.modules()):
        raise StageUnavailableError(
            f"model {model.name}: its last stage pools, and remove_last_downsampling only changes strides "
            "of convolutions"
        )
    if not strided_convolutions(stage):
        raise StageUnavailableError(
            f"model {model.name}: its last stage has no strided convolution, so there is no down-sampling "
            "for remove_last_downsampling to remove"
        )


def remove_last_downsampling(model: nn.Module) -> int:
    """Set every strided convolution of the model's last stage to stride 1 (weights untouched), so the last
    feature map keeps the previous stage's resolution; returns how many convolutions changed.  Marks the
    model (``last_downsampling_removed``) so that a second call, or a check after it, knows it was done."""
    check_last_downsampling(model)
    convolutions = strided_convolutions(model.stage_modules()[-1])
    for convolution in convolutions:
        convolution.stride = (1, 1)
    model.last_downsampling_removed = True
    return len(convolutions)


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
    model: nn.Module,
    x: torch.Tensor,
    draw: AlignMixDraw,
    options: SinkhornOptions,
    mix_grid: int | None = None,
) -> dict[str, torch.Tensor]:
    """Rows showing both alignments of a pairing (at the mixing grid) as moved image patches, and the
    input-mixup branch."""
    features = pool_to_grid(model.forward_features(x, last_feature_stage(model)), mix_grid)
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


@dataclass(frozen=True)
class AblationOptions:
    """The Table 6 ablations (see the module docstring); the defaults are the published method."""

    align: bool = True
    mix_grid: int | None = None
    direction: Direction = "random"
    remove_last_downsampling: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction '{self.direction}'; valid: {', '.join(DIRECTIONS)}")
        if self.mix_grid is not None and self.mix_grid < 1:
            raise ValueError(f"mix_grid must be a positive grid side or null, got {self.mix_grid}")
        if not self.align and self.direction != "random":
            raise ValueError("direction chooses an alignment; with align=false there is none to choose")


class AlignMixMethod(MixMethod):
    """What AlignMixup and AlignMixup/AE share: per step ``lam ~ Beta(alpha, alpha)`` and a pairing, the
    Sinkhorn and ablation options, the last feature tensor of a CNN as the tensor to mix, and the
    feature-mixing step."""

    def __init__(
        self,
        alpha: float,
        eps: float,
        max_iter: int,
        threshold: float,
        sinkhorn: SinkhornMode,
        converged_tol: float,
        converged_max_iter: int,
        ablation: AblationOptions,
        cuda_graph: bool = True,
    ) -> None:
        """The options both variants take; their defaults live in each method's signature (its config)."""
        super().__init__()
        self.alpha = alpha
        self.sinkhorn = SinkhornOptions(
            eps, int(max_iter), threshold, sinkhorn, converged_tol, int(converged_max_iter), bool(cuda_graph)
        )
        self.ablation = ablation

    def solver_graphs(self) -> list[SolverGraph]:
        return [self.sinkhorn.official_solver]

    def check_model(self, model: nn.Module) -> None:
        model.check_stage(last_feature_stage(model))
        if self.ablation.remove_last_downsampling:
            check_last_downsampling(model)

    def prepare_model(self, model: nn.Module) -> None:
        """The model-side part of the ablations, done once in :meth:`setup`: the last stage's stride."""
        if self.ablation.remove_last_downsampling:
            remove_last_downsampling(model)

    def draw_lam_and_pairing(self, batch_size: int) -> tuple[float, torch.Tensor]:
        """lam ~ Beta(alpha, alpha), then a pairing of the batch, from the run's generators."""
        return float(self.rng.beta(self.alpha)), self.rng.permutation(batch_size)

    def draw_keep_first_geometry(self) -> bool:
        """The direction of an aligned step: drawn 0.5/0.5 (``random``, one uniform from the run's
        generator), or fixed by ``direction``; False when nothing is aligned."""
        if not self.ablation.align:
            return False
        if self.ablation.direction == "random":
            return self.rng.uniform() < 0.5
        return self.ablation.direction == "keep_a_geometry"

    def mix_features(
        self,
        features: torch.Tensor,
        perm: torch.Tensor,
        lam: float | torch.Tensor,
        keep_first_geometry: bool,
        logs: Logs,
    ) -> torch.Tensor:
        """``features`` pooled to ``mix_grid``, then :func:`align_mix` with ``features[perm]`` (its Sinkhorn
        statistics go to ``logs``), or with ``align=false`` plain interpolation with them (zeros logged)."""
        features = pool_to_grid(features, self.ablation.mix_grid)
        if not self.ablation.align:
            logs.update(unaligned_logs(features.device))
            return mix_with_partners(features, perm, lam)
        mixed, result = align_mix(features, perm, lam, keep_first_geometry, self.sinkhorn)
        logs.update(alignment_logs(result, features.shape[-2] * features.shape[-1]))
        return mixed

    def preview_rows(self, model: nn.Module, x: torch.Tensor, draw: AlignMixDraw) -> dict[str, torch.Tensor]:
        """The sources and the input mix, with the alignments as moved patches when the method aligns."""
        if self.ablation.align:
            return alignment_preview(model, x, draw, self.sinkhorn, self.ablation.mix_grid)
        return {
            "source a": x,
            "source b": x[draw.perm],
            "input mixup": mix_with_partners(x, draw.perm, draw.lam),
        }


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
        align: bool = True,
        mix_grid: int | None = None,
        direction: Direction = "random",
        remove_last_downsampling: bool = False,
        cuda_graph: bool = True,
    ) -> None:
        ablation = AblationOptions(align, mix_grid, direction, remove_last_downsampling)
        super().__init__(
            alpha, eps, max_iter, threshold, sinkhorn, converged_tol, converged_max_iter, ablation, cuda_graph
        )
        if not 0.0 <= input_mix_prob <= 1.0:
            raise ValueError(f"input_mix_prob must lie in [0, 1], got {input_mix_prob}")
        self.input_mix_prob = input_mix_prob
        self.mix_stage: int | None = None  # set by setup(); read from the model when setup was skipped

    def setup(self, model: nn.Module, num_classes: int) -> None:
        """Apply the model-side ablation, and remember the stage to mix, so that the step needs no attribute
        of a (possibly wrapped) model."""
        self.prepare_model(model)
        self.mix_stage = last_feature_stage(model)

    def draw(self, batch_size: int) -> AlignMixDraw:
        """This step's lam, pairing, branch and direction, from the run's generators."""
        lam, perm = self.draw_lam_and_pairing(batch_size)
        input_mix = self.rng.uniform() < self.input_mix_prob
        keep_first_geometry = (not input_mix) and self.draw_keep_first_geometry()
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
                return self.mix_features(features, draw.perm, lam, draw.keep_first_geometry, logs)

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
            if self.ablation.align
            else "features are mixed without alignment, lam*A + (1-lam)*A' (no picture of that in pixels)"
        )
        rows = self.preview_rows(model, x, draw)
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), draw.lam), note=note)
