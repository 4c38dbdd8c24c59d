"""SAMix (mixbench/methods/samix.py): its Mixer, its Mix Block objective and its step on AutoMix's pipeline.

Each check recomputes a number from its definition (the Mixer per sample from its weights, the eta-balanced
loss and the L1+Variance mask loss by hand on tiny inputs), so a wrong lam embedding, a value network that is
not the one described, a global term weighted wrongly or a missing detach makes a test fail.  The model is
PreActResNet18 of width 8 on 16 px inputs (stage 3: 32 x 4 x 4).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.methods import build_method
from mixbench.methods.base import mixed_cross_entropy
from mixbench.methods.mix_block import init_mix_block
from mixbench.methods.samix import (
    SAMix,
    eta_balanced_mixup_loss,
    rescale_lam,
    samix_mask_loss,
)
from mixbench.models import build_model
from mixbench.rng import MixRandom

BATCH, SIZE, CLASSES, WIDTH, TOTAL_STEPS = 8, 16, 10, 8, 100
PERM_A = [1, 2, 3, 4, 5, 6, 7, 0]
PERM_B = [7, 6, 5, 4, 3, 2, 1, 0]

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class ScriptedRandom(MixRandom):
    """Returns the given lams and pairings in order."""

    def __init__(self, betas: list[float], perms: list[list[int]]) -> None:
        super().__init__(0)
        self.betas, self.perms = list(betas), [torch.tensor(p) for p in perms]

    def beta(self, alpha, size=None):
        return self.betas.pop(0)

    def permutation(self, n: int) -> torch.Tensor:
        return self.perms.pop(0)


def make(rng: MixRandom | None = None, sharp: bool = False, **options) -> tuple[nn.Module, SAMix]:
    torch.manual_seed(0)
    model = build_model("r18", num_classes=CLASSES, image_size=SIZE, width=WIDTH)
    method = build_method("samix", **options)
    method.setup(model, CLASSES)
    method.bind(rng or MixRandom(0), total_steps=TOTAL_STEPS)
    if sharp:  # far from the flat init, with BatchNorm statistics that matter, so that a wrong formula shows
        init_mix_block(method.mix_block, std=0.3)
        norm = method.mix_block.value[1]
        generator = torch.Generator().manual_seed(3)
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.weight.data.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
    return model, method


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=generator), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def nonzero(gradients: list[torch.Tensor | None]) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in gradients)


# ---------------------------------------------------------------------------------------------- the step


def test_samix_builds_on_r18_and_one_step_trains_the_mix_block_and_the_backbone() -> None:
    model, method = make(mask_loss_margin=0.0)
    x, y = batch()
    loss, logs = method.training_step(model, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(value) for value in logs.values())
    online, block = list(model.parameters()), list(method.mix_block.parameters())
    assert nonzero(grads(loss, block)), "no gradient reaches the Mix Block"
    assert nonzero(grads(loss, online)), "no gradient reaches the backbone"
    loss.backward()
    assert all(p.grad is None for p in method.ema.module.parameters()), "the EMA teacher got a gradient"


def test_mix_block_terms_reach_only_the_mix_block_and_the_backbone_terms_only_the_backbone() -> None:
    model, method = make(rng=ScriptedRandom([0.4, 0.5], [PERM_A, PERM_B]), sharp=True, mask_loss_margin=0.0)
    losses = method.compute_losses(model, *batch())
    assert not losses.backbone_fell_back_to_mixup
    online, block = list(model.parameters()), list(method.mix_block.parameters())
    assert all(g is None for g in grads(losses.backbone_mix + losses.clean, block))
    assert all(g is None for g in grads(losses.mix_block_mix + losses.mask, online))
    assert nonzero(grads(losses.mix_block_mix, block)) and nonzero(grads(losses.mask, block))


def test_step_losses_are_the_eta_balanced_teacher_loss_and_the_l1_variance_mask_loss() -> None:
    lam_mb, lam_bb = 0.3, 0.6
    model, method = make(rng=ScriptedRandom([lam_mb, lam_bb], [PERM_A, PERM_B]), sharp=True)
    x, y = batch()
    losses = method.compute_losses(model, x, y)
    perm = torch.tensor(PERM_A)
    with torch.no_grad():
        share = method.mix_block(method.teacher_features(x), perm, lam_mb, (SIZE, SIZE))
        teacher = method.ema((1 - share) * x + share * x[perm])
    expected = eta_balanced_mixup_loss(teacher, y, y[perm], lam_mb, eta=0.5)
    torch.testing.assert_close(losses.mix_block_mix.detach(), expected, rtol=1e-5, atol=1e-6)
    mean = float(share.mean())
    variance = float(((share - mean) ** 2).mean())
    expected_mask = 0.1 * (max(abs(1 - mean - lam_mb) - 0.1, 0.0) - 2 * variance)
    assert float(losses.mask.detach()) == pytest.approx(expected_mask, abs=1e-6)


def test_online_and_ema_networks_are_both_evaluated_and_the_teacher_follows_its_momentum() -> None:
    model, method = make()
    nets = method.eval_models(model)
    assert set(nets) == {"", "ema"} and nets[""] is model and nets["ema"] is method.ema.module
    x, _ = batch()
    with torch.no_grad():
        model.eval(), method.ema.eval()
        assert nets[""](x).shape == nets["ema"](x).shape == (BATCH, CLASSES)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    before = [p.clone() for p in method.ema.module.parameters()]
    method.after_step(model)
    for old, new, online in zip(before, method.ema.module.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(new, 0.999 * old + 0.001 * online)
    assert method.steps_done() == 1


def test_a_step_reads_nothing_from_the_device() -> None:
    model, method = make(mask_loss_schedule="openmixup_compounded")
    x, y = batch()
    optimizer = torch.optim.SGD([*model.parameters(), *method.param_groups(0.1, 0.0)[0]["params"]], lr=0.1)
    with HostSyncCounter("cpu") as syncs:
        for _ in range(2):
            loss, _ = method.training_step(model, x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.after_step(model)
    assert syncs.count == 0, syncs.describe()


# --------------------------------------------------------------------------------- the Mix Block objective


def test_eta_balanced_loss_by_hand_on_one_sample() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    lam, eta = 0.3, 0.5
    pair = math.log(math.exp(2.0) + math.exp(-1.0))  # classes 0 and 2
    local = -(lam * (2.0 - pair) + (1 - lam) * (-1.0 - pair))
    global_term = math.log(sum(math.exp(v) for v in (2.0, 0.5, -1.0, 0.0))) - pair
    value = eta_balanced_mixup_loss(logits, torch.tensor([0]), torch.tensor([2]), lam, eta)
    assert float(value) == pytest.approx(local + eta * global_term, rel=1e-6)
    same = eta_balanced_mixup_loss(logits, torch.tensor([1]), torch.tensor([1]), lam, eta)
    assert float(same) == pytest.approx(
        eta * -math.log(math.exp(0.5) / math.exp(global_term + pair)), rel=1e-6
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_eta_one_is_the_mixup_cross_entropy_and_smaller_eta_weighs_the_other_classes_less(
    label_smoothing: float,
) -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(16, CLASSES, generator=generator, requires_grad=True)
    y_a, y_b = torch.randint(0, CLASSES, (16,), generator=generator), torch.randint(0, CLASSES, (16,))
    full = eta_balanced_mixup_loss(logits, y_a, y_b, 0.7, 1.0, label_smoothing)
    torch.testing.assert_close(full, mixed_cross_entropy(logits, y_a, y_b, 0.7, label_smoothing))
    half = eta_balanced_mixup_loss(logits, y_a, y_b, 0.7, 0.5)
    zero = eta_balanced_mixup_loss(logits, y_a, y_b, 0.7, 0.0)
    torch.testing.assert_close(half, (eta_balanced_mixup_loss(logits, y_a, y_b, 0.7, 1.0) + zero) / 2)
    (gradient,) = torch.autograd.grad(zero, logits)
    others = torch.ones_like(logits, dtype=torch.bool)
    others[torch.arange(16), y_a] = False
    others[torch.arange(16), y_b] = False
    assert bool((gradient[others] == 0).all()), "eta = 0 must leave the other classes out"


def test_l1_variance_mask_loss_by_hand() -> None:
    mask = torch.tensor([0.2, 0.6, 0.9, 0.1]).view(2, 1, 1, 2)
    # mean 0.45: |1 - 0.45 - 0.3| - 0.1 = 0.15; variance (0.0625 + 0.0225 + 0.2025 + 0.1225) / 4 = 0.1025
    assert float(samix_mask_loss(mask, 0.3, 0.1, 2.0)) == pytest.approx(0.15 - 2 * 0.1025, abs=1e-6)


# ------------------------------------------------------------------------------------------------- Mixer


def test_rescaled_lam_fixes_0_half_and_1_and_is_increasing() -> None:
    for k in (0.25, 1.0):
        assert [rescale_lam(v, k) for v in (0.0, 0.5, 1.0)] == pytest.approx([0.0, 0.5, 1.0])
        values = [rescale_lam(i / 100, k) for i in range(101)]
        assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert rescale_lam(0.3, None) == 0.3
    assert rescale_lam(0.3, 0.25) != pytest.approx(0.3)


def conv(layer: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of (C, hw) as a matrix product."""
    out = layer.weight[:, :, 0, 0] @ t
    return out if layer.bias is None else out + layer.bias[:, None]


@torch.no_grad()
def hand_samix_mask(block: nn.Module, z: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """The module docstring's Mixer for each sample separately (eval mode: BatchNorm's running statistics)."""
    k = block.lam_mul_k
    rescaled = (4 / 3 * lam**3 - 2 * lam**2 + (k + 1) * lam) / (k + 1 - 2 / 3)
    norm = block.value[1]
    masks = []
    for i in range(z.shape[0]):
        own, partner = z[i].flatten(1) * (1 + rescaled), z[perm[i]].flatten(1) * (2 - rescaled)
        pair = torch.cat([own, partner])
        query, key = conv(block.query, pair), conv(block.key, pair)
        attention = torch.softmax(query.T @ key / math.sqrt(query.shape[0]), dim=1)
        hidden = conv(block.value[0], partner)
        hidden = (hidden - norm.running_mean[:, None]) / torch.sqrt(norm.running_var[:, None] + norm.eps)
        hidden = F.elu(hidden * norm.weight[:, None] + norm.bias[:, None])
        value = conv(block.value[3], hidden)  # (1, hw)
        grid = (attention @ value.T).reshape(1, 1, z.shape[-2], z.shape[-1])
        masks.append(torch.sigmoid(F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear"))[0])
    return torch.stack(masks)


def test_mixer_is_the_documented_formula_and_depends_on_lam() -> None:
    _, method = make(sharp=True)
    x, _ = batch()
    z, perm = method.teacher_features(x), torch.tensor(PERM_A)
    block = method.mix_block.eval()
    mask = block(z, perm, 0.3, (SIZE, SIZE))
    assert mask.shape == (BATCH, 1, SIZE, SIZE) and mask.std() > 0.01
    torch.testing.assert_close(mask, hand_samix_mask(block, z, perm, 0.3), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mask, block(z, perm, 0.8, (SIZE, SIZE))), "the lam embedding has no effect"


def test_preview_uses_the_mixer_in_eval_mode_and_restores_train_mode() -> None:
    model, method = make()
    x, y = batch()
    running_mean = method.mix_block.value[1].running_mean.clone()
    preview = method.preview(model, x[:4], y[:4])
    assert list(preview.rows) == ["source a", "source b", "mask (share of b)", "mixed"]
    assert torch.equal(method.mix_block.value[1].running_mean, running_mean), (
        "the preview moved BN statistics"
    )
    assert method.mix_block.training and method.ema.training


def test_options_are_checked() -> None:
    for options in (
        {"eta": 1.5},
        {"lam_mul_k": -1.0},
        {"value_dropout": 1.0},
        {"mask_loss_schedule": "step"},
    ):
        with pytest.raises(ValueError):
            build_method("samix", **options)
    _, dropout = make(value_dropout=0.1, lam_mul_k=None)
    assert isinstance(dropout.mix_block.value[-1], nn.Dropout) and dropout.mix_block.lam_mul_k is None


def test_mixer_layers_are_openmixups_pixel_mix_block_with_the_conv_neck_value() -> None:
    """The CIFAR R18 Mixer (C = 256): q and k 1x1 convs 2C -> C/2 with bias, the value ConvNeck
    C -> C/2 -> 1 with bias-free convs, BN and ELU between and nothing after the last conv (dropout 0):
    164,480 parameters."""
    from mixbench.methods.samix import SAMixBlock

    block = SAMixBlock(256)
    assert (block.query.in_channels, block.query.out_channels) == (512, 128)
    assert (block.key.in_channels, block.key.out_channels) == (512, 128)
    assert block.query.bias is not None and block.key.bias is not None
    kinds = [type(layer) for layer in block.value]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ELU, nn.Conv2d]
    assert all(layer.bias is None for layer in block.value if isinstance(layer, nn.Conv2d))
    assert sum(p.numel() for p in block.parameters()) == 164_480
