"""PreActResNet-18 for 32 px images, as in AlignMixup's official CIFAR code.

Pre-activation residual network (He et al. 2016, "Identity Mappings in Deep Residual Networks",
arXiv:1603.05027).  Each basic block computes ``a = ReLU(BN(x))``, then ``conv3x3-BN-ReLU-conv3x3`` on
``a``, and adds a shortcut.

Deviation from He et al., kept to reproduce AlignMixup: the official block feeds the shortcut from the
pre-activated ``a``, also when the shortcut is the identity (``shortcut = nn.Sequential()(a)``), so a
block returns ``a + F(a)`` rather than ``x + F(a)``.  When the block changes the shape the shortcut is a
1x1 convolution (no bias) of ``a``, as in He et al.

Layout (AlignMixup, Venkataramanan et al. CVPR 2022, ``cifar10_100/models/resnet.py``):

* stem: 3x3 stride-1 conv (no bias) + BN + ReLU;
* 4 stages x 2 blocks, widths ``w, 2w, 4w, 8w`` (``w = 64``), strides ``1, 2, 2, 2``;
* **no** final BN-ReLU after stage 4 (the official code has none), so the stage-4 state that AlignMix
  aligns is the raw residual sum: ``512x4x4`` on 32 px input;
* head: global average pool + Linear (the official code uses ``avg_pool2d(4)``, identical at 32 px).

Initialisation is PyTorch's default, as in the official code (it applies no custom init).
Parameters with ``w = 64``: 11,171,274 for 10 classes, 11,217,444 for 100 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.models.base import StagedNet


class PreActBlock(nn.Module):
    """Pre-activation basic block of AlignMixup's code: ``a = ReLU(BN(x))``, returns ``F(a) +
    shortcut(a)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        shortcut = activated if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [PreActBlock(in_channels, out_channels, stride)]
    layers += [PreActBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class PreActResNet(StagedNet):
    """Pre-activation ResNet with a 3x3 stem (CIFAR layout); stages 0..4 are exposed for mixing."""

    def __init__(
        self, blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        widths = [width * 2**i for i in range(len(blocks_per_stage))]
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_channels = width
        stages = []
        for index, (channels, blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            stages.append(_make_stage(in_channels, channels, blocks, stride=1 if index == 0 else 2))
            in_channels = channels
        self.stage_names = [f"layer{index + 1}" for index in range(len(stages))]
        for name, stage in zip(self.stage_names, stages, strict=True):
            self.add_module(name, stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.feature_channels = in_channels

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def stage_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def cam_classifier(self) -> nn.Linear:
        return self.fc


def preact_resnet18(num_classes: int, image_size: int = 32, width: int | None = None) -> PreActResNet:
    """PreActResNet-18 (AlignMixup's ``r18``): 4 stages x 2 pre-activation basic blocks, ``width`` 64.

    ``image_size`` is accepted for a uniform builder signature; the network pools globally and works at any.
    """
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, width=64 if width is None else width)
