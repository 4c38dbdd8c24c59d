"""Mixing methods by name.

Adding a method: one file in this package whose class is decorated with ``@register_method`` (every module
here is imported, so nothing else needs editing), and one config ``configs/method/<name>.yaml`` with the
paper's defaults.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from mixbench.methods.base import (
    InputMixMethod,
    MixedBatch,
    MixMethod,
    MixPreview,
    mixed_cross_entropy,
    soft_cross_entropy,
)
from mixbench.methods.registry import METHODS, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_method(name: str, **options: Any) -> MixMethod:
    """The method ``name`` built with the options of its config (everything but ``name``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


__all__ = [
    "METHODS",
    "build_method",
    "register_method",
    "MixMethod",
    "InputMixMethod",
    "MixedBatch",
    "MixPreview",
    "mixed_cross_entropy",
    "soft_cross_entropy",
]
