"""The learned mixing methods AutoMix and AdAutoMix, and their EMA teacher (METHODS.md, "Learned mixing").
SAMix's own parts are in ``tests/test_methods_samix.py``; it joins the contract tests here.

Every check recomputes what a method reports from its parts (the Mix Block's weights, the draws of a scripted
generator, separate gradients of each loss term), so a wrong mask convention, a missing detach, an adversarial
gradient leaking into the backbone, a wrong similarity sign or a lost EMA step counter makes a test fail.
Models are tiny (PreActResNet18 of width 4 on 16 px inputs: stage 3 is 16 x 4 x 4).  What the trainer makes
of them (online and EMA accuracy, the Mix Block and the step counter in the checkpoint) is checked on their
short runs in ``tests/test_all_methods_train.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods import build_method
from mixbench.methods.adautomix import AdAutoMix, soft_targets, source_similarity
from mixbench.methods.automix import AutoMix, mask_ratio_loss, mix_pair
from mixbench.methods.ema import EmaModel, automix_momentum
from mixbench.methods.mix_block import init_mix_block, mask_loss_weight_at, stage_channels
from mixbench.models import StageUnavailableError, build_model
from mixbench.rng import MixRandom

BATCH, SIZE, CLASSES, TOTAL_STEPS = 8, 16, 10, 100


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make(name: str, seed: int = 0, rng: MixRandom | None = None, **options) -> tuple[nn.Module, nn.Module]:
    """(model, method) with weights fixed by ``seed``, set up and bound as the trainer does."""
    torch.manual_seed(seed)
    model = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4)
    method = build_method(name, **options)
    method.setup(model, CLASSES)
    method.bind(rng or MixRandom(seed), total_steps=TOTAL_STEPS)
    return model, method


def make_sharp(name: str, rng: MixRandom | None = None, **options) -> tuple[nn.Module, nn.Module]:
    """:func:`make` with the Mix Block re-drawn at std 0.3, far from its flat init, so that a wrong formula
    shows.
    """
    model, method = make(name, rng=rng, **options)
    init_mix_block(method.mix_block, std=0.3)
    return model, method


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])


class ScriptedRandom(MixRandom):
    """Returns the given lams (or ratio arrays) and pairings in order, instead of random ones."""

    def __init__(self, betas: list, perms: list[list[int]]) -> None:
        super().__init__(0)
        self.betas = list(betas)
        self.perms = [torch.tensor(p) for p in perms]

    def beta(self, alpha, size=None):
        return self.betas.pop(0)

    def permutation(self, n: int) -> torch.Tensor:
        return self.perms.pop(0)


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def nonzero(gradients: list[torch.Tensor | None]) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gradients)


def model_inputs(model: nn.Module) -> list[torch.Tensor]:
    """Every batch the model is called on, recorded by a forward pre-hook."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


PERM_A = [1, 2, 3, 4, 5, 6, 7, 0]
PERM_B = [7, 6, 5, 4, 3, 2, 1, 0]


# ------------------------------------------------------------------------------------------ EMA teacher


def test_momentum_schedule_constant_for_first_tenth_then_cosine_to_end_and_monotone() -> None:
    total = 1000
    values = [automix_momentum(t, total) for t in range(total + 1)]
    assert all(v == 0.999 for v in values[:100])
    assert values[100] > 0.999
    assert values[-1] == pytest.approx(0.999999, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # the official hook's phase is the global progress t/T: half way, half the distance to the end
    assert values[500] == pytest.approx(0.999999 - (0.999999 - 0.999) * 0.5, abs=1e-12)
    assert automix_momentum(5000, total) == values[-1], "steps past the end keep the final momentum"


def test_ema_update_follows_the_momentum_rule_exactly_and_copies_buffers() -> None:
    torch.manual_seed(0)
    online = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4)
    ema = EmaModel(online, base_momentum=0.7, end_momentum=0.7)
    assert all(not p.requires_grad for p in ema.module.parameters())
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(4, 3, SIZE, SIZE))  # train-mode pass: the online BN statistics change
    used = ema.update(online, total_steps=10)
    assert used == 0.7
    for old, new, target in zip(before, ema.module.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.7 * old + 0.3 * target)
    for ema_buffer, online_buffer in zip(ema.module.buffers(), online.buffers(), strict=True):
        assert torch.equal(ema_buffer, online_buffer)
    assert int(ema.num_updates) == 1 and ema.updates_done == 1


def test_ema_update_lists_are_bitwise_the_per_tensor_formula_and_copy_every_buffer() -> None:
    """The multi-tensor update is ``m * old`` then ``+ (1 - m) * online`` per tensor, bit for bit, and the
    buffer copy covers the float statistics and the integer ``num_batches_tracked`` alike."""
    torch.manual_seed(0)
    online = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4)
    ema = EmaModel(online, base_momentum=0.9, end_momentum=0.9)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(4, 3, SIZE, SIZE))  # train-mode pass: statistics and num_batches_tracked change
    expected = [
        old.mul(0.9).add_(new.detach(), alpha=1.0 - 0.9)
        for old, new in zip(ema.module.parameters(), online.parameters(), strict=True)
    ]
    ema.update(online, total_steps=10)
    assert all(torch.equal(got, want) for got, want in zip(ema.module.parameters(), expected, strict=True))
    integer_buffers = [b for b in ema.module.buffers() if not b.is_floating_point()]
    assert integer_buffers and all(int(b) == 1 for b in integer_buffers)
    for ema_buffer, online_buffer in zip(ema.module.buffers(), online.buffers(), strict=True):
        assert torch.equal(ema_buffer, online_buffer)


def test_ema_update_refuses_a_network_with_other_buffers() -> None:
    online = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = EmaModel(online)
    other = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="parameter or buffer lists"):
        ema.update(other, total_steps=10)


def test_ema_teacher_gets_no_gradient_and_moves_by_the_scheduled_momentum_in_training() -> None:
    model, method = make("automix")
    x, y = batch()
    optimizer = torch.optim.SGD([*model.parameters(), *method.param_groups(0.1, 0.0)[0]["params"]], lr=0.1)
    loss, _ = method.training_step(model, x, y)
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in method.ema.module.parameters())
    optimizer.step()
    before = [p.clone() for p in method.ema.module.parameters()]
    method.after_step(model)
    momentum = automix_momentum(0, TOTAL_STEPS)
    for old, new, online in zip(before, method.ema.module.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, momentum * old + (1 - momentum) * online)


def test_method_state_round_trips_through_state_dict_with_the_step_counter() -> None:
    model, method = make("automix")
    x, y = batch()
    for _ in range(3):
        method.after_step(model)
    with torch.no_grad():
        next(method.mix_block.parameters()).add_(1.0)
    state = method.state_dict()
    assert {"ema.num_updates", "mix_block.query_key.weight"} <= set(state)
    assert any(key.startswith("ema.module.") for key in state)
    _, restored = make("automix", seed=5)
    assert restored.ema.updates_done == 0
    restored.load_state_dict(state)
    assert restored.ema.updates_done == 3, "the host copy of the step counter did not follow the checkpoint"
    assert restored.ema.momentum(TOTAL_STEPS) == method.ema.momentum(TOTAL_STEPS)
    for key, value in restored.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("name", ["automix", "samix", "adautomix"])
def test_eval_models_are_the_online_and_the_ema_networks(name: str) -> None:
    model, method = make(name)
    nets = method.eval_models(model)
    assert set(nets) == {"", "ema"}
    assert nets[""] is model and nets["ema"] is method.ema.module and nets["ema"] is not model


@pytest.mark.parametrize("name", ["automix", "samix", "adautomix"])
def test_mix_block_joins_the_optimizer_alone_with_its_own_lr(name: str) -> None:
    model, method = make(name)
    (group,) = method.param_groups(0.1, 5e-4)
    assert group["lr"] == 0.1 and group["weight_decay"] == 5e-4
    assert {id(p) for p in group["params"]} == {id(p) for p in method.mix_block.parameters()}
    assert "momentum" not in group, "the optimizer's momentum applies unless the recipe sets one"
    _, own = make(name, mix_block_lr=0.03, mix_block_momentum=0.0)
    assert own.param_groups(0.1, 0.0)[0]["lr"] == 0.03 and own.param_groups(0.1, 0.0)[0]["momentum"] == 0.0


@pytest.mark.parametrize("name", ["automix", "samix", "adautomix"])
def test_model_without_the_feature_stage_is_refused(name: str) -> None:
    model = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4)  # stages 0..4
    with pytest.raises(StageUnavailableError, match="r18"):
        build_method(name, feature_stage=6).check_model(model)
    build_method(name).check_model(model)


def test_mix_block_is_sized_to_the_channels_of_its_feature_stage() -> None:
    model, method = make("automix")
    assert stage_channels(model, 3) == 16 == method.mix_block.query_key.in_channels
    assert method.mix_block.query_key.out_channels == 8
    _, with_lam = make("automix", lam_channel=True)
    assert with_lam.mix_block.query_key.in_channels == 17
    model, stage_2 = make("adautomix", feature_stage=2)
    assert stage_2.required_stages == (2,) and stage_2.mix_block.query.in_channels == 8
    assert stage_2.teacher_features(batch()[0]).shape == (BATCH, 8, SIZE // 2, SIZE // 2)
    loss, _ = stage_2.training_step(model, *batch())
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ AutoMix


@torch.no_grad()
def hand_automix_mask(block: nn.Module, z: torch.Tensor, perm: torch.Tensor, size: int) -> torch.Tensor:
    """METHODS.md's Mix Block for each sample separately: sigmoid(nearest_up(softmax(q_i^T k_j / sqrt d)
    v_j)).
    """
    w_qk, b_qk = block.query_key.weight[:, :, 0, 0], block.query_key.bias
    w_v, b_v = block.value.weight[:, :, 0, 0], block.value.bias
    masks = []
    for i in range(z.shape[0]):
        z_i, z_j = z[i].flatten(1), z[perm[i]].flatten(1)  # (C, hw)
        q, k = w_qk @ z_i + b_qk[:, None], w_qk @ z_j + b_qk[:, None]
        attention = torch.softmax(q.T @ k / math.sqrt(q.shape[0]), dim=1)
        value = (w_v @ z_j + b_v[:, None]).T  # (hw, 1)
        grid = (attention @ value).reshape(z.shape[-2], z.shape[-1])
        factor = size // z.shape[-1]
        masks.append(torch.sigmoid(grid.repeat_interleave(factor, 0).repeat_interleave(factor, 1)))
    return torch.stack(masks)[:, None]


def test_automix_mask_is_the_mix_block_formula_and_the_share_of_the_partner() -> None:
    model, method = make_sharp("automix")
    x, y = batch()
    perm = torch.tensor(PERM_A)
    z = method.teacher_features(x)
    mask = method.mix_block(z, perm, 0.3, (SIZE, SIZE))
    torch.testing.assert_close(mask, hand_automix_mask(method.mix_block, z, perm, SIZE), rtol=1e-4, atol=1e-5)
    assert mask.std() > 0.01
    torch.testing.assert_close(mix_pair(x, perm, mask), (1 - mask) * x + mask * x[perm])


def test_automix_losses_are_the_four_terms_with_lam_on_the_unpermuted_label() -> None:
    lam_mb, lam_bb = 0.3, 0.6
    model, method = make_sharp("automix", rng=ScriptedRandom([lam_mb, lam_bb], [PERM_A, PERM_B]))
    x, y = batch()
    seen = model_inputs(model)
    losses = method.compute_losses(model, x, y)
    z = method.teacher_features(x)
    perm_mb, perm_bb = torch.tensor(PERM_A), torch.tensor(PERM_B)
    mask_mb = hand_automix_mask(method.mix_block, z, perm_mb, SIZE)
    mask_bb = hand_automix_mask(method.mix_block, z, perm_bb, SIZE)
    assert torch.equal(seen[0], x)
    torch.testing.assert_close(seen[1], (1 - mask_bb) * x + mask_bb * x[perm_bb], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        logits_bb = model(seen[1])
        teacher = method.ema((1 - mask_mb) * x + mask_mb * x[perm_mb])
    ce = lambda logits, target: F.cross_entropy(logits, target, reduction="none")  # noqa: E731
    expected_bb = (lam_bb * ce(logits_bb, y) + (1 - lam_bb) * ce(logits_bb, y[perm_bb])).mean()
    expected_mb = (lam_mb * ce(teacher, y) + (1 - lam_mb) * ce(teacher, y[perm_mb])).mean()
    torch.testing.assert_close(losses.backbone_mix.detach(), expected_bb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses.mix_block_mix.detach(), expected_mb, rtol=1e-4, atol=1e-5)
    expected_mask = 0.1 * max(abs(1 - float(mask_mb.mean()) - lam_mb) - 0.1, 0.0)
    assert float(losses.mask.detach()) == pytest.approx(expected_mask, abs=1e-6)
    torch.testing.assert_close(
        losses.total(), losses.clean + losses.backbone_mix + losses.mix_block_mix + losses.mask
    )


def test_automix_gradients_backbone_only_from_its_terms_mix_block_only_from_ema_branch_and_mask_loss() -> (
    None
):
    model, method = make_sharp("automix", mask_loss_margin=0.0)  # a margin of 0 keeps the mask loss active
    x, y = batch()
    losses = method.compute_losses(model, x, y)
    assert not losses.backbone_fell_back_to_mixup and float(losses.mask.detach()) > 0
    online, block = list(model.parameters()), list(method.mix_block.parameters())
    assert all(g is None for g in grads(losses.backbone_mix, block)), "the backbone's mask is not detached"
    assert all(g is None for g in grads(losses.clean, block))
    assert all(g is None for g in grads(losses.mix_block_mix, online)), "the EMA branch reaches the backbone"
    assert all(g is None for g in grads(losses.mask, online))
    assert nonzero(grads(losses.mix_block_mix, block)) and nonzero(grads(losses.mask, block))
    assert nonzero(grads(losses.clean + losses.backbone_mix, online))


@pytest.mark.parametrize("lam_bb", [0.05, 0.08, 0.93])
def test_automix_lam_margin_falls_back_to_mixup_for_the_backbone(lam_bb: float) -> None:
    model, method = make_sharp("automix", rng=ScriptedRandom([0.4, lam_bb], [PERM_A, PERM_B]))
    x, y = batch()
    seen = model_inputs(model)
    losses = method.compute_losses(model, x, y)
    assert losses.backbone_fell_back_to_mixup
    perm_bb = torch.tensor(PERM_B)
    torch.testing.assert_close(seen[1], lam_bb * x + (1 - lam_bb) * x[perm_bb])


def test_automix_uses_the_learned_mask_inside_the_margin() -> None:
    model, method = make_sharp("automix", rng=ScriptedRandom([0.4, 0.5], [PERM_A, PERM_B]))
    x, y = batch()
    seen = model_inputs(model)
    assert not method.compute_losses(model, x, y).backbone_fell_back_to_mixup
    perm_bb = torch.tensor(PERM_B)
    assert not torch.allclose(seen[1], 0.5 * x + 0.5 * x[perm_bb], atol=1e-3)


def test_automix_wrapper_pieces_give_the_backbone_batch_and_the_mix_block_loss() -> None:
    model, method = make_sharp(
        "automix", rng=ScriptedRandom([0.6, 0.3], [PERM_B, PERM_A]), mask_loss_margin=0.0
    )
    x, y = batch()
    mixed = method.mix_with_model(model, x, y)
    perm = torch.tensor(PERM_B)
    assert mixed.lam == 0.6 and torch.equal(mixed.perm, perm) and torch.equal(mixed.y_b, y[perm])
    assert not mixed.mask.requires_grad and not mixed.x.requires_grad
    expected = hand_automix_mask(method.mix_block, method.teacher_features(x), perm, SIZE)
    torch.testing.assert_close(mixed.x, (1 - expected) * x + expected * x[perm], rtol=1e-4, atol=1e-5)
    loss = mixed.own_loss  # the Mix Block branch on the second draw (lam 0.3, PERM_A), same teacher features
    by_hand = method.mix_block_terms(method.teacher_features(x), x, y, 0.3, torch.tensor(PERM_A))
    torch.testing.assert_close(loss, by_hand[0] + by_hand[1])
    assert nonzero(grads(loss, list(method.mix_block.parameters())))
    assert all(g is None for g in grads(loss, list(model.parameters())))


def test_mask_loss_is_zero_within_the_margin_and_counts_the_share_of_x_for_lam() -> None:
    lam = 0.8  # the share of x should be 0.8: the partner's (mask) mean should be 0.2
    for partner_share, expected in [(0.2, 0.0), (0.29, 0.0), (0.11, 0.0), (0.35, 0.05), (0.0, 0.1)]:
        mask = torch.full((2, 1, 4, 4), partner_share)
        assert float(mask_ratio_loss(mask, lam, 0.1)) == pytest.approx(expected, abs=1e-6)
    assert float(mask_ratio_loss(torch.full((2, 1, 4, 4), lam), lam, 0.1)) > 0.4, "sign convention reversed"


def test_automix_mask_loss_weight_starts_at_0_1_and_decays_to_0_by_a_cosine_over_the_run() -> None:
    model, method = make_sharp("automix", mask_loss_margin=0.0)  # a margin of 0 keeps the mask loss active
    x, y = batch()
    weights = {}
    for step in range(TOTAL_STEPS + 1):
        if step in (0, TOTAL_STEPS // 4, TOTAL_STEPS // 2, TOTAL_STEPS):
            method.bind(MixRandom(1), total_steps=TOTAL_STEPS)  # the same draws at every checked step
            losses = method.compute_losses(model, x, y)
            weights[step] = (losses.mask_loss_weight, float(losses.mask.detach()))
        method.after_step(model)
    assert weights[0][0] == pytest.approx(0.1) and weights[0][1] > 0
    assert weights[TOTAL_STEPS // 4][0] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert weights[TOTAL_STEPS // 2][0] == pytest.approx(0.05)
    assert weights[TOTAL_STEPS] == (0.0, 0.0), "the mask loss still counts at the end of the run"
    _, logs = method.training_step(model, x, y)
    assert float(logs["mask_loss_weight"]) == 0.0


def test_mask_loss_schedules_constant_and_openmixups_compounding_hook() -> None:
    assert [mask_loss_weight_at(t, 10, 0.1, "constant") for t in (0, 5, 10)] == [0.1, 0.1, 0.1]
    expected, product = [], 1.0
    for t in range(11):
        product *= (1 + math.cos(math.pi * t / 10)) / 2
        expected.append(0.1 * product)
    got = [mask_loss_weight_at(t, 10, 0.1, "openmixup_compounded") for t in range(11)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-40) and got[-1] == 0.0
    assert (
        mask_loss_weight_at(7000, 74800, 0.1, "openmixup_compounded")
        < 1e-4
        < mask_loss_weight_at(7000, 74800, 0.1, "cosine")
    ), "OpenMixup's hook compounds: the weight is gone after a few percent of the run"
    with pytest.raises(ValueError, match="cosine"):
        mask_loss_weight_at(0, 10, 0.1, "linear")


def test_automix_mask_loss_weight_resumes_with_the_step_counter() -> None:
    model, method = make("automix")
    for _ in range(TOTAL_STEPS // 2):
        method.after_step(model)
    _, restored = make("automix", seed=3)
    restored.load_state_dict(method.state_dict())
    assert restored.current_mask_loss_weight() == method.current_mask_loss_weight() == pytest.approx(0.05)


def test_automix_lam_channel_makes_the_mask_depend_on_lam() -> None:
    model, method = make_sharp("automix", lam_channel=True)
    x, _ = batch()
    z, perm = method.teacher_features(x), torch.tensor(PERM_A)
    assert not torch.allclose(
        method.mix_block(z, perm, 0.1, (SIZE, SIZE)), method.mix_block(z, perm, 0.9, (SIZE, SIZE))
    )
    _, plain = make("automix")
    assert torch.equal(
        plain.mix_block(z, perm, 0.1, (SIZE, SIZE)), plain.mix_block(z, perm, 0.9, (SIZE, SIZE))
    )


# ---------------------------------------------------------------------------------------------- AdAutoMix


@torch.no_grad()
def hand_adautomix_masks(block: nn.Module, z, sources, lams, size: int, multiply: bool) -> torch.Tensor:
    """A_i = softmax(q_i^T sum_{j != i} k_j / sqrt d), m_i = A_i v_i, bilinear up, softmax over i;
    per sample.
    """
    conv = lambda layer, t: layer.weight[:, :, 0, 0] @ t + layer.bias[:, None]  # noqa: E731
    out = torch.zeros(sources.shape[0], sources.shape[1], 1, size, size)
    for b in range(sources.shape[1]):
        feats = [
            (lams[i] if multiply else 1.0) * z[sources[i, b]].flatten(1) for i in range(sources.shape[0])
        ]
        q = [conv(block.query, f) for f in feats]
        k = [conv(block.key, f) for f in feats]
        v = [conv(block.value, f) for f in feats]
        for i in range(len(feats)):
            others = sum(k[j] for j in range(len(feats)) if j != i)
            attention = torch.softmax(q[i].T @ others / math.sqrt(q[i].shape[0]), dim=1)
            grid = (attention @ v[i].T).reshape(1, 1, z.shape[-2], z.shape[-1])
            out[i, b] = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0]
    return torch.softmax(out, dim=0)


@pytest.mark.parametrize("lam_embedding", ["multiply", "none"])
def test_adautomix_masks_follow_the_formula_lie_in_0_1_and_sum_to_1(lam_embedding: str) -> None:
    model, method = make_sharp("adautomix", lam_embedding=lam_embedding)
    x, _ = batch()
    z = method.teacher_features(x)
    sources = torch.stack([torch.arange(BATCH), torch.tensor(PERM_A), torch.tensor(PERM_B)])
    lams = torch.tensor([0.5, 0.3, 0.2])
    masks = method.mix_block(z, sources, lams, (SIZE, SIZE))
    assert masks.shape == (3, BATCH, 1, SIZE, SIZE)
    assert masks.min() >= 0 and masks.max() <= 1
    torch.testing.assert_close(masks.sum(dim=0), torch.ones(BATCH, 1, SIZE, SIZE))
    expected = hand_adautomix_masks(method.mix_block, z, sources, lams, SIZE, lam_embedding == "multiply")
    torch.testing.assert_close(masks, expected, rtol=1e-4, atol=1e-5)
    other_lams = method.mix_block(z, sources, torch.tensor([0.1, 0.1, 0.8]), (SIZE, SIZE))
    assert torch.allclose(masks, other_lams) == (lam_embedding == "none"), "lam conditioning"


def test_soft_targets_sum_to_one_and_weigh_each_source_by_its_ratio() -> None:
    y = torch.tensor([0, 1, 2, 3])
    sources = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 0, 0]])
    lams = torch.tensor([0.5, 0.3, 0.2])
    targets = soft_targets(y, sources, lams, 5)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(targets[0], torch.tensor([0.5, 0.3, 0.2, 0.0, 0.0]))
    torch.testing.assert_close(targets[2], torch.tensor([0.2, 0.0, 0.5, 0.3, 0.0]))


def test_adautomix_ratios_sum_to_one_and_random_count_covers_two_and_three() -> None:
    _, method = make("adautomix", random_num_sources=True)
    counts = set()
    for seed in range(30):
        method.bind(MixRandom(seed), total_steps=TOTAL_STEPS)
        count = method.draw_count()
        draw = method.draw(count, BATCH, torch.device("cpu"))
        counts.add(count)
        assert float(draw.lams.sum()) == pytest.approx(1.0, abs=1e-6) and bool((draw.lams > 0).all())
        assert torch.equal(draw.sources[0], torch.arange(BATCH)) and draw.sources.shape == (count, BATCH)
        assert np.allclose(draw.host_lams, draw.lams.numpy())
    assert counts == {2, 3}


def test_adautomix_classifier_loss_is_generated_plus_weighted_clean_and_mixup() -> None:
    ratios = np.array([0.5, 0.3, 0.2])
    rng = ScriptedRandom([np.array([0.2, 0.2, 0.6]), ratios], [PERM_B, PERM_A, PERM_A, PERM_B])
    model, method = make_sharp("adautomix", rng=rng)
    x, y = batch()
    seen = model_inputs(model)
    losses = method.compute_losses(model, x, y, adversarial=False)
    sources = torch.stack([torch.arange(BATCH), torch.tensor(PERM_A), torch.tensor(PERM_B)])
    lams = torch.tensor(ratios, dtype=torch.float32)
    masks = hand_adautomix_masks(method.mix_block, method.teacher_features(x), sources, lams, SIZE, True)
    generated_images = (masks * x[sources]).sum(0)
    mixup_images = (lams.view(3, 1, 1, 1, 1) * x[sources]).sum(0)
    torch.testing.assert_close(seen[0], generated_images, rtol=1e-4, atol=1e-5)
    assert torch.equal(seen[1], x)
    torch.testing.assert_close(seen[2], mixup_images)
    targets = soft_targets(y, sources, lams, CLASSES)
    with torch.no_grad():
        soft_ce = lambda images: -(targets * F.log_softmax(model(images), 1)).sum(1).mean()  # noqa: E731
        expected = (
            soft_ce(generated_images) + 0.5 * F.cross_entropy(model(x), y) + 0.5 * soft_ce(mixup_images)
        )
    torch.testing.assert_close(losses.classifier().detach(), expected, rtol=1e-4, atol=1e-5)


def test_adautomix_lam_margin_falls_back_to_mixup_for_the_classifier() -> None:
    rng = ScriptedRandom([np.array([0.3, 0.3, 0.4]), np.array([0.02, 0.49, 0.49])], [PERM_A, PERM_B] * 2)
    model, method = make_sharp("adautomix", rng=rng)
    x, y = batch()
    seen = model_inputs(model)
    losses = method.compute_losses(model, x, y)
    assert losses.backbone_fell_back_to_mixup
    assert torch.equal(seen[0], seen[2]), "the classifier's generated batch is not the N-way mixup"
    torch.testing.assert_close(losses.generated, losses.mixup)


def test_adautomix_generator_loss_signs_on_adversarial_and_cooperative_steps() -> None:
    model, method = make("adautomix")
    x, y = batch()
    method.bind(MixRandom(3), total_steps=TOTAL_STEPS)
    adversarial = method.compute_losses(model, x, y, adversarial=True)
    method.bind(MixRandom(3), total_steps=TOTAL_STEPS)
    cooperative = method.compute_losses(model, x, y, adversarial=False)
    torch.testing.assert_close(cooperative.teacher_ce, adversarial.teacher_ce)
    expected = -0.3 * adversarial.teacher_ce + 0.7 * (1 - adversarial.similarity)
    torch.testing.assert_close(adversarial.generator, expected)
    torch.testing.assert_close(cooperative.generator, cooperative.teacher_ce)


def generator_step_changes(adversarial_weight: float, adversarial: bool) -> tuple[float, float]:
    """(change of the teacher's mixed CE, change of the similarity) after one normalised gradient step of the
    generator on the step's full loss, with the same draws before and after."""
    model, method = make_sharp("adautomix", adversarial_weight=adversarial_weight)
    x, y = batch()
    method.bind(MixRandom(11), total_steps=TOTAL_STEPS)
    before = method.compute_losses(model, x, y, adversarial=adversarial)
    params = list(method.mix_block.parameters())
    gradients = torch.autograd.grad(before.total(), params)
    norm = torch.sqrt(sum((g**2).sum() for g in gradients))
    with torch.no_grad():
        for p, g in zip(params, gradients, strict=True):
            p.sub_(0.05 * g / norm)
        method.bind(MixRandom(11), total_steps=TOTAL_STEPS)
        after = method.compute_losses(model, x, y, adversarial=adversarial)
    ce_change = float(after.teacher_ce - before.teacher_ce.detach())
    return ce_change, float(after.similarity - before.similarity.detach())


def test_adversarial_generator_step_increases_the_teachers_mixed_ce_and_cooperative_decreases_it() -> None:
    adversarial_change, _ = generator_step_changes(adversarial_weight=1.0, adversarial=True)
    cooperative_change, _ = generator_step_changes(adversarial_weight=1.0, adversarial=False)
    assert adversarial_change > 0 > cooperative_change


def test_similarity_regulariser_step_makes_generated_images_closer_to_their_sources() -> None:
    _, similarity_change = generator_step_changes(adversarial_weight=0.0, adversarial=True)
    assert similarity_change > 0, "minimising the regulariser pushes generated images away from their sources"


def test_backbone_gradient_has_no_adversarial_component_and_generator_gets_only_its_own() -> None:
    model, method = make_sharp("adautomix")
    x, y = batch()
    losses = method.compute_losses(model, x, y, adversarial=True)
    online, block = list(model.parameters()), list(method.mix_block.parameters())
    assert all(g is None for g in grads(losses.generator, online)), (
        "the adversarial term reaches the backbone"
    )
    assert all(g is None for g in grads(losses.classifier(), block)), (
        "the classifier's masks are not detached"
    )
    for total, own in zip(grads(losses.total(), online), grads(losses.classifier(), online), strict=True):
        torch.testing.assert_close(total, own)
    for total, own in zip(grads(losses.total(), block), grads(losses.generator, block), strict=True):
        torch.testing.assert_close(total, own)
    assert nonzero(grads(losses.generator, block))
    losses.total().backward()
    assert all(p.grad is None for p in method.ema.module.parameters())


def test_source_similarity_is_one_for_identical_logits_and_weighs_by_lam() -> None:
    logits = torch.randn(4, CLASSES)
    lams = torch.tensor([0.7, 0.3])
    assert float(source_similarity(logits, torch.stack([logits, logits]), lams)) == pytest.approx(
        1.0, abs=1e-6
    )
    opposite = float(source_similarity(logits, torch.stack([logits, -logits]), lams))
    assert opposite == pytest.approx(0.7 - 0.3, abs=1e-6)


def test_adautomix_alternates_adversarial_steps_with_the_update_counter() -> None:
    model, method = make("adautomix")
    pattern = []
    for _ in range(5):
        pattern.append(method.is_adversarial_step())
        method.after_step(model)
    assert pattern == [True, False, True, False, True]


# ----------------------------------------------------------------------------------- randomness, preview


def one_loss(name: str, seed: int, global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    model, method = make(name, seed=0, rng=MixRandom(seed))
    x, y = batch()
    seen = model_inputs(model)
    torch.manual_seed(global_seed)
    loss, _ = method.training_step(model, x, y)
    return loss.detach(), torch.cat([t.flatten() for t in seen])


@pytest.mark.parametrize("name", ["automix", "samix", "adautomix"])
def test_same_mixrandom_seed_gives_identical_batches_and_loss_whatever_global_seed(name: str) -> None:
    loss_1, batches_1 = one_loss(name, seed=7, global_seed=1)
    loss_2, batches_2 = one_loss(name, seed=7, global_seed=999)
    assert torch.equal(loss_1, loss_2) and torch.equal(batches_1, batches_2)
    loss_3, batches_3 = one_loss(name, seed=8, global_seed=1)
    assert not torch.equal(batches_1, batches_3)


def test_automix_preview_rows_are_sources_mask_and_mix() -> None:
    model, method = make("automix")
    x, y = batch()
    preview = method.preview(model, x[:5], y[:5])
    assert list(preview.rows) == ["source a", "source b", "mask (share of b)", "mixed"]
    assert preview.rows["mask (share of b)"].shape == (5, 1, SIZE, SIZE)
    assert all(preview.rows[key].shape == (5, 3, SIZE, SIZE) for key in ("source a", "source b", "mixed"))
    assert preview.lam.shape == (5,) and method.ema.training, "preview left the teacher in eval mode"


def test_adautomix_preview_rows_are_sources_masks_and_generated() -> None:
    model, method = make("adautomix")
    x, y = batch()
    preview = method.preview(model, x[:5], y[:5])
    assert list(preview.rows) == [
        *(f"source {i}" for i in (1, 2, 3)),
        *(f"mask {i}" for i in (1, 2, 3)),
        "generated",
    ]
    masks = torch.stack([preview.rows[f"mask {i}"] for i in (1, 2, 3)])
    assert masks.shape == (3, 5, 1, SIZE, SIZE)
    torch.testing.assert_close(masks.sum(0), torch.ones(5, 1, SIZE, SIZE))
    assert preview.rows["generated"].shape == (5, 3, SIZE, SIZE) and preview.lam.shape == (5,)


def test_build_method_passes_config_options_and_refuses_bad_ones() -> None:
    automix = build_method("automix", alpha=1.0, lam_margin=0.1, lam_channel=True, mix_block_lr=0.05)
    assert isinstance(automix, AutoMix) and automix.required_stages == (3,)
    assert (automix.alpha, automix.lam_margin, automix.lam_channel, automix.mix_block_lr) == (
        1.0,
        0.1,
        True,
        0.05,
    )
    adautomix = build_method("adautomix", num_sources=2, adversarial_weight=0.5)
    assert isinstance(adautomix, AdAutoMix) and (adautomix.num_sources, adautomix.adversarial_weight) == (
        2,
        0.5,
    )
    for name, options in [
        ("automix", {"upsample": "cubic"}),
        ("adautomix", {"lam_embedding": "concat"}),
        ("adautomix", {"num_sources": 1}),
        ("automix", {"mix_block_lr": 0.0}),
    ]:
        with pytest.raises(ValueError):
            build_method(name, **options)
