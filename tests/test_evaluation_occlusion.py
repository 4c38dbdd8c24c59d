"""Occlusion: fraction 0 leaves images unchanged and 1 masks every pixel, each image gets exactly
round(f x patches) masked patches, masks are patch-aligned, nested across fractions and seeded, the
small-image grid rule, the accuracy curve of constant classifiers, and the curve PNG written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mixbench.evaluation.occlusion import (
    OCCLUSION_FRACTIONS,
    masked_patch_count,
    occlude,
    occlusion_accuracy,
    occlusion_curve_png,
    occlusion_grid,
    occlusion_masks,
    patch_index_map,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def masks_for(seed: int, fraction: float, batch: int = 6, height: int = 64, width: int = 80, patch: int = 16):
    return occlusion_masks(batch, height, width, patch, fraction, torch.Generator().manual_seed(seed))


def masked_patches_per_image(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, rows, cols)`` fraction of masked pixels in each square patch."""
    batch, height, width = masks.shape
    blocks = masks.float().view(batch, height // patch, patch, width // patch, patch)
    return blocks.mean(dim=(2, 4))


def test_grid_sizes_and_small_image_rule():
    assert occlusion_grid(224, 224) == (14, 14)
    assert occlusion_grid(64, 64) == (4, 4)
    assert occlusion_grid(72, 64) == (5, 4)  # the last row is 8 px high
    assert occlusion_grid(32, 32) == (4, 4)  # 2x2 patches of 16 px would be too coarse: a 4x4 grid of 8 px
    assert occlusion_grid(8, 8) == (4, 4)
    assert occlusion_grid(32, 32, min_patches_per_side=1) == (2, 2)  # the literal 16 px patches
    with pytest.raises(ValueError, match="smaller min_patches_per_side"):
        occlusion_grid(3, 3)
    index_map, count = patch_index_map(10, 10)  # 10 px in a 4x4 grid: cells of 2 or 3 px
    assert count == 16
    assert sorted(torch.bincount(index_map.flatten()).unique().tolist()) == [4, 6, 9]
    assert index_map.unique().tolist() == list(range(16))


def test_fraction_zero_leaves_images_unchanged_and_one_masks_everything():
    images = torch.randn(6, 3, 64, 80)
    none = masks_for(0, 0.0)
    assert not none.any()
    assert torch.equal(occlude(images, none, fill=0.0), images)
    every = masks_for(0, 1.0)
    assert every.all()
    assert torch.equal(occlude(images, every, fill=-1.5), torch.full_like(images, -1.5))


@pytest.mark.parametrize("fraction", OCCLUSION_FRACTIONS)
def test_each_image_has_round_f_times_patches_masked_and_masks_are_patch_aligned(fraction):
    masks = masks_for(1, fraction)  # 64 x 80 at 16 px: 4 x 5 = 20 patches
    per_patch = masked_patches_per_image(masks, 16)
    assert set(per_patch.unique().tolist()) <= {0.0, 1.0}  # a patch is masked whole or not at all
    expected = math.floor(fraction * 20 + 0.5 + 1e-9)
    assert per_patch.sum(dim=(1, 2)).tolist() == [expected] * 6


def test_round_half_up():
    assert masked_patch_count(0.7, 5) == 4  # 0.7 * 5 = 3.4999999999999996 in floats, 3.5 really
    assert masked_patch_count(0.5, 5) == 3
    assert masked_patch_count(0.1, 16) == 2  # 1.6
    assert masked_patch_count(0.1, 4) == 0
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        masked_patch_count(1.1, 4)


def test_same_seed_same_masks_different_seed_different_masks_nested_across_fractions():
    assert torch.equal(masks_for(7, 0.5), masks_for(7, 0.5))
    assert not torch.equal(masks_for(7, 0.5), masks_for(8, 0.5))
    # one draw per image, the k lowest scores masked: the masks of one draw grow with the fraction
    low, high = masks_for(7, 0.3), masks_for(7, 0.6)
    assert not (low & ~high).any()
    assert (high & ~low).any()
    # different images of a batch get different patches
    masks = masks_for(7, 0.5)
    assert any(not torch.equal(masks[0], masks[index]) for index in range(1, 6))


def test_small_image_masks_use_the_4x4_grid():
    masks = occlusion_masks(5, 32, 32, 16, 0.5, torch.Generator().manual_seed(0))
    per_patch = masked_patches_per_image(masks, 8)
    assert set(per_patch.unique().tolist()) == {0.0, 1.0}
    assert per_patch.sum(dim=(1, 2)).tolist() == [8.0] * 5


def test_occlude_fills_one_value_per_channel_only_where_masked():
    images = torch.rand(2, 3, 32, 32)
    mask = occlusion_masks(2, 32, 32, 16, 0.5, torch.Generator().manual_seed(0))
    occluded = occlude(images, mask, fill=torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(occluded[:, 2][mask], torch.full((int(mask.sum()),), 3.0))
    assert torch.equal(occluded.permute(1, 0, 2, 3)[:, ~mask], images.permute(1, 0, 2, 3)[:, ~mask])
    with pytest.raises(ValueError, match="mask must have shape"):
        occlude(images, mask[:, :16])


class ConstantClassifier(nn.Module):
    """Predicts ``answer`` for every image; holds one parameter so it has a device."""

    def __init__(self, answer: int, classes: int = 3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        self.answer = answer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.bias.expand(images.shape[0], -1).clone()
        logits[:, self.answer] = 1.0
        return logits


class MeanBrightnessClassifier(nn.Module):
    """Class 1 when an image's mean is above 0.5, else class 0: right on all-ones images until about half of
    the pixels are masked with 0."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([0.5 - mean, mean - 0.5], dim=1)


def test_curve_of_constant_and_brightness_classifiers():
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0, 0, 1])  # 5 of 10 are class 0
    loader = [(torch.ones(5, 3, 64, 64), labels[:5]), (torch.ones(5, 3, 64, 64), labels[5:])]
    model = ConstantClassifier(answer=0).train()
    curve = occlusion_accuracy(model, loader, seed=0)
    assert list(curve) == [step / 10 for step in range(11)]
    assert curve == {fraction: 50.0 for fraction in OCCLUSION_FRACTIONS}
    assert model.training  # the mode is restored

    bright = [(torch.ones(5, 3, 64, 64), torch.ones(5, dtype=torch.int64))] * 2
    curve = occlusion_accuracy(MeanBrightnessClassifier(), bright, seed=0, fill=0.0)
    # 16 patches: up to 7 masked (f <= 0.4, round(0.4 * 16) = 6) the mean stays above 0.5
    assert [curve[f] for f in OCCLUSION_FRACTIONS] == [100.0] * 5 + [0.0] * 6
    with pytest.raises(ValueError, match="loader is empty"):
        occlusion_accuracy(model, [], seed=0)


class RecordingClassifier(ConstantClassifier):
    """A constant classifier that keeps every batch it is shown."""

    def __init__(self, answer: int) -> None:
        super().__init__(answer)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return super().forward(images)


def test_every_model_sees_the_same_occluded_images_for_the_same_seed():
    generator = torch.Generator().manual_seed(3)
    loader = [(torch.rand(4, 3, 32, 32, generator=generator), torch.randint(0, 2, (4,), generator=generator))]
    fractions = (0.0, 0.5, 1.0)
    first, second, other_seed = RecordingClassifier(0), RecordingClassifier(1), RecordingClassifier(0)
    occlusion_accuracy(first, loader, seed=5, fractions=fractions, fill=-2.0)
    occlusion_accuracy(second, loader, seed=5, fractions=fractions, fill=-2.0)
    occlusion_accuracy(other_seed, loader, seed=6, fractions=fractions, fill=-2.0)
    assert all(torch.equal(a, b) for a, b in zip(first.seen, second.seen, strict=True))
    assert not torch.equal(first.seen[1], other_seed.seen[1])
    assert torch.equal(first.seen[0], loader[0][0])
    masked = (first.seen[1] == -2.0).all(dim=1)  # 32 px: the 4 x 4 grid of 8 px cells, 8 of 16 masked
    assert masked_patches_per_image(masked, 8).sum(dim=(1, 2)).tolist() == [8.0] * 4
    assert (first.seen[2] == -2.0).all()


def test_curve_png_is_written_atomically(tmp_path: Path):
    curves = {
        "mixup": {f: 90.0 * (1 - f) for f in OCCLUSION_FRACTIONS},
        "cutmix": {f: 92.0 * (1 - f**2) for f in OCCLUSION_FRACTIONS},
    }
    path = occlusion_curve_png(curves, tmp_path / "plots" / "occlusion.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert [entry.name for entry in path.parent.iterdir()] == ["occlusion.png"]  # no temporary file left
    with pytest.raises(ValueError, match="curves is empty"):
        occlusion_curve_png({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
