"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR).

The network is torchvision's ``mobilenet_v2`` itself (``torchvision.models.MobileNetV2``, built with random
weights; nothing is downloaded), wrapped in the stage contract: its ``features`` and ``classifier`` become
this model's, so parameter names, shapes, initialisation (Kaiming-normal fan-out convs, BN weight 1 / bias 0,
linear normal(0, 0.01)) and the function are torchvision's, and a torchvision state dict loads strictly.
Through ``pretrained_path`` a classifier of another size (``classifier.1``) is left at init, as for the
ResNets.  The ImageNet stem is kept (3x3 stride-2 conv), also on small images: a 32 px image ends at 1x1.

Stages split ``features`` at its resolution changes (the blocks of stride 2), which gives the ResNets'
strides:

* stem: ``features[0:2]``, the 3x3 stride-2 conv (32 channels) and the first bottleneck (16), stride 2;
* stage 1: ``features[2:4]`` (24 channels, stride 4); stage 2: ``features[4:7]`` (32, stride 8);
* stage 3: ``features[7:14]`` (64 then 96, stride 16); stage 4: ``features[14:19]`` (160, 320, then the 1x1
  conv to 1280 with BN and ReLU6, stride 32): what the classifier pools.

``head`` is torchvision's: global average pooling, dropout 0.2 and the linear classifier.  Deviations from
the paper's Table 2 are torchvision's: its final 1x1 conv classifier on the pooled 1280-vector is the
equivalent linear layer, and the dropout of 0.2 before it is torchvision's choice.

``width`` is the stem conv's channel count (32 in the paper) and must be a multiple of 8: the model is
torchvision's with ``width_mult = width / 32``, which scales every layer and rounds its channels to
multiples of 8 (torchvision's ``round_nearest=8``, the paper's width multipliers); as in torchvision the last
conv keeps 1280 channels for ``width_mult < 1``.  Builders take ``image_size`` for a uniform signature only:
the network pools globally.  Parameters: ``mobilenet_v2`` with 1000 classes 3,504,872, as torchvision's.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from mixbench.models.base import StagedNet

STEM_CHANNELS = 32
"""The stem conv's channels at ``width_mult = 1`` (the paper's and torchvision's)."""


class MobileNetV2(StagedNet):
    """torchvision's MobileNetV2 with a stem and 4 stages split at its stride-2 blocks; stages 0..4 are
    exposed.
    """

    def __init__(self, num_classes: int, width: int = STEM_CHANNELS) -> None:
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"mobilenet_v2 width must be a positive multiple of 8 (paper: 32), got {width}")
        reference = torchvision.models.MobileNetV2(num_classes=num_classes, width_mult=width / STEM_CHANNELS)
        self.features = reference.features
        self.classifier = reference.classifier
        self.feature_channels = self.classifier[-1].in_features
        downsampling = [i for i, m in enumerate(self.features) if i > 0 and getattr(m, "stride", 1) == 2]
        bounds = [0, *downsampling, len(self.features)]
        # Plain lists of slices sharing the modules of ``features`` (not registered): the state dict keeps
        # torchvision's names, once each.
        blocks = [self.features[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        self._stem, self._stages = [blocks[0]], blocks[1:]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._stem[0](x)

    def stage_modules(self) -> list[nn.Module]:
        return self._stages

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    def cam_classifier(self) -> nn.Linear:
        return self.classifier[-1]


def mobilenet_v2(num_classes: int, image_size: int = 224, width: int | None = None) -> MobileNetV2:
    """MobileNetV2 (torchvision's ``mobilenet_v2``, ImageNet stem); ``width`` = the stem's channels (32)."""
    return MobileNetV2(num_classes, width=STEM_CHANNELS if width is None else width)
