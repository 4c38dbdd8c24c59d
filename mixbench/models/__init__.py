"""Backbone registry: ``build_model(name, num_classes, image_size, width=None, **options)``.

Every model is a :class:`StagedNet` (see ``base.py``) and every builder has the signature
``builder(num_classes, image_size, width=None, **model_specific_options)``.  CNNs expose all their stages and
accept ``width`` (the first stage's channel count, which scales every stage; ``None`` keeps the paper's;
``mobilenet_v2``: its stem's, a multiple of 8); they pool globally, so ``image_size`` does not change them.
The CNNs: ``r18``, ``wrn16_8``, ``wrn28_8``, ``resnet18``, ``rx50`` (CIFAR), ``resnet50``, ``resnet34``,
``resnet18_imagenet``, ``rx50_imagenet``, ``mobilenet_v2`` (ImageNet stem), ``vgg_gap`` (VGG-16 for CAM).
The timm models ``swin_t``, ``deit_s`` and ``convnext_t`` expose stages 0..4 as maps (see ``timm_models.py``,
also for DeiT's class token), are built for ``image_size`` (any input size runs) and reject a non-None
``width``.

Model-specific options: ``dropout`` (``wrn16_8``, ``wrn28_8``); ``drop_path_rate`` (``swin_t``, ``deit_s``,
``convnext_t``); ``stem`` (``convnext_t``: ``patch`` or OpenMixup's 32 px ``cifar``);
``pretrained_path`` (every model: a local weights file, never a download; the timm models adapt position
tables with timm's filter, the CNNs load matching tensors and keep a classifier of another size, and
layers added to the published architecture (``vgg_gap``'s extra conv), at init).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mixbench.models.adl import adl_option, insert_adl
from mixbench.models.base import StagedNet, StageUnavailableError
from mixbench.models.mobilenet import mobilenet_v2
from mixbench.models.preact_resnet import preact_resnet18
from mixbench.models.resnet import (
    resnet18_cifar,
    resnet18_imagenet,
    resnet34,
    resnet50,
    resnext50_32x4d_cifar,
    resnext50_32x4d_imagenet,
)
from mixbench.models.timm_models import convnext_t, deit_s, swin_t
from mixbench.models.vgg import vgg_gap
from mixbench.models.wide_resnet import wrn16_8, wrn28_8

__all__ = ["MODELS", "StageUnavailableError", "StagedNet", "build_model"]

MODELS: dict[str, Callable[..., StagedNet]] = {
    "r18": preact_resnet18,
    "wrn16_8": wrn16_8,
    "wrn28_8": wrn28_8,
    "resnet18": resnet18_cifar,
    "rx50": resnext50_32x4d_cifar,
    "resnet50": resnet50,
    "resnet34": resnet34,
    "resnet18_imagenet": resnet18_imagenet,
    "rx50_imagenet": resnext50_32x4d_imagenet,
    "vgg_gap": vgg_gap,
    "mobilenet_v2": mobilenet_v2,
    "swin_t": swin_t,
    "deit_s": deit_s,
    "convnext_t": convnext_t,
}

_COMMON_ARGUMENTS = ("num_classes", "image_size", "width")


def _check_options(name: str, builder: Callable[..., StagedNet], options: dict[str, object]) -> None:
    accepted = [p for p in inspect.signature(builder).parameters if p not in _COMMON_ARGUMENTS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(accepted) or 'none'}"
        )


def build_model(
    name: str, num_classes: int, image_size: int, width: int | None = None, **options: object
) -> StagedNet:
    """Build the registered model ``name`` with a ``num_classes``-way head for ``image_size`` px inputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    pretrained_path = None
    if "pretrained_path" not in inspect.signature(builder).parameters:
        pretrained_path = options.pop("pretrained_path", None)
    adl = adl_option(name, options.pop("adl", None))  # ADL layers (adl.py): vgg_gap and resnet50 only
    _check_options(name, builder, options)
    model = builder(num_classes=num_classes, image_size=image_size, width=width, **options)
    model.name = name
    if adl is not None:
        insert_adl(model, **adl)
    if pretrained_path is not None:
        load_local_weights(model, str(pretrained_path))
    return model


def load_local_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict (e.g. torchvision's ImageNet weights), leaving a mismatched classifier at init.

    Tensors whose name and shape match are loaded and the file's other tensors are ignored.  Of the model's
    tensors, those it adds to the published architecture (``model.new_tensors``, e.g. VGG-GAP's extra conv)
    and at most two more, the classifier's weight and bias (a different number of classes), may be left out;
    anything more means the file is for another architecture.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state))
    own = model.state_dict()
    matching = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    left_out = sorted(set(own) - set(matching) - set(getattr(model, "new_tensors", ())))
    if len(left_out) > 2:
        raise ValueError(
            f"{path} does not fit this model: {len(left_out)} tensors missing or of another shape "
            f"(first: {', '.join(left_out[:3])})"
        )
    model.load_state_dict(matching, strict=False)
