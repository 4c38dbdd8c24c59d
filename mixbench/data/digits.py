"""The embedded offline dataset: scikit-learn's handwritten digits (UCI "Optical Recognition of Handwritten
Digits", 1,797 real 8x8 grey images of 10 classes, shipped inside scikit-learn, so no download).

Each image (grey levels 0..16) is scaled to 0..255, resized bilinearly to ``image_size`` and repeated over
three channels, so every backbone and every method runs on it unchanged.  The split is fixed: a stratified
25% test split drawn with ``random_state=0`` (1,347 train / 450 test images), whatever the run's seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench.data.base import ArraySplit

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load(root: str | None = None, split: str = "train", image_size: int = 16) -> ArraySplit:
    """The ``train`` or ``test`` split as uint8 ``N x 3 x image_size x image_size``; ``root`` is unused."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not '{split}'")
    digits = load_digits()
    indices = torch.arange(len(digits.target)).numpy()
    train_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    chosen = train_idx if split == "train" else test_idx
    grey = torch.as_tensor(digits.images[chosen], dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ArraySplit(images=images, labels=torch.as_tensor(digits.target[chosen]))


def check(root: str | None = None, **options) -> None:
    """The digits ship with scikit-learn: always available."""
