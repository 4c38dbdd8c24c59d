"""Checks of a composed config, made before anything runs, and the location of the config tree.

Every check raises :class:`ConfigError` with one line naming the problem and the fix; ``tools/train.py``
prints it and exits non-zero before a run directory is made.

This module imports nothing of mixbench: it is what every tool loads first, before anything heavy, and what
the methods, models and data may use without an import cycle.  So it checks values only; the checks that
need the registries (a data, model or method name with a config file but no implementation, the augment
policy) are made where the objects are built (:func:`mixbench.engine.build.check_registered`, called by the
command line's early check and by ``build_model_and_method``; the data builder refuses an unknown dataset
or policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("data", "model", "method", "schedule")
SELECTABLE_GROUPS = (*GROUPS, "experiment")


class ConfigError(ValueError):
    """An invalid configuration; the message is one line with the fix."""


def group_options(group: str) -> list[str]:
    """The config names available in ``configs/<group>/``."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def check_group_choice(group: str, choice: str) -> None:
    """Refuse a ``group=choice`` override naming no file of ``configs/<group>/``, listing the valid ones."""
    options = group_options(group)
    if choice not in options:
        raise ConfigError(f"unknown {group} '{choice}'; valid: {', '.join(options)}")


def validate(cfg: DictConfig) -> None:
    """Checks of the values of ``cfg`` that need no registry (see the module docstring for the others)."""
    for group in GROUPS:
        if group not in cfg or "name" not in cfg[group]:
            raise ConfigError(f"the config has no {group}; select one with {group}=<name>")
    check_method_values(cfg.method, prefix="method")
    _check_schedule(cfg.schedule)
    if cfg.schedule.get("requires_pretrained") and not cfg.model.get("pretrained_path"):
        raise ConfigError(
            f"schedule {cfg.schedule.name} fine-tunes ImageNet weights: set model.pretrained_path=<a local "
            f"torchvision weights file for {cfg.model.name}> (nothing is downloaded), "
            "or pick another schedule"
        )
    if cfg.data.num_classes < 2:
        raise ConfigError(f"data.num_classes must be at least 2, got {cfg.data.num_classes}")


def check_method_values(method: Mapping[str, Any], prefix: str) -> None:
    """Refuse a non-positive ``alpha`` (or ``*_alpha``) and a ``*prob`` outside [0, 1]; ``prefix`` is the
    config key of ``method`` in the message (``method``, ``method.options.cutmix``)."""
    for key, value in method.items():
        if key == "alpha" or str(key).endswith("_alpha"):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(
                    f"{prefix}.{key} must be a positive number (Beta(alpha, alpha)), got {value}"
                )
        if key.endswith("prob") and isinstance(value, (int, float)) and not 0 <= value <= 1:
            raise ConfigError(f"{prefix}.{key} must lie in [0, 1], got {value}")


def _check_schedule(schedule: DictConfig) -> None:
    epochs, window, batch = schedule.epochs, schedule.metric_window, schedule.batch_size
    if not isinstance(batch, int) or batch < 2:
        raise ConfigError(f"schedule.batch_size must be at least 2 (mixing pairs samples), got {batch}")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"schedule.metric_window must be a positive number of epochs, got {window}")
    if not isinstance(epochs, int) or epochs < window:
        raise ConfigError(
            f"schedule.epochs={epochs} is below the metric window of {window} epochs (median of the last "
            f"{window}); raise schedule.epochs or lower schedule.metric_window"
        )
    optimizer = schedule.optimizer
    if optimizer.name not in ("sgd", "adamw"):
        raise ConfigError(f"unknown schedule.optimizer.name '{optimizer.name}'; valid: sgd, adamw")
    if optimizer.lr <= 0:
        raise ConfigError(f"schedule.optimizer.lr must be positive, got {optimizer.lr}")
    if schedule.lr_schedule.name not in ("step", "cosine"):
        raise ConfigError(
            f"unknown schedule.lr_schedule.name '{schedule.lr_schedule.name}'; valid: step, cosine"
        )


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
