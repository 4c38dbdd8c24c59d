"""VGG-GAP: VGG-16 without its fully connected layers, for class activation maps (CAM).

VGG-16 (Simonyan and Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR, configuration D) as modified for CAM by Zhou et al. (2016, "Learning Deep Features for Discriminative
Localization", CVPR, section 3.1): "we remove the layers after conv5-3 (i.e., pool5 to prob) ... add a
convolutional layer of size 3x3, stride 1, pad 1 with 1024 units, followed by a GAP layer and a softmax
layer".  AlignMixup (Venkataramanan et al. 2022, CVPR) reports weakly supervised localisation with this
VGG-GAP (its Table 5).  So the network is:

* ``features``: torchvision's ``vgg16`` feature extractor (thirteen 3x3 convs with biases, each followed by a
  ReLU, no batch norm) without its last max-pool: a 224 px image gives a 512x14x14 conv5-3 map;
* ``cam_conv``: the added 3x3 conv, 512 -> 1024 channels, followed by a ReLU;
* global average pooling and ``classifier``, a linear layer 1024 -> ``num_classes`` (the softmax is the
  loss's).

Deviations from torchvision's ``vgg16``: no pool5, no ``avgpool`` to 7x7 and no ``classifier.0/3/6`` (the
4096-4096-1000 fully connected layers, with their dropouts); ``cam_conv`` and the 1024-wide linear
``classifier`` are new.  Parameter names inside ``features`` are torchvision's (``features.N.weight`` with
the same ``N``: only the removed pool, index 30, which has no weights, is missing), so a torchvision
``vgg16`` state dict loads into ``features`` strictly through ``pretrained_path``.  The rule for the rest of
such a file: tensors the model does not have (``classifier.0/3/6.*``) are ignored, ``cam_conv`` (listed in
:attr:`VGGGAP.new_tensors`, never in a published VGG-16 file) and ``classifier`` (the one tensor pair of
another name/size :func:`mixbench.models.load_local_weights` leaves at init) keep their initialisation.
Zhou et al. fine-tune from ImageNet VGG-16 weights; the official release is Caffe's, and torchvision's
ImageNet ``vgg16`` weights are the PyTorch equivalent.  Initialisation is torchvision's: convs
Kaiming-normal (fan-out, ReLU) with zero biases, the linear layer normal(0, 0.01) with a zero bias.

Stages (split at the max-pools, as the ResNets split at their resolution changes):

* stem: conv1-1, conv1-2, pool1 (stride 2);
* stage 1: conv2 block + pool2 (stride 4); stage 2: conv3 block + pool3 (stride 8);
* stage 3: conv4 block + pool4 (stride 16); stage 4: conv5 block + ``cam_conv`` + ReLU (stride 16).

So stages 1..4 have the ResNets' resolutions except the last, which keeps stride 16 (the point of removing
pool5): 56, 28, 14, 14 at 224 px.  For CAM, ``forward_features(x, model.num_stages)`` (``stem`` and every
stage) is the last conv feature map ``F`` (``B x 1024 x 14 x 14`` at 224 px, after the ReLU, what the GAP
pools), ``classifier.weight`` is ``W`` (``num_classes x 1024``), and ``head`` pools and classifies:
``model(x) == head(F)`` and the CAM of class ``c`` is ``sum_k W[c, k] F[k]`` (see
:func:`mixbench.evaluation.localization.compute_cams`).

``width`` scales every layer like the ResNets' ``width``: it is conv1's channel count ``w`` (torchvision:
64), the blocks have ``w, 2w, 4w, 8w, 8w`` channels and ``cam_conv`` ``16w`` (1024 at ``w = 64``).
Builders take ``image_size`` for a uniform signature only: the network pools globally and works at any size
(at least 16 px: four pools).  Parameters: ``vgg_gap`` with 1000 classes 20,459,304 (torchvision's
``vgg16``: 138,357,544, of which 14,714,688 in ``features``).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.models.base import StagedNet

VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
"""torchvision's configuration ``"D"`` up to conv5 (its final ``"M"``, pool5, is left out), followed by
conv5-1..conv5-3 (added in :func:`vgg16_features`); numbers are channels at ``w = 64``."""
CONV5_CHANNELS = (512, 512, 512)


def vgg16_features(width: int) -> nn.Sequential:
    """torchvision's ``vgg16().features`` without its last max-pool, channels scaled by ``width / 64``.

    Modules and indices are torchvision's (``Conv2d``, ``ReLU(inplace=True)``, ..., ``MaxPool2d(2, 2)``), so
    the state-dict keys are ``features.0.weight`` ... ``features.28.bias``.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in (*VGG16_CONFIG, *CONV5_CHANNELS):
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(item) * width // 64
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGGGAP(StagedNet):
    """VGG-16 conv1-1..conv5-3 (no pool5) + a 3x3 conv of ``16 * width`` channels + GAP + linear; stages 0..4
    are exposed (see the module docstring).
    """

    new_tensors = ("cam_conv.weight", "cam_conv.bias")

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.features = vgg16_features(width)
        self.cam_conv = nn.Conv2d(8 * width, 16 * width, kernel_size=3, stride=1, padding=1)
        self.cam_relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_channels = 16 * width
        self.classifier = nn.Linear(self.feature_channels, num_classes)
        pools = [i for i, module in enumerate(self.features) if isinstance(module, nn.MaxPool2d)]
        bounds = [0, *(i + 1 for i in pools), len(self.features)]  # blocks end after their pool
        blocks = [self.features[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        # Plain lists of slices sharing the modules of ``features`` (not registered): the state dict keeps
        # torchvision's names, once each.
        self._stem = [blocks[0]]
        self._stages = [*blocks[1:-1], nn.Sequential(blocks[-1], self.cam_conv, self.cam_relu)]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._stem[0](x)

    def stage_modules(self) -> list[nn.Module]:
        return self._stages

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(h), 1))

    def cam_classifier(self) -> nn.Linear:
        return self.classifier


def vgg_gap(num_classes: int, image_size: int = 224, width: int | None = None) -> VGGGAP:
    """VGG-GAP (Zhou et al. 2016): torchvision's VGG-16 features without pool5, a 3x3 conv to 1024 channels,
    GAP and a linear classifier.
    """
    return VGGGAP(num_classes, width=64 if width is None else width)
