"""Mixing methods: what they compute (METHODS.md), where their randomness comes from, and the registry.

Every check recomputes the expected mix or loss by hand from what the method reports (lam, y_b) or from
the pixels, so a wrong formula, a wrong pairing, a label ratio that ignores clipping, or a stage outside the
configured ones makes a test fail.  Models are tiny (PreActResNet18 of width 4 on 16 px inputs).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods import METHODS, MixMethod, build_method
from mixbench.methods.cutmix import CutMix, box_area_ratio, paste_box, sample_box
from mixbench.methods.manifoldmix import ManifoldMix
from mixbench.methods.mixup import Mixup
from mixbench.methods.vanilla import Vanilla
from mixbench.models import StageUnavailableError, build_model
from mixbench.rng import MixRandom
from tests.helpers import InputOnlyNet, LinearNet, StageRecorder, hand_ce

BATCH, SIZE, CLASSES = 8, 16, 10


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def bound(method: MixMethod, seed: int, label_smoothing: float = 0.0) -> MixMethod:
    method.bind(MixRandom(seed), label_smoothing=label_smoothing)
    return method


def batch(seed: int = 0, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and distinct labels 0..B-1, so that ``y_b`` is the pairing permutation itself."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, size, size, generator=g), torch.arange(BATCH)


def tiny_r18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("r18", num_classes=CLASSES, image_size=SIZE, width=4).eval()


# --------------------------------------------------------------------------------------------- mixup


@pytest.mark.parametrize("seed", range(6))
def test_mixup_mixes_lam_x_plus_one_minus_lam_x_perm_with_reported_lam_and_pairing(seed: int) -> None:
    x, y = batch(seed)
    out = bound(Mixup(alpha=1.0), seed).mix(x, y)
    perm = out.y_b  # labels are 0..B-1
    assert sorted(perm.tolist()) == list(range(BATCH)), "y_b is not y[perm] for a permutation"
    assert torch.equal(out.y_a, y)
    assert isinstance(out.lam, float) and 0.0 <= out.lam <= 1.0
    torch.testing.assert_close(out.x, out.lam * x + (1 - out.lam) * x[perm])


def test_mixup_pairing_is_a_random_permutation_not_a_fixed_one() -> None:
    x, y = batch()
    perms = {tuple(bound(Mixup(), seed).mix(x, y).y_b.tolist()) for seed in range(8)}
    assert len(perms) > 1, "the pairing does not depend on the generator (flip or identity?)"


def test_mixup_lam_follows_beta_alpha_alpha() -> None:
    """Small alpha puts lam near 0 or 1, large alpha near 0.5: alpha must reach the Beta sampler."""
    x, y = batch()
    small = [bound(Mixup(alpha=0.05), s).mix(x, y).lam for s in range(40)]
    large = [bound(Mixup(alpha=50.0), s).mix(x, y).lam for s in range(40)]
    assert sum(min(v, 1 - v) < 0.1 for v in small) >= 30
    assert all(abs(v - 0.5) < 0.25 for v in large)


def test_mixup_training_step_loss_is_lam_ce_ya_plus_one_minus_lam_ce_yb() -> None:
    x, y = batch(3)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])  # repeated labels: y_b must come from the pairing
    model = LinearNet(SIZE, CLASSES)
    loss, logs = bound(Mixup(), 11).training_step(model, x, y)
    ref = bound(Mixup(), 11).mix(x, y)  # same seed: the same lam and pairing (checked above)
    logits = model(ref.x)
    expected = (ref.lam * hand_ce(logits, y) + (1 - ref.lam) * hand_ce(logits, ref.y_b)).mean()
    torch.testing.assert_close(loss, expected)
    assert float(logs["lam"]) == pytest.approx(ref.lam)


# --------------------------------------------------------------------------------------------- cutmix


def constant_batch(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i+1 (distinct per sample); labels 0..B-1."""
    values = torch.arange(1, BATCH + 1, dtype=torch.float32)
    return values.view(BATCH, 1, 1, 1).expand(BATCH, 3, height, width).clone(), torch.arange(BATCH)


def pasted_mask(out_x: torch.Tensor, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """(H, W) mask of the pixels taken from x[perm], checked identical over samples and channels."""
    moved = perm != torch.arange(BATCH)
    assert moved.any()
    from_source = out_x == x[perm]
    from_self = out_x == x
    assert (from_source | from_self).all(), "a pixel comes from neither the image nor its partner"
    masks = from_source[moved]
    mask = masks[0, 0]
    assert (masks == mask).all(), "not one box per batch"
    return mask


@pytest.mark.parametrize("alpha", [1.0, 0.2])
def test_cutmix_label_ratio_equals_unpasted_area_after_clipping(alpha: float) -> None:
    height = width = SIZE
    clipped_seen = unclipped_seen = 0
    for seed in range(60):
        x, y = constant_batch(height, width)
        out = bound(CutMix(alpha=alpha), seed).mix(x, y)
        perm = out.y_b
        assert torch.equal(out.y_a, y)
        mask = pasted_mask(out.x, x, perm)
        assert out.lam == pytest.approx(1.0 - mask.float().mean().item(), abs=1e-9)
        if mask.any():
            rows, cols = mask.any(1), mask.any(0)
            assert torch.equal(mask, rows[:, None] & cols[None, :]), "pasted region is not a box"
            box_h, box_w = int(rows.sum()), int(cols.sum())
            # an unclipped box on a square image is square; clipping at a border shrinks one side
            if box_h != box_w:
                clipped_seen += 1
            else:
                unclipped_seen += 1
    assert clipped_seen > 0, "no seed clipped the box: the test does not cover clipping"
    assert unclipped_seen > 0


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_box_takes_same_position_pixels_of_partner_and_leaves_the_rest(seed: int) -> None:
    x, y = batch(seed)
    out = bound(CutMix(), seed).mix(x, y)
    perm = out.y_b
    inside = (out.x == x[perm]).all(dim=(0, 1))  # random images: equality only where pasted
    outside = (out.x == x).all(dim=(0, 1))
    assert (inside ^ outside).all()
    assert out.lam == pytest.approx(1.0 - inside.float().mean().item())


@pytest.mark.parametrize("height,width", [(16, 16), (7, 12), (1, 5)])
def test_sample_box_stays_inside_image_for_any_lam(height: int, width: int) -> None:
    rng = MixRandom(0)
    for lam in [0.0, 1e-6, 0.1, 0.37, 0.5, 0.9, 0.999, 1.0] * 25:
        top, bottom, left, right = sample_box(height, width, lam, rng)
        assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
        assert 0.0 <= box_area_ratio((top, bottom, left, right), height, width) <= 1.0


def test_sample_box_area_is_about_one_minus_lam_when_centred() -> None:
    """Without clipping the box covers ~(1-lam) of the image (side H*sqrt(1-lam), up to rounding)."""

    class Centre(MixRandom):
        def integer(self, low: int, high: int) -> int:
            return (low + high) // 2

    for lam in (0.1, 0.3, 0.5, 0.75):
        box = sample_box(64, 64, lam, Centre(0))
        assert box_area_ratio(box, 64, 64) == pytest.approx(1 - lam, abs=4 * 64 / 64**2 + 0.02)


def test_paste_box_copies_only_the_box_and_does_not_modify_input() -> None:
    x, _ = batch()
    source = x + 100
    original = x.clone()
    out = paste_box(x, source, (2, 5, 3, 9))
    assert torch.equal(x, original)
    assert torch.equal(out[:, :, 2:5, 3:9], source[:, :, 2:5, 3:9])
    out[:, :, 2:5, 3:9] = x[:, :, 2:5, 3:9]
    assert torch.equal(out, x)


# ---------------------------------------------------------------------------------------- manifoldmix


def recover_pairing(mixed: torch.Tensor, h: torch.Tensor, lam: float) -> torch.Tensor:
    """perm such that mixed = lam*h + (1-lam)*h[perm], found by brute force over partners."""
    perm = []
    for i in range(len(h)):
        errors = [(mixed[i] - (lam * h[i] + (1 - lam) * h[j])).abs().max().item() for j in range(len(h))]
        perm.append(min(range(len(h)), key=errors.__getitem__))
    return torch.tensor(perm)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_manifoldmix_mixes_only_at_the_configured_stage_and_loss_is_mixed_ce(stage, monkeypatch) -> None:
    model = tiny_r18()
    rec = StageRecorder(model, monkeypatch)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(stage))
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    method = bound(ManifoldMix(alpha=2.0, stages=[stage]), 5)
    loss, logs = method.training_step(model, x, y)
    train_logits = rec.logits
    assert float(logs["stage"]) == stage
    lam = float(logs["lam"])
    assert 0.0 < lam < 1.0
    assert [(kind, k) for kind, k, _ in rec.calls] == [("features", stage), ("from", stage)]
    h, mixed = rec.calls[0][2], rec.calls[1][2]
    expected_h = x if stage == 0 else model.forward_features(x, stage)
    torch.testing.assert_close(h, expected_h)
    perm = recover_pairing(mixed, h, lam)
    assert sorted(perm.tolist()) == list(range(BATCH))
    assert not torch.equal(perm, torch.arange(BATCH)), "nothing was mixed"
    torch.testing.assert_close(mixed, lam * h + (1 - lam) * h[perm], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        logits = model.forward_from(lam * h + (1 - lam) * h[perm], stage)
    torch.testing.assert_close(train_logits, logits, rtol=1e-4, atol=1e-5)
    expected = (lam * hand_ce(logits, y) + (1 - lam) * hand_ce(logits, y[perm])).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)


def test_manifoldmix_passes_label_smoothing_to_its_mixed_loss(monkeypatch) -> None:
    model = tiny_r18()
    rec = StageRecorder(model, monkeypatch)
    x, _ = batch(1)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    loss, logs = bound(ManifoldMix(stages=[1]), 2, label_smoothing=0.2).training_step(model, x, y)
    lam, h, mixed, logits = float(logs["lam"]), rec.calls[0][2], rec.calls[1][2], rec.logits
    perm = recover_pairing(mixed, h, lam)
    ce = [F.cross_entropy(logits, t, reduction="none", label_smoothing=0.2) for t in (y, y[perm])]
    torch.testing.assert_close(loss.detach(), (lam * ce[0] + (1 - lam) * ce[1]).mean(), rtol=1e-4, atol=1e-5)
    plain = (lam * hand_ce(logits, y) + (1 - lam) * hand_ce(logits, y[perm])).mean()
    assert not torch.allclose(loss.detach(), plain, rtol=1e-3)


def test_manifoldmix_draws_stage_from_configured_stages_only(monkeypatch) -> None:
    model = tiny_r18()
    x, y = batch(size=4)  # 4 px: the stage choice is what matters here, keep the forward passes cheap
    stages_used: dict[tuple[int, ...], set[int]] = {}
    for stages, seeds in [((2,), 8), ((0, 1, 2), 24), ((1, 3), 12)]:
        seen = set()
        for seed in range(seeds):
            rec = StageRecorder(model, monkeypatch)
            _, logs = bound(ManifoldMix(stages=list(stages)), seed).training_step(model, x, y)
            stage = rec.calls[0][1]
            assert float(logs["stage"]) == stage
            seen.add(stage)
            monkeypatch.undo()
        stages_used[stages] = seen
    assert stages_used[(2,)] == {2}
    assert stages_used[(0, 1, 2)] == {0, 1, 2}
    assert stages_used[(1, 3)] == {1, 3}


def test_manifoldmix_rejects_empty_stages() -> None:
    with pytest.raises(ValueError):
        ManifoldMix(stages=[])


# -------------------------------------------------------------------------------------------- randomness


def run_method(name: str, seed: int, global_seed: int) -> tuple[torch.Tensor, float]:
    """(mixed batch or logits, lam) of one step of ``name`` bound to MixRandom(seed)."""
    torch.manual_seed(global_seed)
    x, y = batch(0)
    method = bound(build_method(name), seed)
    if name == "manifoldmix":
        model = tiny_r18()
        torch.manual_seed(global_seed)
        loss, logs = method.training_step(model, x, y)
        return loss.detach().reshape(1), float(logs["lam"])
    out = method.mix(x, y)
    return torch.cat([out.x.flatten(), out.y_b.float()]), float(out.lam)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "manifoldmix"])
def test_same_mixrandom_seed_gives_identical_batch_and_lam_whatever_global_torch_seed(name: str) -> None:
    first, lam_1 = run_method(name, seed=7, global_seed=1)
    second, lam_2 = run_method(name, seed=7, global_seed=12345)
    assert lam_1 == lam_2
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["mixup", "cutmix", "manifoldmix"])
def test_different_mixrandom_seeds_give_different_batches(name: str) -> None:
    results = [run_method(name, seed=s, global_seed=0) for s in range(4)]
    assert len({lam for _, lam in results}) > 1
    assert any(not torch.equal(results[0][0], other) for other, _ in results[1:])


def test_reseeding_the_bound_generator_replays_the_same_mix() -> None:
    x, y = batch()
    rng = MixRandom(3)
    method = Mixup()
    method.bind(rng)
    first = method.mix(x, y)
    second = method.mix(x, y)
    assert first.lam != second.lam, "two steps drew the same lam: the generator is not consumed"
    rng.reseed(3)
    replay = method.mix(x, y)
    assert replay.lam == first.lam and torch.equal(replay.x, first.x)


# ------------------------------------------------------------------------------------ registry and losses


def test_build_method_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        build_method("mixupp")
    message = str(info.value)
    assert "mixupp" in message
    for name in METHODS:
        assert name in message


def test_build_method_passes_config_options() -> None:
    assert build_method("mixup", alpha=0.3).alpha == 0.3
    assert build_method("cutmix", alpha=0.2).alpha == 0.2
    method = build_method("manifoldmix", alpha=1.5, stages=[1, 2])
    assert method.alpha == 1.5 and method.stages == (1, 2) and method.required_stages == (1, 2)
    assert set(METHODS) >= {"vanilla", "mixup", "cutmix", "manifoldmix"}


def test_vanilla_loss_is_plain_cross_entropy() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = batch(2)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    loss, _ = bound(Vanilla(), 0).training_step(model, x, y)
    torch.testing.assert_close(loss, hand_ce(model(x), y).mean())


def test_label_smoothing_is_passed_through_to_the_loss() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, _ = batch(2)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    plain, _ = bound(Vanilla(), 0).training_step(model, x, y)
    smooth, _ = bound(Vanilla(), 0, label_smoothing=0.1).training_step(model, x, y)
    assert not torch.allclose(plain, smooth)
    torch.testing.assert_close(smooth, F.cross_entropy(model(x), y, label_smoothing=0.1))

    loss, _ = bound(Mixup(), 4, label_smoothing=0.2).training_step(model, x, y)
    ref = bound(Mixup(), 4).mix(x, y)
    logits = model(ref.x)
    ce = [F.cross_entropy(logits, t, reduction="none", label_smoothing=0.2) for t in (ref.y_a, ref.y_b)]
    torch.testing.assert_close(loss, (ref.lam * ce[0] + (1 - ref.lam) * ce[1]).mean())


# --------------------------------------------------------------------------------------------- check_model


def test_manifoldmix_on_an_input_only_model_raises_stage_unavailable(swin_meta) -> None:
    with pytest.raises(StageUnavailableError, match="input_only"):
        build_method("manifoldmix").check_model(InputOnlyNet())
    build_method("manifoldmix").check_model(swin_meta)  # Swin-T exposes its stages


@pytest.mark.parametrize("name", ["vanilla", "mixup", "cutmix"])
def test_input_space_methods_accept_swin(name: str, swin_meta) -> None:
    build_method(name).check_model(swin_meta)


def test_manifoldmix_accepts_cnn_but_not_a_stage_beyond_its_depth() -> None:
    model = tiny_r18()
    build_method("manifoldmix").check_model(model)
    with pytest.raises(StageUnavailableError):
        build_method("manifoldmix", stages=[1, 5]).check_model(model)


def test_input_mix_loss_reports_mean_lam() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = batch()
    _, logs = bound(CutMix(), 9).training_step(model, x, y)
    ref = bound(CutMix(), 9).mix(x, y)
    assert float(logs["lam"]) == pytest.approx(ref.lam, abs=1e-6)
    assert not math.isnan(float(logs["lam"]))
