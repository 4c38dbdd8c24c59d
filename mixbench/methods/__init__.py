"""Mixing methods by name.  Adding a method: one file here, one entry in ``METHODS``, one config in
``configs/method/``."""

from __future__ import annotations

from typing import Any

from mixbench.methods.base import InputMixMethod, MixedBatch, MixMethod, mixed_cross_entropy
from mixbench.methods.cutmix import CutMix
from mixbench.methods.manifoldmix import ManifoldMix
from mixbench.methods.mixup import Mixup
from mixbench.methods.vanilla import Vanilla

METHODS: dict[str, type[MixMethod]] = {
    cls.name: cls for cls in (Vanilla, Mixup, CutMix, ManifoldMix)
}


def build_method(name: str, **options: Any) -> MixMethod:
    """The method ``name`` built with the options of its config (everything but ``name``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](**options)


__all__ = ["METHODS", "build_method", "MixMethod", "InputMixMethod", "MixedBatch", "mixed_cross_entropy"]
