"""Mixing methods by name.

Adding a method: one file in this package whose class is decorated with ``@register_method`` (every module
here is imported, so nothing else needs editing), and its defaults as a config of the ``method`` group
(``configs/method/<name>``; see the README).  Methods never read configs: the engine and
:func:`mixbench.build_method` turn names and options into methods, composite ones (``switch``, ``sumix``)
included, whose children they build and hand over (:mod:`mixbench.engine.method_config`).
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


def build_method(name: str, **arguments: Any) -> MixMethod:
    """The registered method ``name``'s class called with ``arguments``, its constructor's keyword arguments.

    A composite method takes methods already built (``build_method("switch", methods=[Mixup(), CutMix()])``);
    to name its children instead (``choices=[...]``, ``base=...``), with every option checked in one line,
    use :func:`mixbench.build_method`.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](**arguments)


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
