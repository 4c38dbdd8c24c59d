"""SUMix (Qin et al., "SUMix: Mixup with Semantic and Uncertain Information", ECCV 2024), a wrapper around a
cutting method (the *base*: cutmix, fmix, saliencymix, resizemix, puzzlemix or automix).

The base makes the mixed batch (x~, y_a, y_b, lam, perm); SUMix re-estimates the label ratio of every mixed
sample from the network's predictions and adds an uncertainty regulariser.  Our reading, equation by equation
(B = number of samples in the batch, C = number of classes, all vectors are rows of length C).  The paper's
equations were not reachable from this offline workspace (only its abstract and summaries); every ambiguity
of METHODS.md's summary is therefore pinned by the computation of the released code
(``ClsUncertainMixupHead.IN_loss``, read to understand it, not copied), which agrees with that summary:

1. Predictions, with stop-gradient.  One extra forward of the clean batch, under ``no_grad`` (or the
   base's own forward of it, see *Shared passes* below):
       p_i     = softmax(f(x_i)),             p_mix,i = softmax(f(x~_i)).detach()
   Sources of sample i: a = i and b = perm[i], so p_a,i = p_i and p_b,i = p_perm[i].

2. Zeroing rule: each source forgets the partner's class,
       p_a,i[y_b,i] := 0,    p_b,i[y_a,i] := 0        (on copies; the two are zeroed independently)

3. Semantic distance, a (B, C) matrix per source:
       d_a,i = B * l2norm( softmax(p_mix,i - p_a,i) )      (and d_b with p_b)
   "B·l2norm(softmax(p_mix - p_a))": softmax over the C classes of the difference of the two probability
   vectors, the result divided by its Euclidean norm over the classes (each row then has norm 1), times the
   batch size B (the official code multiplies by the per-device batch size, so the sharpness of step 4 grows
   with the batch size).  The difference is signed by default (``distance: signed``), as METHODS.md states
   and the official code computes; ``distance: absolute`` uses |p_mix,i - p_a,i| instead (see the observation
   at the end).  The two agree wherever p_mix >= p_a.

4. Re-estimated ratio, per sample.  The class index read is the source's own label:
       s_a,i = exp(-d_a,i[y_a,i]),    s_b,i = exp(-d_b,i[y_b,i])
       lam'_i = lam_i s_a,i / (lam_i s_a,i + (1 - lam_i) s_b,i)
   computed as sigmoid(log lam_i - log(1 - lam_i) + d_b,i[y_b,i] - d_a,i[y_a,i]), which is the same value
   without the underflow of exp(-d) (d reaches B, and exp(-128) is 0 in float32).  lam'_i = lam_i when the
   two distances are equal.

5. Uncertainty head u, on the last-stage features h (B, c, h, w) of the network:
       u(h) = l2norm( softmax( W_u GAP(h) + b_u ) )            (a (B, C) matrix, rows of norm 1)
   u_mix = u(h(x~)),  u_a = u(h(x)),  u_b = u_a[perm].  W_u (C x c, with bias) is SUMix's own parameter,
   initialised N(0, 0.01) with zero bias as the official head; it joins the optimizer through
   :meth:`param_groups`.  h is the output of the last stage, which on the CNN backbones (heads of global
   pooling and a linear layer) is exactly what the classifier pools, as in the official head (which shares
   its input with the classifier).  This includes the Wide-ResNets: their final BN-ReLU ends the last stage
   (:mod:`mixbench.models.wide_resnet`), so h is the activated map the classifier pools, not the residual
   sum before that BN-ReLU.

6. Loss.  The uncertainty enters additively with the semantic distance, and exp(-(.)) of the sum is used
   as the logits of a cross-entropy whose target is the source's label:
       L = mean_i[ lam'_i CE(z_mix,i, y_a,i) + (1 - lam'_i) CE(z_mix,i, y_b,i) ]
         + gamma * mean_i[ lam_i CE(exp(-(d_a,i + u_a,i + u_mix,i)), y_a,i)
                           + (1 - lam_i) CE(exp(-(d_b,i + u_b,i + u_mix,i)), y_b,i) ]
   with z_mix = f(x~) the logits of the mixed batch, lam the base's ratio in the regulariser and
   gamma 0.5 (CIFAR, CUB, ImageNet) or 1.0 (Tiny-ImageNet).  The recipe's label smoothing applies to the
   first term only (the official regulariser uses plain cross-entropy).

The mixed batch goes through ``model(x~, mix_stage=last, mix_fn=capture)``: ``capture`` records h and returns
it unchanged, so there is one call to ``forward`` (DDP-safe) and h is the tensor the logits come from.

:class:`SUMix` takes its base already built, ``SUMix(CutMix(alpha=0.2), gamma=0.5)``, and holds it as the
submodule ``base`` (its state is checkpointed as ``base.*``); building it by name is done by
:func:`mixbench.build_method` and a run's config (``method=sumix method.base=cutmix
method.base_options={alpha: 0.2}``, see :mod:`mixbench.engine.method_config`).  Its mixed batch comes from
``base.mix_with_model(model, x, y, capture_stage=last)`` when it defines one (saliency and learned methods),
else from ``base.mix(x, y)``; a base with neither is refused.  ``setup``,
``bind``, ``after_step``, ``eval_models``, ``param_groups`` and ``check_model`` are delegated to it.  SUMix's
loss replaces the base's classification loss: PuzzleMix's clean loss is not part of a SUMix step.

Shared passes.  A base that already runs the clean batch through the online network (Puzzle Mix's saliency
forward, in the same mode, on the same parameters) returns that forward's logits and last-stage features with
its batch (``MixedBatch.clean_logits`` / ``clean_features``, detached), and SUMix uses them instead of its own
no-grad forward of step 1: the same values (tests/test_methods_wrappers.py compares the two paths), one
forward fewer per step.  A base that trains a part of its own returns that part's loss with its batch
(``MixedBatch.own_loss``; AutoMix: the EMA teacher's mixed CE on the live Mix Block mask plus the mask loss,
on its own draw of lam and the pairing, from the same teacher forward as the batch's mask); it is added to
SUMix's, unweighted as in AutoMix's own step, so that the Mix Block keeps learning, and logged as
``mix_block_loss``:
       L_total = L + own_loss

Under ``compile=true`` the mixed batch's forward and the whole loss above are one compiled call
(:func:`sumix_loss_of_forward`, :meth:`SUMix.compile_parts`), as the input-space methods' forward and loss
are.  The loss's 122 small operations a step (forward and backward, beyond the base's and the clean forward's:
counted on the CPU at 8e9efbb, SUMix on CutMix, r18) are then fused into the network's graph, and replayed
with it in ``compile_mode=reduce-overhead``, instead of launched one by one (about 30 us of host time each on
an H200 at 5b521f1; SUMix compiled is not yet measured there).  The eager step runs the same function, the
same operations in the same order as before.

Deliberate deviations from the official code (github.com/JinXins/SUMix, ``ClsUncertainMixupHead.IN_loss``):

* lam' is used per sample.  The official head multiplies a batch-mean cross-entropy by the per-sample lam',
  which collapses lam' to its batch mean by accident.
* The clean forward runs under ``no_grad``; the official one is in the graph, so the backbone also receives
  gradient through u(h(x)).  Here u_a and u_b train W_u only.  (Like the official one, it runs in the
  network's current mode, so in training batch-norm statistics see the clean batch too.)  On Puzzle Mix it
  is the saliency forward's (above), so BatchNorm's running averages take the clean batch's statistics once
  per step there, not twice.
* lam' is computed in log space (same value; no 0/0 when both exp(-d) underflow).
* The official regulariser weights batch-mean cross-entropies by the scalar lam; with a per-sample lam
  (FMix-like bases) we weight each sample's cross-entropy by its own lam.
* Batched and on the device: no Python loops over samples, no host synchronisation.

Observation, kept as the default: with the signed difference of step 3, a source whose class probability
dropped in the mix (p_mix[y_a] << p_a[y_a]) gets a *smaller* d and so a *larger* share of the label; a source
kept intact gets d close to B / sqrt(C) (a nearly uniform softmax row).  The paper motivates lam' as
lowering the share of an occluded source; the signed formula moves it the other way.  With
``distance: absolute`` the occluded source's large |p_mix[y_a] - p_a[y_a]| gives it the larger d and so the
smaller share, as the paper's motivation describes (an option, not the specified default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import (
    FORWARD_NO_GRAD,
    STEP,
    InputMixMethod,
    Logs,
    MixedBatch,
    MixMethod,
    MixPreview,
    add_passes,
    mixed_cross_entropy,
)
from mixbench.methods.registry import register_method
from mixbench.models.base import StagedNet, StageUnavailableError
from mixbench.rng import MixRandom

SUMIX_BASES = ("cutmix", "fmix", "saliencymix", "resizemix", "puzzlemix", "automix")
DISTANCES = ("signed", "absolute")
DUMMY_SIZE = 32  # side of the dummy input that measures the last stage's channel count
HEAD_INIT_STD = 0.01


def semantic_distances(
    p_mix: torch.Tensor,
    p_clean: torch.Tensor,
    perm: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    distance: str = "signed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_a, d_b), each (B, C): ``B * l2norm(softmax(p_mix - p_source))`` with the partner's class zeroed;
    ``distance="absolute"`` takes ``|p_mix - p_source|`` instead of the signed difference."""
    check_distance(distance)
    p_a = p_clean.scatter(1, y_b[:, None], 0.0)
    p_b = p_clean[perm].scatter(1, y_a[:, None], 0.0)
    difference_a, difference_b = p_mix - p_a, p_mix - p_b
    if distance == "absolute":
        difference_a, difference_b = difference_a.abs(), difference_b.abs()
    batch = p_mix.shape[0]
    d_a = batch * F.normalize(F.softmax(difference_a, dim=1), dim=1)
    d_b = batch * F.normalize(F.softmax(difference_b, dim=1), dim=1)
    return d_a, d_b


def check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"method.distance must be one of {', '.join(DISTANCES)}, got '{distance}'")


def reestimated_ratio(
    lam: torch.Tensor, d_a: torch.Tensor, d_b: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor
) -> torch.Tensor:
    """Per-sample ``lam s_a / (lam s_a + (1 - lam) s_b)`` with ``s = exp(-d[own label])``, in log space."""
    distance_a = d_a.gather(1, y_a[:, None]).squeeze(1)
    distance_b = d_b.gather(1, y_b[:, None]).squeeze(1)
    return torch.sigmoid(torch.log(lam) - torch.log1p(-lam) + distance_b - distance_a)


def uncertainty(head: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """``l2norm(softmax(W_u GAP(h)))``, (B, C), for features of shape (B, c, ...)."""
    pooled = features.flatten(2).mean(dim=2) if features.dim() > 2 else features
    return F.normalize(F.softmax(head(pooled).float(), dim=1), dim=1)


def uncertainty_regulariser(
    evidence_a: torch.Tensor,
    evidence_b: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """``mean(lam CE(exp(-evidence_a), y_a) + (1 - lam) CE(exp(-evidence_b), y_b))``."""
    loss_a = F.cross_entropy(torch.exp(-evidence_a), y_a, reduction="none")
    loss_b = F.cross_entropy(torch.exp(-evidence_b), y_b, reduction="none")
    return (lam * loss_a + (1.0 - lam) * loss_b).mean()


def per_sample_lam(lam: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """The base's ratio as a float32 (B,) tensor on ``device`` (no host-device copy for a Python float)."""
    if torch.is_tensor(lam):
        return lam.to(device=device, dtype=torch.float32).reshape(-1).expand(batch)
    return torch.full((batch,), float(lam), device=device)


def forward_capturing(model: nn.Module, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``x`` and the features of stage ``stage`` they come from, in one call to ``model``."""
    captured: list[torch.Tensor] = []

    def capture(features: torch.Tensor) -> torch.Tensor:
        captured.append(features)
        return features

    logits = model(x, mix_stage=stage, mix_fn=capture)
    return logits, captured[0]


def prediction_distances(
    clean_logits: torch.Tensor,
    mixed_logits: torch.Tensor,
    perm: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    distance: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_a, d_b) from stop-gradient softmax predictions of the clean and the mixed batch (steps 1-3)."""
    p_clean = F.softmax(clean_logits.detach().float(), dim=1)
    p_mixed = F.softmax(mixed_logits.detach().float(), dim=1)
    return semantic_distances(p_mixed, p_clean, perm, y_a, y_b, distance=distance)


def sumix_loss_of_forward(
    model: nn.Module,
    mixed_x: torch.Tensor,
    clean_logits: torch.Tensor,
    clean_features: torch.Tensor,
    head: nn.Linear,
    perm: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: torch.Tensor,
    last_stage: int,
    label_smoothing: float,
    gamma: float,
    distance: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mixed batch's forward (capturing the last stage's features) and SUMix's loss, steps 3-6 of the
    module docstring, given the clean batch's logits and features: ``(L, lam', regulariser)``.

    One call, so that ``compile=true`` traces the loss's ~120 small operations (softmaxes, norms, two
    heads, four cross-entropies) with the network, as the input-space methods' loss is
    (``mixed_loss_of_forward``): fused, and replayed with the network's CUDA graph in ``reduce-overhead``,
    instead of launched one by one.  ``lam`` is a (B,) tensor and the Python values are the run's
    constants, so one graph serves every step."""
    mixed_logits, mixed_features = forward_capturing(model, mixed_x, last_stage)
    d_a, d_b = prediction_distances(clean_logits, mixed_logits, perm, y_a, y_b, distance)
    lam_new = reestimated_ratio(lam, d_a, d_b, y_a, y_b)
    classification = mixed_cross_entropy(mixed_logits, y_a, y_b, lam_new, label_smoothing)
    u_clean = uncertainty(head, clean_features)
    u_mixed = uncertainty(head, mixed_features)
    regulariser = uncertainty_regulariser(
        d_a + u_clean + u_mixed, d_b + u_clean[perm] + u_mixed, y_a, y_b, lam
    )
    return classification + gamma * regulariser, lam_new, regulariser


def _defines(method: MixMethod, attribute: str) -> bool:
    """Whether ``method``'s class provides ``attribute`` itself (not InputMixMethod's refusing default)."""
    own = getattr(type(method), attribute, None)
    return callable(own) and own is not getattr(InputMixMethod, attribute, None)


def check_base_name(name: str) -> None:
    """Refuse (one line) a base that is not one of the cutting methods SUMix wraps, listing them."""
    if name not in SUMIX_BASES:
        raise ValueError(
            f"method.base '{name}' is not a cutting method SUMix wraps; valid: {', '.join(SUMIX_BASES)}"
        )


def check_base(base: MixMethod) -> None:
    """Refuse (one line) a base SUMix cannot wrap: not a built cutting method, or one exposing no mixed
    batch (neither ``mix_with_model`` nor ``mix``)."""
    if not isinstance(base, MixMethod):
        raise TypeError(
            f"sumix takes a built base method, not {base!r}; build it by name with "
            "mixbench.build_method('sumix', base=<name>)"
        )
    check_base_name(base.name)
    if not (_defines(base, "mix_with_model") or _defines(base, "mix")):
        raise ValueError(
            f"method.base '{base.name}' exposes no mixed batch: it defines neither "
            "mix_with_model(model, x, y) nor mix(x, y)"
        )


@register_method
class SUMix(MixMethod):
    """SUMix around the cutting method ``base`` (built), regulariser weight ``gamma``; see the module."""

    name = "sumix"

    def __init__(self, base: MixMethod, gamma: float = 0.5, distance: str = "signed") -> None:
        super().__init__()
        check_base(base)
        if gamma < 0:
            raise ValueError(f"method.gamma must be non-negative, got {gamma}")
        check_distance(distance)
        self.base_name = base.name
        self.base = base
        self.gamma = float(gamma)
        self.distance = distance
        self.required_stages = self.base.required_stages
        self.uses_model = _defines(self.base, "mix_with_model")
        self.last_stage: int | None = None
        self.uncertainty_head: nn.Linear | None = None
        # the mixed forward and the loss; compiled by compile_parts (a function: outside the module tree)
        self.forward_loss: Callable[..., tuple[torch.Tensor, ...]] = sumix_loss_of_forward

    def passes(self) -> dict[str, float]:
        """The base's passes that make the mixed batch, the online step on it, and the clean batch's forward
        under no_grad unless the base hands over its own (Puzzle Mix's saliency forward)."""
        clean = {} if self.base.provides_clean_forward else {FORWARD_NO_GRAD: 1.0}
        return add_passes(self.base.mix_passes(), {STEP: 1.0}, clean)

    # -- delegation to the base ----------------------------------------------------------------------
    def setup(self, model: StagedNet, num_classes: int) -> None:
        self.base.setup(model, num_classes)
        self.last_stage = model.num_stages
        channels = self._last_stage_channels(model)
        device = next(model.parameters()).device
        head = nn.Linear(channels, num_classes, device=device)
        # Initialised from torch's global generator, which the trainer seeds before building (as the model).
        nn.init.normal_(head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(head.bias)
        self.uncertainty_head = head

    def bind(self, rng: MixRandom, label_smoothing: float = 0.0, total_steps: int = 1) -> None:
        super().bind(rng, label_smoothing, total_steps)
        self.base.bind(rng, label_smoothing, total_steps)

    def check_model(self, model: StagedNet) -> None:
        self.base.check_model(model)
        if model.num_stages < 1:
            raise StageUnavailableError(
                "sumix reads the last stage's features for its uncertainty head, and "
                f"model {model.name} exposes hidden states at stages {list(model.feature_stages)} only"
            )

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        own = [] if self.uncertainty_head is None else list(self.uncertainty_head.parameters())
        groups = [{"params": own, "lr": lr, "weight_decay": weight_decay}] if own else []
        return groups + self.base.param_groups(lr, weight_decay)

    def after_step(self, model: nn.Module) -> None:
        self.base.after_step(model)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        return self.base.eval_models(model)

    # -- the step ------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        batch = self.base_batch(model, x, y)
        perm = self._checked_pairing(batch)
        lam = per_sample_lam(batch.lam, x.shape[0], x.device)
        clean_logits, clean_features = self._clean_forward(model, x, batch)
        loss, lam_new, regulariser = self.forward_loss(
            model,
            batch.x,
            clean_logits,
            clean_features,
            self.uncertainty_head,
            perm,
            batch.y_a,
            batch.y_b,
            lam,
            self.last_stage,
            self.label_smoothing,
            self.gamma,
            self.distance,
        )
        logs = {
            "lam": lam.mean(),
            "lam_reestimated": lam_new.mean(),
            "uncertainty_loss": regulariser.detach(),
        }
        if batch.own_loss is not None:  # the base's own trainable part (AutoMix's Mix Block) keeps its loss
            loss = loss + batch.own_loss
            logs["mix_block_loss"] = batch.own_loss.detach()
        return loss, logs

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        """Under ``compile=true``: the base's parts, and the mixed batch's forward with SUMix's loss in one
        compiled call (:func:`sumix_loss_of_forward`), held outside the module tree."""
        super().compile_parts(compiler)
        self.forward_loss = compiler(sumix_loss_of_forward)

    def base_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        """The base's mixed batch: ``mix_with_model`` when the base defines it (asked for the last stage's
        features of any clean forward it runs), else ``mix``."""
        if self.uses_model:
            return self.base.mix_with_model(model, x, y, capture_stage=self.last_stage)
        return self.base.mix(x, y)

    def _clean_forward(
        self, model: nn.Module, x: torch.Tensor, batch: MixedBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and last-stage features of the clean batch, without gradient: the base's own forward of
        it when it ran one through ``model`` (Puzzle Mix's saliency forward), else one under ``no_grad``."""
        if batch.clean_logits is not None and batch.clean_features is not None:
            return batch.clean_logits.detach(), batch.clean_features.detach()
        with torch.no_grad():
            return forward_capturing(model, x, self.last_stage)

    def _checked_pairing(self, batch: MixedBatch) -> torch.Tensor:
        if self.uncertainty_head is None:
            raise RuntimeError("sumix.setup(model, num_classes) must run before training (it builds W_u)")
        if batch.perm is None:
            raise ValueError(
                f"sumix: base {self.base_name} returned a mixed batch without its pairing (perm)"
            )
        return batch.perm

    def _last_stage_channels(self, model: StagedNet) -> int:
        """Channels of the last stage's output, from a dummy forward in eval mode (no statistics updated)."""
        parameter = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                dummy = torch.zeros(
                    1, 3, DUMMY_SIZE, DUMMY_SIZE, device=parameter.device, dtype=parameter.dtype
                )
                features = model.forward_features(dummy, self.last_stage)
        finally:
            model.train(was_training)
        return int(features.shape[1])

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """The base's sources, mask and mix; each column's lam is SUMix's re-estimated ratio."""
        batch = self.base_batch(model, x, y)
        perm = self._checked_pairing(batch)
        lam = per_sample_lam(batch.lam, x.shape[0], x.device)
        clean_logits, _ = forward_capturing(model, x, self.last_stage)
        mixed_logits, _ = forward_capturing(model, batch.x, self.last_stage)
        distances = prediction_distances(
            clean_logits, mixed_logits, perm, batch.y_a, batch.y_b, self.distance
        )
        lam_new = reestimated_ratio(lam, *distances, batch.y_a, batch.y_b)
        rows = {"source a": x, "source b": x[perm]}
        if batch.mask is not None:
            rows["mask (share of b)"] = batch.mask.expand(x.shape[0], 1, *x.shape[-2:])
        rows["mixed"] = batch.x
        note = (
            f"sumix on {self.base_name}: lam below is the re-estimated ratio "
            f"(batch mean {lam.mean().item():.2f} from {self.base_name} -> {lam_new.mean().item():.2f})"
        )
        return MixPreview(rows=rows, lam=lam_new.cpu(), note=note)
