"""The wrappers SUMix and switch, and the refusal of the style methods.

SUMix: the re-estimated ratio is checked against a by-hand, per-sample computation of METHODS.md's formula
(loops and plain exponentials, written independently of the implementation), its properties are checked on
constructed inputs (in [0, 1]; equal to lam when the two distances are equal), and the step's structure is
checked by recording the model's calls (the clean forward carries no gradient).  Switch: each choice is drawn
with its probability, and a step's loss is the chosen method's loss for the same generator state.  Core
properties use cutmix; the other cutting methods are exercised when they are registered.

Both wrappers take their children built (``Switch(methods, probs)``, ``SUMix(base, gamma, distance)``);
building them by name is :mod:`mixbench.engine.method_config`'s: ``build_method`` (the Python API,
constructor defaults) and ``build_method_from_config`` (a run's config, each child from its own config),
whose refusals are checked here too, and the checkpoint keys of the old by-name constructors are kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import mixbench.methods.sumix as sumix_module
from mixbench import build_method
from mixbench.config import CONFIG_DIR, ConfigError
from mixbench.engine.method_config import build_method_from_config
from mixbench.methods import METHODS, InputMixMethod, MixMethod, mixed_cross_entropy
from mixbench.methods.cutmix import CutMix
from mixbench.methods.mixup import Mixup
from mixbench.methods.stylemix import StyleCutMix, StyleMix
from mixbench.methods.sumix import SUMIX_BASES, SUMix, reestimated_ratio, semantic_distances
from mixbench.methods.switch import HEAD_REPLACING_METHODS, Switch
from mixbench.models import StageUnavailableError, build_model
from mixbench.rng import MixRandom
from tests.helpers import InputOnlyNet, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

BATCH, SIZE, CLASSES = 8, 16, 10


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py


def tiny_r18(confident: bool = False) -> nn.Module:
    """PreActResNet18 of width 4 in eval mode; ``confident`` scales the classifier (peaked predictions)."""
    torch.manual_seed(0)
    model = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4).eval()
    if confident:
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            classifier.weight.mul_(40.0)
    return model


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.arange(BATCH)


def ready_sumix(model: nn.Module, seed: int, **options) -> SUMix:
    """SUMix built by name (``base``, ``gamma``, ...), set up for ``model``, bound to ``MixRandom(seed)``."""
    torch.manual_seed(123)  # W_u's initialisation
    method = build_method("sumix", **options)
    method.setup(model, CLASSES)
    method.bind(MixRandom(seed))
    return method


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message, message
    return message


class ForwardRecorder:
    """Records each ``forward_features`` call: its input, its output, whether the output carries gradient."""

    def __init__(self, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[torch.Tensor] = []
        self.features: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.with_grad: list[bool] = []
        features, continue_from = model.forward_features, model.forward_from

        def forward_features(x, stage):
            h = features(x, stage)
            self.inputs.append(x.detach().clone())
            self.features.append(h.detach().clone())
            self.with_grad.append(h.requires_grad)
            return h

        def forward_from(h, stage):
            logits = continue_from(h, stage)
            self.logits.append(logits.detach().clone())
            return logits

        monkeypatch.setattr(model, "forward_features", forward_features)
        monkeypatch.setattr(model, "forward_from", forward_from)


# ------------------------------------------------------------------------------------- sumix: construction


@pytest.mark.parametrize("base", ["mixup", "vanilla", "manifoldmix", "nosuch"])
def test_sumix_refuses_a_base_that_is_not_a_cutting_method_and_lists_the_valid_ones(base: str) -> None:
    with pytest.raises(ValueError) as info:
        build_method("sumix", base=base)
    message = one_line(info)
    assert base in message and all(name in message for name in SUMIX_BASES)
    if base in METHODS:  # the same refusal for a built base
        with pytest.raises(ValueError) as info:
            SUMix(build_method(base))
        message = one_line(info)
        assert base in message and all(name in message for name in SUMIX_BASES)


def sumix_config(**options) -> dict:
    """A run's method config for sumix: configs/method/sumix.yaml's values updated by ``options``."""
    return {**OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "method" / "sumix.yaml")), **options}


def test_sumix_builds_its_base_from_the_config_plus_base_options_as_a_submodule() -> None:
    default = build_method_from_config(sumix_config())
    assert isinstance(default.base, CutMix) and default.base.alpha == 1.0  # configs/method/cutmix.yaml
    assert dict(default.named_children())["base"] is default.base  # checkpointed with the method
    assert build_method_from_config(sumix_config(base_options={"alpha": 0.2})).base.alpha == 0.2
    fmix = build_method_from_config(sumix_config(base="fmix"))
    assert fmix.base.alpha == 0.2, "the base starts from configs/method/fmix.yaml, not the constructor's 1.0"
    assert build_method("sumix", base="fmix").base.alpha == 1.0, "the Python API starts from the constructor"
    with pytest.raises(ValueError, match="does not take option") as info:
        build_method_from_config(sumix_config(base_options={"beta": 1.0}))
    assert one_line(info).startswith("method.base_options: ") and "valid: alpha" in str(info.value)
    with pytest.raises(ValueError, match="alpha must be a positive number") as info:
        build_method_from_config(sumix_config(base_options={"alpha": 0.0}))
    assert "method.base_options.alpha" in one_line(info)
    base = CutMix(alpha=0.3)
    assert SUMix(base, gamma=1.0).base is base  # a built base is used as it is


class LossOnly(MixMethod):
    """A stand-in for a registered cutting method that exposes no mixed batch (only a loss)."""

    name = "cutmix"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()


def test_sumix_refuses_a_base_that_exposes_no_mixed_batch(monkeypatch) -> None:
    with pytest.raises(ValueError) as info:
        SUMix(LossOnly())
    assert "mix_with_model" in one_line(info)
    monkeypatch.setitem(METHODS, "cutmix", LossOnly)
    with pytest.raises(ValueError) as info:
        build_method("sumix", base="cutmix")
    assert "mix_with_model" in one_line(info)


@pytest.mark.parametrize("base", ["cutmix", None])
def test_sumix_refuses_a_base_given_by_name_or_missing_pointing_to_build_method(base) -> None:
    with pytest.raises(TypeError, match=r"build_method\('sumix', base=<name>\)"):
        SUMix(base)


def test_sumix_gets_the_batch_from_mix_with_model_when_the_base_defines_it(monkeypatch) -> None:
    seen: list[nn.Module] = []

    class ModelAwareCutMix(CutMix):
        def mix_with_model(self, model, x, y, capture_stage=None):
            seen.append(model)
            return self.mix(x, y)

    monkeypatch.setitem(METHODS, "cutmix", ModelAwareCutMix)
    model = tiny_r18()
    x, y = batch()
    ready_sumix(model, seed=0).training_step(model, x, y)
    assert seen == [model]


# ----------------------------------------------------------------------------- sumix: the ratio and losses


def test_reestimated_ratio_stays_in_unit_interval_even_when_exp_minus_d_underflows() -> None:
    g = torch.Generator().manual_seed(0)
    big_batch, classes = 512, 10  # d reaches 512: exp(-512) is 0 in float32
    for lam_value in (0.0, 1e-7, 0.3, 0.999999, 1.0):
        logits = torch.randn(big_batch, classes, generator=g) * 10
        p_clean, p_mix = logits.softmax(1), (logits + torch.randn(big_batch, classes, generator=g)).softmax(1)
        y = torch.randint(0, classes, (big_batch,), generator=g)
        perm = torch.randperm(big_batch, generator=g)
        d_a, d_b = semantic_distances(p_mix, p_clean, perm, y, y[perm])
        lam = torch.full((big_batch,), lam_value)
        lam_new = reestimated_ratio(lam, d_a, d_b, y, y[perm])
        assert torch.isfinite(lam_new).all() and (lam_new >= 0).all() and (lam_new <= 1).all()
        if lam_value in (0.0, 1.0):
            assert torch.equal(lam_new, lam), "a pure sample must stay pure"


def symmetric_pair(p_mix_row: list[float]) -> tuple[torch.Tensor, ...]:
    """Two samples of classes 0 and 1, each the other's partner, with mirror-image clean predictions."""
    p_clean = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]])
    p_mix = torch.tensor([p_mix_row, p_mix_row[1::-1] + p_mix_row[2:]])
    y, perm = torch.tensor([0, 1]), torch.tensor([1, 0])
    return p_mix, p_clean, perm, y, y[perm]


def test_reestimated_ratio_equals_lam_when_the_two_distances_are_equal() -> None:
    """A mix predicted 0.4/0.4 for the two classes, from mirror-image sources: d_a[y_a] = d_b[y_b]."""
    p_mix, p_clean, perm, y_a, y_b = symmetric_pair([0.4, 0.4, 0.1, 0.1])
    d_a, d_b = semantic_distances(p_mix, p_clean, perm, y_a, y_b)
    assert d_a[0, 0] == pytest.approx(float(d_b[0, 1]), abs=1e-7)
    for lam_value in (0.1, 0.37, 0.5, 0.8):
        lam = torch.full((2,), lam_value)
        torch.testing.assert_close(reestimated_ratio(lam, d_a, d_b, y_a, y_b), lam)


def test_reestimated_ratio_follows_the_signed_difference_of_the_specification() -> None:
    """METHODS.md/official code: d uses softmax(p_mix - p_a) (signed).  A mix that keeps class a (0.6 vs
    0.2) has the larger d for a, so lam' moves towards b.  This pins the specified direction; see the
    module docstring for why it is worth a second look."""
    p_mix, p_clean, perm, y_a, y_b = symmetric_pair([0.6, 0.2, 0.1, 0.1])
    d_a, d_b = semantic_distances(p_mix, p_clean, perm, y_a, y_b)
    lam = torch.full((2,), 0.5)
    by_hand = []
    for i in range(2):
        own_a, own_b = p_clean[i].clone(), p_clean[perm[i]].clone()
        own_a[y_b[i]], own_b[y_a[i]] = 0.0, 0.0
        row_a, row_b = torch.softmax(p_mix[i] - own_a, 0), torch.softmax(p_mix[i] - own_b, 0)
        s_a = math.exp(-2 * float(row_a[y_a[i]] / row_a.norm()))
        s_b = math.exp(-2 * float(row_b[y_b[i]] / row_b.norm()))
        by_hand.append(0.5 * s_a / (0.5 * s_a + 0.5 * s_b))
    lam_new = reestimated_ratio(lam, d_a, d_b, y_a, y_b)
    torch.testing.assert_close(lam_new, torch.tensor(by_hand))
    assert (lam_new < 0.5).all()


def test_absolute_and_signed_distances_agree_where_the_mix_dominates_each_source_and_differ_elsewhere() -> (
    None
):
    g = torch.Generator().manual_seed(11)
    p_clean = torch.rand(6, 5, generator=g).softmax(1)
    perm, y = torch.tensor([1, 2, 0, 4, 5, 3]), torch.tensor([0, 1, 2, 3, 4, 0])
    above = p_clean.max() + torch.rand(6, 5, generator=g)  # p_mix >= p_a and >= p_b everywhere
    signed = semantic_distances(above, p_clean, perm, y, y[perm], distance="signed")
    absolute = semantic_distances(above, p_clean, perm, y, y[perm], distance="absolute")
    for d_signed, d_absolute in zip(signed, absolute, strict=True):
        torch.testing.assert_close(d_signed, d_absolute)
    below = above.clone()
    below[0, 0] = 0.0  # sample 0's own class (y_a = 0) drops below p_a in the mix
    signed = semantic_distances(below, p_clean, perm, y, y[perm], distance="signed")
    absolute = semantic_distances(below, p_clean, perm, y, y[perm], distance="absolute")
    assert not torch.allclose(signed[0][0], absolute[0][0])
    torch.testing.assert_close(signed[0][1:], absolute[0][1:])  # the other rows still dominate their sources


def test_absolute_distance_gives_an_occluded_source_a_smaller_share_than_an_intact_one() -> None:
    """Sample 0 mixes a (class 0, clean p 0.9) and b (class 1, clean p 0.9); the mix is predicted 0.05 / 0.85:
    a is occluded, b intact.  With lam = 0.5, the absolute distance moves lam' (a's share) below 0.5; the
    signed one (the specified default) moves it above, as the module docstring observes."""
    p_clean = torch.tensor([[0.9, 0.04, 0.03, 0.03], [0.04, 0.9, 0.03, 0.03]])
    p_mix = torch.tensor([[0.05, 0.85, 0.05, 0.05], [0.85, 0.05, 0.05, 0.05]])
    y, perm = torch.tensor([0, 1]), torch.tensor([1, 0])
    lam = torch.full((2,), 0.5)
    absolute = reestimated_ratio(
        lam, *semantic_distances(p_mix, p_clean, perm, y, y[perm], "absolute"), y, y[perm]
    )
    signed = reestimated_ratio(
        lam, *semantic_distances(p_mix, p_clean, perm, y, y[perm], "signed"), y, y[perm]
    )
    assert float(absolute[0]) < 0.5 < 1 - float(absolute[0]), "the occluded source kept the larger share"
    assert float(signed[0]) > 0.5
    intact = reestimated_ratio(  # the mirror image: a intact (0.85), b occluded (0.05)
        lam, *semantic_distances(p_mix[[1, 0]], p_clean, perm, y, y[perm], "absolute"), y, y[perm]
    )
    assert float(intact[0]) > 0.5


@pytest.mark.parametrize("distance", ["euclidean", "Signed", ""])
def test_sumix_refuses_an_unknown_distance_in_one_line(distance: str) -> None:
    with pytest.raises(ValueError) as info:
        SUMix(CutMix(), distance=distance)
    message = one_line(info)
    assert "method.distance" in message and "signed" in message and "absolute" in message


def test_sumix_with_automix_trains_the_mix_block_and_logs_its_loss() -> None:
    """The Mix Block is only used under no_grad for the mixed batch; its own loss must join SUMix's."""
    model = tiny_r18().train()
    x, y = batch(9)
    method = ready_sumix(model, seed=2, base="automix")
    loss, logs = method.training_step(model, x, y)
    assert math.isfinite(float(logs["mix_block_loss"])) and float(logs["mix_block_loss"]) > 0
    loss.backward()
    mix_block = list(method.base.mix_block.parameters())
    assert mix_block and all(p.grad is not None for p in mix_block)
    assert sum(float(p.grad.abs().sum()) for p in mix_block) > 0
    assert all(p.grad is None for p in method.base.ema.module.parameters()), "the EMA teacher stays frozen"
    assert "mix_block_loss" not in ready_sumix(model, seed=2).training_step(model, x, y)[1]  # cutmix base


def test_sumix_on_puzzlemix_reuses_the_saliency_forward_with_the_same_loss_and_gradients(monkeypatch) -> None:
    """Puzzle Mix's saliency forward of the clean batch gives SUMix its clean logits and features: two network
    calls per step instead of three, and the loss and every gradient as with SUMix's own clean forward."""
    x, y = batch(3)
    results = {}
    for shared in (True, False):
        model = tiny_r18().train()
        method = ready_sumix(model, seed=5, base="puzzlemix")
        if not shared:  # the base's batch without its clean forward: SUMix runs its own
            mix_with_model = method.base.mix_with_model

            def without_clean_forward(model, x, y, capture_stage=None, mix_with_model=mix_with_model):
                mixed = mix_with_model(model, x, y, capture_stage)
                mixed.clean_logits = mixed.clean_features = None
                return mixed

            monkeypatch.setattr(method.base, "mix_with_model", without_clean_forward)
        calls: list[int] = []
        continue_from = model.forward_from

        def counted_forward_from(h, stage, calls=calls, continue_from=continue_from):
            calls.append(stage)
            return continue_from(h, stage)

        monkeypatch.setattr(model, "forward_from", counted_forward_from)
        loss, logs = method.training_step(model, x, y)
        loss.backward()
        results[shared] = (
            loss.detach(),
            logs,
            [p.grad for p in [*model.parameters(), *method.parameters()]],
            len(calls),
        )
    (loss_shared, logs_shared, grads_shared, calls_shared) = results[True]
    (loss_own, logs_own, grads_own, calls_own) = results[False]
    assert (calls_shared, calls_own) == (2, 3)
    torch.testing.assert_close(loss_shared, loss_own, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logs_shared["lam_reestimated"], logs_own["lam_reestimated"])
    assert all(g is not None for g in grads_shared)
    for shared_grad, own_grad in zip(grads_shared, grads_own, strict=True):
        torch.testing.assert_close(shared_grad, own_grad, rtol=1e-5, atol=1e-6)


def test_sumix_on_automix_runs_the_teacher_to_its_stage_once_per_step(monkeypatch) -> None:
    model = tiny_r18().train()
    x, y = batch(4)
    method = ready_sumix(model, seed=6, base="automix")
    teacher = method.base.ema.module
    stages = []
    features = teacher.forward_features
    monkeypatch.setattr(
        teacher, "forward_features", lambda h, stage: stages.append(stage) or features(h, stage)
    )
    method.training_step(model, x, y)
    # the clean batch to the Mix Block's stage (3) once; the Mix Block's mixed batch through the whole teacher
    assert sorted(stages) == [0, method.base.feature_stage]


def by_hand_sumix_loss(
    method: SUMix,
    rec: ForwardRecorder,
    y: torch.Tensor,
    perm,
    lam: float,
    gamma: float,
    absolute: bool = False,
):
    """METHODS.md's loss, sample by sample, from the recorded logits and features (float64); ``absolute``
    takes |p_mix - p_source| in the distances (``distance: absolute``)."""
    clean_logits, mixed_logits = rec.logits[0].double(), rec.logits[1].double()
    clean_h, mixed_h = rec.features[0].double(), rec.features[1].double()
    weight = method.uncertainty_head.weight.detach().double()
    bias = method.uncertainty_head.bias.detach().double()

    def u(h):
        probs = torch.softmax(weight @ h.mean(dim=(1, 2)) + bias, 0)
        return probs / probs.norm()

    def ce(logits, label):
        return float(torch.logsumexp(logits, 0) - logits[label])

    p, p_mix = clean_logits.softmax(1), mixed_logits.softmax(1)
    size = len(y)
    lam_new, main, regulariser = [], [], []
    for i in range(size):
        j, y_a, y_b = int(perm[i]), int(y[i]), int(y[perm[i]])
        own_a, own_b = p[i].clone(), p[j].clone()
        own_a[y_b], own_b[y_a] = 0.0, 0.0
        difference_a, difference_b = p_mix[i] - own_a, p_mix[i] - own_b
        if absolute:
            difference_a, difference_b = difference_a.abs(), difference_b.abs()
        row_a, row_b = torch.softmax(difference_a, 0), torch.softmax(difference_b, 0)
        d_a, d_b = size * row_a / row_a.norm(), size * row_b / row_b.norm()
        s_a, s_b = math.exp(-float(d_a[y_a])), math.exp(-float(d_b[y_b]))
        ratio = lam * s_a / (lam * s_a + (1 - lam) * s_b)
        lam_new.append(ratio)
        main.append(ratio * ce(mixed_logits[i], y_a) + (1 - ratio) * ce(mixed_logits[i], y_b))
        evidence_a = d_a + u(clean_h[i]) + u(mixed_h[i])
        evidence_b = d_b + u(clean_h[j]) + u(mixed_h[i])
        regulariser.append(
            lam * ce(torch.exp(-evidence_a), y_a) + (1 - lam) * ce(torch.exp(-evidence_b), y_b)
        )
    loss = sum(main) / size + gamma * sum(regulariser) / size
    return loss, lam_new


def test_sumix_loss_matches_the_per_sample_formula_computed_by_hand(monkeypatch) -> None:
    model = tiny_r18(confident=True)
    x, y = batch(1)
    method = ready_sumix(model, seed=3, gamma=0.5)
    rec = ForwardRecorder(model, monkeypatch)
    loss, logs = method.training_step(model, x, y)
    reference = CutMix()
    reference.bind(MixRandom(3))
    mixed = reference.mix(x, y)  # same generator state: the base's batch
    assert 0.05 < mixed.lam < 0.95, "pick a seed that mixes"
    assert len(rec.inputs) == 2 and torch.equal(rec.inputs[0], x) and torch.equal(rec.inputs[1], mixed.x)

    expected, lam_new = by_hand_sumix_loss(method, rec, y, mixed.perm, mixed.lam, gamma=0.5)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(logs["lam_reestimated"]) == pytest.approx(sum(lam_new) / BATCH, rel=1e-5)
    assert float(logs["lam"]) == pytest.approx(mixed.lam, rel=1e-6)
    assert max(lam_new) - min(lam_new) > 0.01, "lam' is the same for every sample: not per sample"

    mean_ratio = sum(lam_new) / BATCH  # the official code's accidental batch mean gives another loss
    logits = rec.logits[1]
    collapsed = mean_ratio * F.cross_entropy(logits, y) + (1 - mean_ratio) * F.cross_entropy(
        logits, y[mixed.perm]
    )
    per_sample_main = mixed_cross_entropy(logits, y, y[mixed.perm], torch.tensor(lam_new))
    assert abs(float(collapsed) - float(per_sample_main)) > 1e-3


@pytest.mark.parametrize("distance", ["signed", "absolute"])
def test_sumix_loss_with_either_distance_matches_the_by_hand_formula(monkeypatch, distance: str) -> None:
    model = tiny_r18(confident=True)
    x, y = batch(1)
    method = ready_sumix(model, seed=3, gamma=0.5, distance=distance)
    rec = ForwardRecorder(model, monkeypatch)
    loss, logs = method.training_step(model, x, y)
    reference = CutMix()
    reference.bind(MixRandom(3))
    mixed = reference.mix(x, y)
    expected, lam_new = by_hand_sumix_loss(
        method, rec, y, mixed.perm, mixed.lam, gamma=0.5, absolute=distance == "absolute"
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(logs["lam_reestimated"]) == pytest.approx(sum(lam_new) / BATCH, rel=1e-5)
    if distance == "absolute":  # the recorded step has sources whose class probability dropped in the mix
        signed, _ = by_hand_sumix_loss(method, rec, y, mixed.perm, mixed.lam, gamma=0.5)
        assert abs(signed - expected) > 1e-4


def test_sumix_reduces_to_the_base_mixed_ce_when_gamma_is_zero_and_distances_are_equal(monkeypatch) -> None:
    def equal_distances(p_mix, p_clean, perm, y_a, y_b, distance="signed"):
        return torch.zeros_like(p_mix), torch.zeros_like(p_mix)

    monkeypatch.setattr(sumix_module, "semantic_distances", equal_distances)
    model = tiny_r18(confident=True)
    x, y = batch(2)
    loss, logs = ready_sumix(model, seed=4, gamma=0.0).training_step(model, x, y)
    reference = CutMix()
    reference.bind(MixRandom(4))
    mixed = reference.mix(x, y)
    expected = mixed_cross_entropy(model(mixed.x), mixed.y_a, mixed.y_b, mixed.lam)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert float(logs["lam_reestimated"]) == pytest.approx(mixed.lam, abs=1e-6)


def test_sumix_clean_forward_carries_no_gradient_and_w_u_is_trained(monkeypatch) -> None:
    model = tiny_r18()
    x, y = batch(3)
    method = ready_sumix(model, seed=5)
    rec = ForwardRecorder(model, monkeypatch)
    loss, _ = method.training_step(model, x, y)
    assert rec.with_grad == [False, True], "the clean forward (first) must run without gradient"
    loss.backward()
    assert (
        method.uncertainty_head.weight.grad is not None
        and method.uncertainty_head.weight.grad.abs().sum() > 0
    )
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("global_seed", [1, 999])
def test_sumix_same_generator_seed_gives_the_same_loss_whatever_the_global_seed(global_seed: int) -> None:
    model = tiny_r18()
    x, y = batch(4)
    method_1 = ready_sumix(model, seed=7)
    torch.manual_seed(global_seed)
    loss_1, _ = method_1.training_step(model, x, y)
    method_2 = ready_sumix(model, seed=7)
    torch.manual_seed(global_seed + 1)
    loss_2, _ = method_2.training_step(model, x, y)
    assert torch.equal(loss_1, loss_2)
    other, _ = ready_sumix(model, seed=8).training_step(model, x, y)
    assert not torch.equal(loss_1, other)


def test_sumix_setup_sizes_w_u_from_the_last_stage_without_touching_batch_norm_statistics() -> None:
    model = tiny_r18().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = ready_sumix(model, seed=0)
    assert model.training, "setup left the model in eval mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "setup changed the model"
    channels = model.forward_features(torch.zeros(2, 3, SIZE, SIZE), model.num_stages).shape[1]
    assert method.uncertainty_head.weight.shape == (CLASSES, channels)
    groups = method.param_groups(lr=0.1, weight_decay=5e-4)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in method.uncertainty_head.parameters())
    assert "uncertainty_head.weight" in method.state_dict()


def test_sumix_refuses_a_model_without_hidden_stages() -> None:
    with pytest.raises(StageUnavailableError, match="input_only"):
        SUMix(CutMix()).check_model(InputOnlyNet())
    SUMix(CutMix()).check_model(tiny_r18())


def test_sumix_preview_shows_the_base_mix_with_the_reestimated_ratios() -> None:
    model = tiny_r18(confident=True)
    x, y = batch(5)
    preview = ready_sumix(model, seed=6).preview(model, x, y)
    assert list(preview.rows) == ["source a", "source b", "mask (share of b)", "mixed"]
    assert preview.rows["mask (share of b)"].shape == (BATCH, 1, SIZE, SIZE)
    assert all(preview.rows[name].shape == x.shape for name in ("source a", "source b", "mixed"))
    assert preview.lam.shape == (BATCH,) and ((preview.lam >= 0) & (preview.lam <= 1)).all()
    assert "re-estimated" in preview.note


@pytest.mark.parametrize("base", [b for b in SUMIX_BASES if b != "cutmix"])
def test_sumix_runs_on_the_other_registered_cutting_methods(base: str) -> None:
    if base not in METHODS or not (CONFIG_DIR / "method" / f"{base}.yaml").is_file():
        pytest.skip(f"{base} is not registered with a config (yet)")
    cls = METHODS[base]
    if not (
        hasattr(cls, "mix_with_model") or getattr(cls, "mix", InputMixMethod.mix) is not InputMixMethod.mix
    ):
        with pytest.raises(ValueError, match="neither"):
            build_method("sumix", base=base)
        return
    model = tiny_r18()
    x, y = batch(6)
    loss, logs = ready_sumix(model, seed=1, base=base).training_step(model, x, y)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and 0.0 <= float(logs["lam_reestimated"]) <= 1.0


# ------------------------------------------------------------------------------------------------- switch


@pytest.fixture(scope="module")
def swin_meta() -> nn.Module:
    with torch.device("meta"):
        return build_model("swin_t", num_classes=CLASSES, image_size=32)


def test_switch_draws_each_choice_with_its_probability() -> None:
    probs = [0.2, 0.3, 0.5]
    method = build_method("switch", choices=["vanilla", "mixup", "cutmix"], probs=probs)
    method.bind(MixRandom(0))
    draws = 4000
    counts = [0, 0, 0]
    for _ in range(draws):
        counts[method.draw_choice()] += 1
    chi_square = sum((c - draws * p) ** 2 / (draws * p) for c, p in zip(counts, probs, strict=True))
    assert chi_square < 13.82, f"counts {counts} for p {probs} (chi-square {chi_square:.1f}, df 2, p = 0.001)"
    certain = Switch([Mixup(), CutMix()], probs=[1.0, 0.0])
    certain.bind(MixRandom(1))
    assert {certain.draw_choice() for _ in range(200)} == {0}


def test_switch_step_is_the_chosen_methods_step_for_the_same_generator_state() -> None:
    model = tiny_r18()
    x, y = batch(7)
    chosen = set()
    for seed in range(8):
        method = build_method("switch", choices=["mixup", "cutmix"])
        method.bind(MixRandom(seed))
        loss, logs = method.training_step(model, x, y)
        rng = MixRandom(seed)
        index = rng.choice([0, 1], p=[0.5, 0.5])
        name = ["mixup", "cutmix"][index]
        single = build_method(name)
        single.bind(rng)
        expected, expected_logs = single.training_step(model, x, y)
        assert int(logs["choice"]) == index
        assert torch.equal(loss, expected)
        assert (
            float(logs[f"choice_{name}"]) == 1.0
            and float(logs[f"choice_{['mixup', 'cutmix'][1 - index]}"]) == 0
        )
        assert float(logs[f"{name}_lam"]) == pytest.approx(float(expected_logs["lam"]))
        chosen.add(name)
    assert chosen == {"mixup", "cutmix"}


@pytest.mark.parametrize(
    "options",
    [
        {"probs": [1.0]},
        {"probs": [0.7, 0.7]},
        {"probs": [1.5, -0.5]},
        {"probs": [float("nan"), 1.0]},
        {"choices": []},
        {"choices": ["mixup", "mixup"]},
        {"choices": ["mixup", "switch"]},
        {"choices": ["mixup", "nosuch"]},
        {"options": {"manifoldmix": {"alpha": 1.0}}},
        {"options": {"cutmix": {"alpha": -1.0}}},
        {"options": {"cutmix": {"beta": 1.0}}},
        {"options": {"cutmix": 0.2}},
        {"method": "cutmix"},
    ],
)
def test_switch_refuses_invalid_settings_in_one_line(options: dict) -> None:
    with pytest.raises(ValueError) as info:
        build_method("switch", **options)
    one_line(info)
    with pytest.raises(ValueError) as info:  # the same through a run's config
        build_method_from_config({"name": "switch", "choices": ["mixup", "cutmix"], **options})
    one_line(info)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"choices": ["mixup", "nosuch"]}, "method.choices: unknown method 'nosuch'; valid: "),
        ({"options": {"cutmix": {"beta": 1.0}}}, "method.options.cutmix: method 'cutmix' does not take"),
        ({"options": {"cutmix": {"alpha": -1.0}}}, "method.options.cutmix.alpha must be a positive number"),
        ({"options": {"manifoldmix": {"alpha": 1.0}}}, "method.options names manifoldmix, not among"),
    ],
)
def test_switch_refusals_name_the_config_key(options: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_method("switch", **options)


@pytest.mark.parametrize(
    "methods",
    [
        {},
        [],
        [Mixup(), Mixup()],
        ["mixup", "cutmix"],
        "mixup",
        {"mixup": Mixup(), "again": Switch([Mixup()])},
    ],
)
def test_switch_refuses_invalid_built_choices_in_one_line(methods) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        Switch(methods)
    one_line(info)


def test_switch_takes_built_choices_as_a_mapping_or_labelled_by_their_names() -> None:
    mixup, cutmix = Mixup(), CutMix(alpha=0.2)
    assert dict(Switch([mixup, cutmix]).methods) == {"mixup": mixup, "cutmix": cutmix}
    wide, narrow = CutMix(alpha=1.0), CutMix(alpha=0.2)
    labelled = Switch({"wide": wide, "narrow": narrow}, probs=[0.25, 0.75])
    assert labelled.choices == ["wide", "narrow"] and labelled.probs == [0.25, 0.75]


def test_switch_builds_choices_from_their_configs_plus_options_and_shares_the_generator() -> None:
    method = build_method_from_config(
        {
            "name": "switch",
            "choices": ["mixup", "cutmix", "manifoldmix"],
            "probs": None,
            "options": {"cutmix": {"alpha": 0.2}},
        }
    )
    assert method.methods["cutmix"].alpha == 0.2 and method.methods["mixup"].alpha == 1.0
    assert method.methods["manifoldmix"].alpha == 2.0 and method.probs == pytest.approx([1 / 3] * 3)
    assert method.required_stages == (0, 1, 2)
    rng = MixRandom(0)
    method.bind(rng, label_smoothing=0.1)
    assert all(m.rng is rng and m.label_smoothing == 0.1 for m in method.methods.values())


def test_switch_check_model_raises_when_any_choice_cannot_run() -> None:
    build_method("switch", choices=["mixup", "cutmix"]).check_model(InputOnlyNet())
    with pytest.raises(StageUnavailableError, match="manifoldmix"):
        build_method("switch", choices=["cutmix", "manifoldmix"]).check_model(InputOnlyNet())
    with pytest.raises(StageUnavailableError, match="sumix"):
        build_method("switch", choices=["cutmix", "sumix"]).check_model(InputOnlyNet())


def test_switch_refuses_alignmixup_ae_when_built_naming_it_and_why() -> None:
    with pytest.raises(ValueError) as info:
        build_method("switch", choices=["cutmix", "alignmixup_ae"])
    message = one_line(info)
    assert "switch cannot use alignmixup_ae" in message and "its own embedding and classifier" in message
    assert "drop it from method.choices" in message
    with pytest.raises(ValueError) as info:  # built by the user, refused all the same
        Switch({"cutmix": CutMix(), "ae": build_method("alignmixup_ae")})
    assert "switch cannot use alignmixup_ae" in one_line(info)


class OwnClassifier(MixMethod):
    """A stand-in for a method that evaluates a network of its own instead of the model."""

    name = "own_classifier"

    def setup(self, model, num_classes):
        self.network = nn.Sequential(model, nn.Linear(num_classes, num_classes))

    def eval_models(self, model):
        return {"": self.network}


def test_switch_setup_refuses_any_choice_that_evaluates_another_network_in_one_line() -> None:
    method = Switch({"mixup": Mixup(), "cutmix": OwnClassifier()})
    with pytest.raises(ConfigError) as info:
        method.setup(tiny_r18(), CLASSES)
    assert "switch cannot use cutmix: it evaluates a network of its own" in one_line(info)


@pytest.mark.parametrize(
    "name",
    sorted(
        n for n, cls in METHODS.items() if n != "switch" and not getattr(cls, "needs_external_weights", False)
    ),
)
def test_switch_refuses_exactly_the_methods_that_evaluate_a_network_of_their_own(name: str) -> None:
    """The construction-time list matches the code: a listed method's eval_models does not return the model,
    every other method passes the switch's setup check."""
    model = tiny_r18()
    if name in HEAD_REPLACING_METHODS:
        with pytest.raises(ValueError, match=f"switch cannot use {name}"):
            build_method("switch", choices=[name])
        alone = build_method(name)  # the class defaults (its config interpolates the dataset's image size)
        alone.setup(model, CLASSES)
        assert alone.eval_models(model).get("") is not model
    else:
        method = build_method("switch", choices=[name])
        method.setup(model, CLASSES)
        assert method.eval_models(model)[""] is model


class WithEma(MixMethod):
    """A stand-in for a learned method: an extra network, its own parameter group and an after_step."""

    name = "with_ema"

    def __init__(self) -> None:
        super().__init__()
        self.ema = nn.Linear(2, 2)
        self.steps_after = 0

    def eval_models(self, model):
        return {"": model, "ema": self.ema}

    def param_groups(self, lr, weight_decay):
        return [{"params": list(self.ema.parameters()), "lr": 0.5 * lr}]

    def after_step(self, model):
        self.steps_after += 1


def test_switch_delegates_eval_models_param_groups_and_after_step_to_every_choice() -> None:
    method = Switch({"mixup": Mixup(), "cutmix": WithEma()})
    model = tiny_r18()
    networks = method.eval_models(model)
    assert networks == {"": model, "cutmix_ema": method.methods["cutmix"].ema}
    groups = method.param_groups(lr=0.1, weight_decay=0.0)
    assert len(groups) == 1 and groups[0]["lr"] == 0.05
    method.after_step(model)
    assert method.methods["cutmix"].steps_after == 1


def test_switch_param_groups_include_a_sumix_choice_w_u_once() -> None:
    model = tiny_r18()
    method = build_method("switch", choices=["sumix", "mixup"])
    method.setup(model, CLASSES)
    grouped = [p for group in method.param_groups(0.1, 0.0) for p in group["params"]]
    assert [id(p) for p in grouped] == [id(p) for p in method.methods["sumix"].uncertainty_head.parameters()]


def test_switch_preview_is_the_chosen_methods_preview_and_says_which() -> None:
    model = tiny_r18()
    x, y = batch(8)
    seen = set()
    for seed in range(6):
        method = build_method("switch", choices=["mixup", "cutmix"])
        method.bind(MixRandom(seed))
        preview = method.preview(model, x, y)
        name = "cutmix" if "drew cutmix" in preview.note else "mixup"
        assert f"drew {name}" in preview.note
        assert ("mask (share of b)" in preview.rows) == (name == "cutmix")
        assert all(row.shape[0] == BATCH and row.shape[-2:] == x.shape[-2:] for row in preview.rows.values())
        assert preview.lam.shape == (BATCH,)
        seen.add(name)
    assert seen == {"mixup", "cutmix"}


def test_wrapper_options_are_set_from_the_command_line_as_documented() -> None:
    """``method.options={...}`` / ``method.base_options={...}`` must compose (a ``{}`` default would not)."""
    switch_cfg = compose_config(
        [
            "method=switch",
            "method.choices=[mixup,cutmix]",
            "method.probs=[0.25,0.75]",
            "method.options={cutmix: {alpha: 0.2}}",
        ]
    )
    switch = build_method_from_config(switch_cfg.method)
    assert switch.probs == [0.25, 0.75] and switch.methods["cutmix"].alpha == 0.2
    sumix_cfg = compose_config(["method=sumix", "method.base_options={alpha: 0.3}", "method.gamma=1.0"])
    sumix = build_method_from_config(sumix_cfg.method)
    assert sumix.base.alpha == 0.3 and sumix.gamma == 1.0


# ----------------------------------------------------------------------------------- checkpoint layout


def test_composites_keep_the_checkpoint_keys_of_the_by_name_constructors() -> None:
    """Checkpoints written before the children were built outside the classes still load: the state dict
    keys are ``methods.<choice>.*`` for the switch and ``base.*`` / ``uncertainty_head.*`` for SUMix.  The
    literal keys below are those the old ``Switch(choices=[mixup, sumix])`` wrote; the rest is checked by
    loading, strictly, the state of one build into another."""
    model = tiny_r18()
    switch = build_method("switch", choices=["mixup", "sumix"])
    switch.setup(model, CLASSES)
    assert list(switch.state_dict()) == [
        "methods.sumix.uncertainty_head.weight",
        "methods.sumix.uncertainty_head.bias",
    ]
    learned = build_method("sumix", base="automix")
    learned.setup(model, CLASSES)
    alone = build_method("automix")
    alone.setup(model, CLASSES)
    expected = {f"base.{key}" for key in alone.state_dict()} | {
        "uncertainty_head.weight",
        "uncertainty_head.bias",
    }
    assert set(learned.state_dict()) == expected and any(k.startswith("base.mix_block.") for k in expected)
    wrapped = build_method("switch", choices=["mixup", "sumix", "automix"])
    wrapped.setup(model, CLASSES)
    assert {k for k in wrapped.state_dict() if k.startswith("methods.automix.")} == {
        f"methods.automix.{key}" for key in alone.state_dict()
    }
    again = build_method("switch", choices=["mixup", "sumix", "automix"])
    again.setup(model, CLASSES)
    again.load_state_dict(wrapped.state_dict())  # strict


# --------------------------------------------------------------------------------------------- style methods


@pytest.mark.parametrize("cls", [StyleMix, StyleCutMix])
def test_style_methods_refuse_without_weights_naming_the_missing_files(cls) -> None:
    with pytest.raises(ValueError) as info:
        cls()
    message = one_line(info)
    assert "encoder_path" in message and "decoder_path" in message and "vgg_normalised.pth" in message
    with pytest.raises(ValueError) as info:
        cls(encoder_path="/weights/vgg_normalised.pth")
    assert "decoder_path" in one_line(info) and "encoder_path=" not in str(info.value)
    with pytest.raises(ValueError) as info:  # both given: the files themselves are checked
        cls(encoder_path="/weights/vgg_normalised.pth", decoder_path="/weights/decoder.pth")
    assert "/weights/vgg_normalised.pth" in one_line(info) and "not a file" in one_line(info)
    assert cls.needs_external_weights


def test_cli_stylemix_without_weights_is_one_error_line_and_no_run_directory(tmp_path: Path) -> None:
    """``python tools/train.py`` run in this process (tests/helpers/tools.py)."""
    runs_root = tmp_path / "runs"
    result = run_tool("train", [*tiny_overrides(runs_root), "method=stylemix"])
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "encoder_path" in lines[0], result.stderr
    assert not runs_root.exists()
