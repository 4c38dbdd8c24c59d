"""CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features", ICCV 2019).

    lam ~ Beta(alpha, alpha),   perm = randperm(B)
    box of height H*sqrt(1 - lam) and width W*sqrt(1 - lam), centre uniform over the image,
    clipped to the image; x~ = x with the box replaced by the same box of x[perm]
    lam' = 1 - area(clipped box) / (H * W)            (the label ratio is recomputed after clipping)
    loss = lam' * CE(f(x~), y) + (1 - lam') * CE(f(x~), y[perm])

One box per batch, as in the official code.  Default alpha 1.0 (official); OpenMixup's CIFAR tables use 0.2.
"""

from __future__ import annotations

import math

import torch

from mixbench.methods.base import InputMixMethod, MixedBatch
from mixbench.methods.registry import register_method
from mixbench.rng import MixRandom

Box = tuple[int, int, int, int]  # top, bottom, left, right (bottom/right exclusive)


def sample_box(height: int, width: int, lam: float, rng: MixRandom) -> Box:
    """A box covering about ``1 - lam`` of the image, centred uniformly at random, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y, centre_x = rng.integer(0, height), rng.integer(0, width)
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    return top, bottom, left, right


def box_area_ratio(box: Box, height: int, width: int) -> float:
    top, bottom, left, right = box
    return (bottom - top) * (right - left) / (height * width)


def box_mask(box: Box, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A (1, 1, H, W) mask that is 1 inside ``box``."""
    top, bottom, left, right = box
    mask = torch.zeros(1, 1, height, width, device=device)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def paste_box(x: torch.Tensor, source: torch.Tensor, box: Box) -> torch.Tensor:
    """``x`` with ``box`` replaced by the same region of ``source`` (a new tensor)."""
    top, bottom, left, right = box
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = source[:, :, top:bottom, left:right]
    return mixed


@register_method
class CutMix(InputMixMethod):
    name = "cutmix"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        height, width = x.shape[-2:]
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        box = sample_box(height, width, lam, self.rng)
        lam_pasted = 1.0 - box_area_ratio(box, height, width)
        mask = box_mask(box, height, width, x.device)
        return MixedBatch(
            x=paste_box(x, x[perm], box), y_a=y, y_b=y[perm], lam=lam_pasted, perm=perm, mask=mask
        )
