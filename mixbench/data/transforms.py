"""Augmentation policies named by the schedules (``schedule.augment``), for data read by CPU workers.

Every transform ends in a uint8 ``3 x H x W`` tensor; conversion to float and normalisation happen on the
device (:mod:`mixbench.data.loaders`), which keeps worker output four times smaller.

=================  ==========================================================  ==========================
policy             train                                                       eval
=================  ==========================================================  ==========================
crop_flip          random crop with 4 px reflect padding, horizontal flip      as is
rrc_flip           RandomResizedCrop(size) + flip (PyTorch ImageNet style)    resize size/0.875, centre crop
rrc_bicubic_flip   RandomResizedCrop(size, bicubic) + flip (OpenMixup Tiny)    resize to size, no crop
imagenet_jitter    rrc_flip + colour jitter 0.4 + PCA lighting 0.1 (AlignMixup)  as rrc_flip
finegrained        resize 256, RandomResizedCrop(224, scale 0.5-1) + flip      resize 256, centre crop 224
vit                RandomResizedCrop(size, scale 0.8-1, bicubic) + flip +      resize to size (bicubic)
                   RandAugment(2 ops, magnitude 7, magnitude std 0.5)
=================  ==========================================================  ==========================

The device-resident path of small datasets implements ``crop_flip`` on the device instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode, v2

POLICIES = ("crop_flip", "rrc_flip", "rrc_bicubic_flip", "imagenet_jitter", "finegrained", "vit")

# Eigen-decomposition of ImageNet RGB covariance (Krizhevsky et al. 2012), in 0..1 pixel units.
_PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_PCA_EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


class PCALighting(torch.nn.Module):
    """AlexNet-style lighting noise: add ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0,
    std)`` per image.
    """

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        shift = (_PCA_EIGVEC @ (alpha * _PCA_EIGVAL)) * 255.0
        return (image.float() + shift.view(3, 1, 1)).clamp(0, 255).to(torch.uint8)


def _rrc(size: int, **kw) -> v2.Transform:
    return v2.RandomResizedCrop(size, antialias=True, **kw)


def train_transform(policy: str, size: int) -> Callable:
    """The training transform of ``policy``: PIL image in, uint8 ``3 x size x size`` tensor out."""
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)]
    bicubic = InterpolationMode.BICUBIC
    flip = v2.RandomHorizontalFlip()
    if policy == "crop_flip":
        steps = [v2.RandomCrop(size, padding=4, padding_mode="reflect"), flip, *to_tensor]
    elif policy == "rrc_flip":
        steps = [_rrc(size), flip, *to_tensor]
    elif policy == "rrc_bicubic_flip":
        steps = [_rrc(size, interpolation=bicubic), flip, *to_tensor]
    elif policy == "imagenet_jitter":
        jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
        steps = [_rrc(size), flip, jitter, *to_tensor, PCALighting(0.1)]
    elif policy == "finegrained":
        steps = [v2.Resize(256, antialias=True), _rrc(size, scale=(0.5, 1.0)), flip, *to_tensor]
    elif policy == "vit":
        # timm's RandAugment is DeiT's exact recipe (magnitude noise "mstd"), which torchvision's lacks.
        from timm.data.auto_augment import rand_augment_transform

        randaug = rand_augment_transform("rand-m7-n2-mstd0.5", {"img_mean": (124, 116, 104)})
        steps = [_rrc(size, scale=(0.8, 1.0), interpolation=bicubic), flip, randaug, *to_tensor]
    else:
        raise ValueError(f"unknown augment policy '{policy}'; valid: {', '.join(POLICIES)}")
    return v2.Compose(steps)


def eval_transform(policy: str, size: int) -> Callable:
    """The evaluation transform matching ``policy``."""
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)]
    if policy in ("rrc_flip", "imagenet_jitter"):
        steps = [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    elif policy == "finegrained":
        steps = [v2.Resize(256, antialias=True), v2.CenterCrop(size)]
    elif policy in ("rrc_bicubic_flip", "vit"):
        steps = [v2.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    elif policy == "crop_flip":
        steps = [v2.Resize((size, size), antialias=True)]
    else:
        raise ValueError(f"unknown augment policy '{policy}'; valid: {', '.join(POLICIES)}")
    return v2.Compose(to_tensor + steps)
