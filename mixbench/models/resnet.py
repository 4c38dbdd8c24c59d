"""Post-activation ResNets and ResNeXts with torchvision-compatible parameter names.

ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition", CVPR) with basic or bottleneck
blocks; ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks", CVPR)
is the bottleneck ResNet whose 3x3 conv is grouped (``groups`` x ``width_per_group`` channels).

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1..layer4`` with ``conv1/bn1/...`` and
``downsample.0/.1`` per block, ``fc``), so ``load_state_dict`` accepts torchvision checkpoints
(for the CIFAR stem, every tensor except ``conv1.weight``).  As in torchvision the stride of a bottleneck
sits on its 3x3 conv ("ResNet v1.5"), convs are Kaiming-normal (fan-out) initialised, BN weights are 1
and biases 0, and zero-initialising the last BN of each residual branch is off by default.

Two stems:

* ``imagenet``: 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool (torchvision);
* ``cifar``: 3x3 stride-1 conv + BN + ReLU, no max-pool (OpenMixup's ``ResNet_CIFAR``).

``width`` scales the stem and all stage widths: planes ``w, 2w, 4w, 8w`` (torchvision: ``w = 64``).
Builders take ``image_size`` for a uniform signature only: the network pools globally and works at any size.

Parameters: ``resnet50`` (ImageNet stem, 1000 classes) 25,557,032; ``resnet18`` (CIFAR stem,
100 classes) 11,220,132; ``rx50`` (CIFAR stem, 100 classes) 23,177,124; ``resnet18_imagenet`` and
``rx50_imagenet`` (ImageNet stem, 1000 classes) 11,689,512 and 25,028,904, as torchvision's ``resnet18`` and
``resnext50_32x4d`` (the fine-grained tables fine-tune these from ImageNet weights); ``resnet34`` (ImageNet
stem, 1000 classes) 21,797,672, as torchvision's ``resnet34`` (SUMix's and AdAutoMix's ImageNet-1K R34).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mixbench.models.base import StagedNet

Stem = Literal["imagenet", "cifar"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; ``ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + downsample(x))``."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carries the stride), 1x1 expand by 4; post-activation."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        inner = int(planes * (width_per_group / 64.0)) * groups
        if inner == 0:
            raise ValueError(
                f"bottleneck width is 0 (planes={planes}, width_per_group={width_per_group}, "
                f"groups={groups}); use a larger width"
            )
        self.conv1 = _conv1x1(in_channels, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = _conv3x3(inner, inner, stride, groups)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = _conv1x1(inner, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(StagedNet):
    """ResNet/ResNeXt with 4 stages (strides 1, 2, 2, 2 after the stem); stages 0..4 are exposed."""

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        num_classes: int,
        stem: Stem = "imagenet",
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.groups, self.width_per_group = groups, width_per_group
        self._build_stem(stem, width)
        self.in_channels = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_channels = 8 * width * block.expansion
        self.fc = nn.Linear(self.feature_channels, num_classes)
        self._init_weights(zero_init_residual)

    def _build_stem(self, stem: Stem, width: int) -> None:
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module | None = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = None
        else:
            raise ValueError(f"unknown stem {stem!r}; valid: imagenet, cifar")
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        options = {"groups": self.groups, "width_per_group": self.width_per_group}
        layers = [block(self.in_channels, planes, stride, downsample, **options)]
        self.in_channels = out_channels
        layers += [block(out_channels, planes, **options) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return h if self.maxpool is None else self.maxpool(h)

    def stage_modules(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(h), 1))

    def cam_classifier(self) -> nn.Linear:
        return self.fc


def resnet18_cifar(num_classes: int, image_size: int = 32, width: int | None = None) -> ResNet:
    """ResNet-18 with the CIFAR stem (OpenMixup's CIFAR ResNet-18): basic blocks [2, 2, 2, 2]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, stem="cifar", width=64 if width is None else width)


def resnext50_32x4d_cifar(num_classes: int, image_size: int = 32, width: int | None = None) -> ResNet:
    """ResNeXt-50 32x4d with the CIFAR stem: bottlenecks [3, 4, 6, 3], 32 groups of 4 channels at w=64."""
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        stem="cifar",
        width=64 if width is None else width,
        groups=32,
        width_per_group=4,
    )


def resnet50(num_classes: int, image_size: int = 224, width: int | None = None) -> ResNet:
    """ResNet-50 with the ImageNet stem (torchvision layout): bottlenecks [3, 4, 6, 3]."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), num_classes, stem="imagenet", width=64 if width is None else width
    )


def resnet18_imagenet(num_classes: int, image_size: int = 224, width: int | None = None) -> ResNet:
    """ResNet-18 with the ImageNet stem (torchvision's ``resnet18``): basic blocks [2, 2, 2, 2]."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), num_classes, stem="imagenet", width=64 if width is None else width
    )


def resnet34(num_classes: int, image_size: int = 224, width: int | None = None) -> ResNet:
    """ResNet-34 with the ImageNet stem (torchvision's ``resnet34``): basic blocks [3, 4, 6, 3]."""
    return ResNet(
        BasicBlock, (3, 4, 6, 3), num_classes, stem="imagenet", width=64 if width is None else width
    )


def resnext50_32x4d_imagenet(num_classes: int, image_size: int = 224, width: int | None = None) -> ResNet:
    """ResNeXt-50 32x4d with the ImageNet stem (torchvision's ``resnext50_32x4d``): bottlenecks
    [3, 4, 6, 3].
    """
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        stem="imagenet",
        width=64 if width is None else width,
        groups=32,
        width_per_group=4,
    )
