"""Pre-activation Wide-ResNets (WRN-d-k) for 32 px images, as in AlignMixup's official CIFAR code.

Wide Residual Networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks", BMVC, arXiv:1605.07146):
a 3x3 stem conv with 16 channels, then 3 stages of ``(d - 4) / 6`` pre-activation basic blocks with widths
``16k, 32k, 64k`` and strides ``1, 2, 2``, then BN-ReLU, global average pooling and a Linear classifier.

Layout details follow AlignMixup's ``cifar10_100/models/WideResnet.py`` (itself from the widely used
``wide_basic`` implementation), which differs from the paper's reference code in three places:

* every convolution has a bias;
* a block's stride sits on its *second* 3x3 conv (``BN-ReLU-conv(s=1)-BN-ReLU-conv(s)``);
* the shortcut reads the block's raw input ``x`` (identity, or a 1x1 conv with bias when the shape changes),
  not the pre-activated one.

Stage contract: stages 1..2 are the outputs of the first two groups of blocks; stage 3 is the third group
followed by the final BN-ReLU, so the stage-3 state of WRN16-8 is the activated ``512x8x8`` tensor that the
classifier pools.  This is the tensor the official AlignMixup encoder aligns (its encoder ends with the
BN-ReLU) and the one OpenMixup's WRN backbone hands to its heads; without the BN-ReLU, methods that read
the last stage (AlignMixup, AutoMix's Mix Block, SUMix, AlignMixup/AE's embedding) would see an unnormalised
residual sum.  The head is pooling and the Linear classifier.

Final BatchNorm momentum (``final_bn_momentum``): the official ``Wide_ResNet`` builds its final BN with
``momentum=0.9`` (every other BN of the network keeps PyTorch's 0.1).  In PyTorch's convention the momentum
is the weight of the *new* batch, ``running = (1 - m) * running + m * batch``, so with 0.9 the running
statistics are 90% the last training batch's (perhaps meant as TensorFlow's decay 0.9, which is PyTorch's
0.1; the released code, which produced the published numbers, uses 0.9).  After one training batch from the
initial running mean 0 it is ``0.9 * batch mean`` instead of ``0.1 * batch mean``, and at evaluation the
final BN normalises with statistics dominated by the last training batch rather than averaged over the last
few dozen.  ``wrn16_8`` (AlignMixup's network) defaults to the official 0.9; ``final_bn_momentum=0.1`` gives
PyTorch's default.  ``wrn28_8`` (the WRN-28-8 of OpenMixup's recipe for the SUMix tables, not an AlignMixup
network) and the ``WideResNet`` class keep PyTorch's 0.1.

Initialisation is PyTorch's default, as in the official code.  Dropout (rate ``dropout``, default 0 as in
AlignMixup) sits between the two convolutions of a block, after the first conv.
Builders take ``image_size`` for a uniform signature only: the network pools globally and works at any size.
Parameters (100 classes): WRN16-8 11,012,036; WRN28-8 23,409,092; WRN28-10 36,546,980.
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.models.base import StagedNet

STEM_CHANNELS = 16


class WideBasicBlock(nn.Module):
    """Pre-activation wide basic block: ``shortcut(x) + conv_s(ReLU(BN(drop(conv(ReLU(BN(x)))))))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return out + shortcut


def _make_stage(
    in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    layers = [WideBasicBlock(in_channels, out_channels, stride, dropout)]
    layers += [WideBasicBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class WideResNet(StagedNet):
    """WRN-``depth``-``widen_factor``; ``width`` overrides the first stage's width (default ``16 * k``).

    Stage widths are ``width, 2 * width, 4 * width``; the stem keeps 16 channels as in the paper.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        width: int | None = None,
        dropout: float = 0.0,
        final_bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if not 0.0 < final_bn_momentum <= 1.0:
            raise ValueError(f"final_bn_momentum must lie in (0, 1], got {final_bn_momentum}")
        blocks = (depth - 4) // 6
        width = STEM_CHANNELS * widen_factor if width is None else width
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, stride=1, padding=1, bias=True)
        self.layer1 = _make_stage(STEM_CHANNELS, width, blocks, 1, dropout)
        self.layer2 = _make_stage(width, 2 * width, blocks, 2, dropout)
        self.layer3 = _make_stage(2 * width, 4 * width, blocks, 2, dropout)
        self.final_bn = nn.BatchNorm2d(4 * width, momentum=final_bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.feature_channels = 4 * width
        # The stages as the contract sees them; a plain list (not registered again), the modules are the
        # above.
        self._stages = [self.layer1, self.layer2, nn.Sequential(self.layer3, self.final_bn, self.relu)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def stage_modules(self) -> list[nn.Module]:
        return self._stages

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(h), 1))

    def cam_classifier(self) -> nn.Linear:
        return self.fc


OFFICIAL_FINAL_BN_MOMENTUM = 0.9  # AlignMixup's WideResnet.py: BatchNorm2d(64 * k, momentum=0.9)


def wrn16_8(
    num_classes: int,
    image_size: int = 32,
    width: int | None = None,
    dropout: float = 0.0,
    final_bn_momentum: float = OFFICIAL_FINAL_BN_MOMENTUM,
) -> WideResNet:
    """WRN-16-8: 2 blocks per stage, widths 128/256/512 (AlignMixup's CIFAR Wide-ResNet, final BN momentum
    0.9 as in its code)."""
    return WideResNet(16, 8, num_classes, width=width, dropout=dropout, final_bn_momentum=final_bn_momentum)


def wrn28_8(
    num_classes: int, image_size: int = 32, width: int | None = None, dropout: float = 0.0
) -> WideResNet:
    """WRN-28-8: 4 blocks per stage, widths 128/256/512."""
    return WideResNet(28, 8, num_classes, width=width, dropout=dropout)


def wrn28_10(
    num_classes: int, image_size: int = 32, width: int | None = None, dropout: float = 0.0
) -> WideResNet:
    """WRN-28-10: 4 blocks per stage, widths 160/320/640 (not registered; used to check the counts)."""
    return WideResNet(28, 10, num_classes, width=width, dropout=dropout)
