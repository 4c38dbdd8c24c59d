"""Cutout (DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout", 2017).

No mixing: each image loses one square patch, and its label stays::

    (c_y, c_x) ~ uniform over the pixels, one centre per image
    hole = rows [c_y - length // 2, c_y + length // 2) x columns [c_x - length // 2, c_x + length // 2),
           clipped to the image (a centre near a border cuts a smaller patch)
    x~ = x * (1 - hole),   loss = CE(f(x~), y)

As in the official code (``util/cutout.py``, applied after ``Normalize``) the patch is zeroed in normalised
space, i.e. filled with the dataset's mean colour, and the centre is uniform over the whole image, so a patch
may lie partly outside it.  ``length`` 16 on CIFAR is the side METHODS.md and AlignMixup's comparison use (the
paper's CIFAR-10 value; its CIFAR-100 runs use 8).  An odd ``length`` cuts ``2 * (length // 2)`` pixels per
side, as the official code does.  Deviation: the centres are drawn on the device with the run's generator for
the whole batch (the official transform draws them per image with NumPy on the loader's workers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod, MixPreview, in_layout_of
from mixbench.methods.masks import centred_box_masks
from mixbench.methods.registry import register_method


def cutout_masks(
    centre_y: torch.Tensor, centre_x: torch.Tensor, length: int, height: int, width: int
) -> torch.Tensor:
    """(B, 1, H, W) masks, 1 on the clipped ``length``-square patch centred at each ``(centre_y, centre_x)``
    (the (B,) integer tensors)."""
    return centred_box_masks(centre_y, centre_x, length, length, height, width)


@register_method
class Cutout(MixMethod):
    name = "cutout"

    def __init__(self, length: int = 16) -> None:
        super().__init__()
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive number of pixels, got {length!r}")
        self.length = length

    def holes(self, x: torch.Tensor) -> torch.Tensor:
        """One patch per image of ``x``, centred uniformly at random (the run's generator, on the device)."""
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        generator, device = self.rng.torch, self.rng.device
        centre_y = torch.randint(height, (batch,), generator=generator, device=device)
        centre_x = torch.randint(width, (batch,), generator=generator, device=device)
        return cutout_masks(centre_y, centre_x, self.length, height, width).to(x.device)

    def cut(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x with the patches zeroed, the patches' masks)``."""
        masks = self.holes(x)
        return in_layout_of(x * (1.0 - masks.to(x.dtype)), x), masks

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        cut, _ = self.cut(x)
        return F.cross_entropy(model(cut), y, label_smoothing=self.label_smoothing), {}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        cut, masks = self.cut(x)
        rows = {"images": x, "patch (zeroed)": masks, "cut out": cut}
        return MixPreview(rows=rows, lam=torch.ones(x.shape[0]), note="labels unchanged: no mixing")
