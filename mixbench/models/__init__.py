"""Backbone registry: ``build_model(name, num_classes, image_size, width=None, **options)``.

Every model is a :class:`StagedNet` (see ``base.py``) and every builder has the signature
``builder(num_classes, image_size, width=None, **model_specific_options)``.  CNNs expose all their stages and
accept ``width`` (the first stage's channel count, which scales every stage; ``None`` keeps the paper's);
they pool globally, so ``image_size`` does not change them.  The timm transformers expose only the input
(stage 0), are built for ``image_size`` and reject a non-None ``width``.

Model-specific options: ``dropout`` (``wrn16_8``, ``wrn28_8``); ``pretrained_path`` and ``drop_path_rate``
(``swin_t``, ``deit_s``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from mixbench.models.base import StagedNet, StageUnavailableError
from mixbench.models.preact_resnet import preact_resnet18
from mixbench.models.resnet import resnet18_cifar, resnet50, resnext50_32x4d_cifar
from mixbench.models.timm_models import deit_s, swin_t
from mixbench.models.wide_resnet import wrn16_8, wrn28_8

__all__ = ["MODELS", "StageUnavailableError", "StagedNet", "build_model"]

MODELS: dict[str, Callable[..., StagedNet]] = {
    "r18": preact_resnet18,
    "wrn16_8": wrn16_8,
    "wrn28_8": wrn28_8,
    "resnet18": resnet18_cifar,
    "rx50": resnext50_32x4d_cifar,
    "resnet50": resnet50,
    "swin_t": swin_t,
    "deit_s": deit_s,
}

_COMMON_ARGUMENTS = ("num_classes", "image_size", "width")


def _check_options(name: str, builder: Callable[..., StagedNet], options: dict[str, object]) -> None:
    accepted = [p for p in inspect.signature(builder).parameters if p not in _COMMON_ARGUMENTS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} does not take option(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(accepted) or 'none'}")


def build_model(name: str, num_classes: int, image_size: int, width: int | None = None,
                **options: object) -> StagedNet:
    """Build the registered model ``name`` with a ``num_classes``-way head for ``image_size`` px inputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    builder = MODELS[name]
    _check_options(name, builder, options)
    model = builder(num_classes=num_classes, image_size=image_size, width=width, **options)
    model.name = name
    return model
