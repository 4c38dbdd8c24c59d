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

import math
import os
import re
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
    _check_finite(cfg)
    _check_runtime(cfg)
    check_method_values(cfg.method, prefix="method")
    _check_data(cfg.data, cfg.schedule)
    _check_schedule(cfg.schedule)
    check_ema(cfg.get("ema"))
    if cfg.schedule.get("requires_pretrained") and not cfg.model.get("pretrained_path"):
        raise ConfigError(
            f"schedule {cfg.schedule.name} fine-tunes ImageNet weights: set model.pretrained_path=<a local "
            f"torchvision weights file for {cfg.model.name}> (nothing is downloaded), "
            "or pick another schedule"
        )


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_integer(key: str, value: Any, minimum: int, meaning: str) -> None:
    if not _is_integer(value) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum} ({meaning}), got {value!r}")


def _require_number(key: str, value: Any, low: float, high: float | None = None, meaning: str = "") -> None:
    """Refuse ``value`` unless it is finite, ``>= low`` and, when ``high`` is given, ``< high``."""
    bounds = f">= {low}" if high is None else f"in [{low}, {high})"
    if not _is_number(value) or value < low or (high is not None and value >= high):
        extra = f" ({meaning})" if meaning else ""
        raise ConfigError(f"{key} must be a finite number {bounds}{extra}, got {value!r}")


def _check_finite(cfg: DictConfig) -> None:
    """No NaN or infinity anywhere in the four groups (a NaN lr or alpha would train to a NaN loss)."""
    for group in GROUPS:
        for key, value in _flat(OmegaConf.to_container(cfg[group], resolve=True), group):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value}")


def _flat(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        return [item for key, value in tree.items() for item in _flat(value, f"{prefix}.{key}")]
    if isinstance(tree, list):
        return [item for index, value in enumerate(tree) for item in _flat(value, f"{prefix}[{index}]")]
    return [(prefix, tree)]


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# torch.compile's modes; "default" passes none.  reduce-overhead and max-autotune replay CUDA graphs.  "auto"
# is resolved by mixbench.engine.runtime.resolve_compile_mode (reduce-overhead on one CUDA device).
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile_mode(mode: Any) -> None:
    """Refuse a ``compile_mode`` that is not one of :data:`COMPILE_MODES`, naming the valid ones."""
    if not isinstance(mode, str) or mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode={mode!r} is not one of {', '.join(COMPILE_MODES)}")


def _check_runtime(cfg: DictConfig) -> None:
    """The root's runtime values: types and ranges (seed 1.5 would train as seed 1 in a folder seed1.5)."""
    _require_integer("seed", cfg.get("seed"), 0, "the run's random seed")
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.match(device):
        raise ConfigError(f"device={device!r} is not a device; use auto, cpu, cuda or cuda:N")
    choices = {"precision": ("auto", "bf16", "fp32"), "channels_last": ("auto", True, False)}
    choices["progress"] = ("auto", True, False)
    for key, valid in choices.items():
        if key in cfg and cfg[key] not in valid:
            names = ", ".join(str(v).lower() for v in valid)
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {names}")
    for key in ("compile", "force", "sync_bn"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if "compile_mode" in cfg:
        check_compile_mode(cfg.compile_mode)
    if "num_workers" in cfg:
        _require_integer("num_workers", cfg.num_workers, 0, "DataLoader worker processes")
    if "eval_batch_size" in cfg:
        _require_integer("eval_batch_size", cfg.eval_batch_size, 1, "images per evaluation batch")


MIN_IMAGE_SIZE = 8  # the CIFAR networks halve the resolution three times


def _check_data(data: DictConfig, schedule: DictConfig) -> None:
    _require_integer("data.num_classes", data.get("num_classes"), 2, "classes of the dataset")
    _require_integer(
        "data.image_size", data.get("image_size"), MIN_IMAGE_SIZE, "the side of the images in px"
    )
    if schedule.get("train_size") is not None:
        _require_integer(
            "schedule.train_size", schedule.train_size, MIN_IMAGE_SIZE, "training resolution in px"
        )
    for key in ("mean", "std"):
        values = data.get(key)
        if values is not None and (len(values) != 3 or not all(_is_number(v) for v in values)):
            raise ConfigError(f"data.{key} must be three finite numbers (R, G, B), got {list(values)}")
    if data.get("std") is not None and any(v <= 0 for v in data.std):
        raise ConfigError(f"data.std must be positive, got {list(data.std)}")


def check_method_values(method: Mapping[str, Any], prefix: str) -> None:
    """Refuse a non-positive or non-finite ``alpha`` (or ``*_alpha``) and a ``*prob`` outside [0, 1];
    ``prefix`` is the config key of ``method`` in the message (``method``, ``method.options.cutmix``)."""
    for key, value in method.items():
        if key == "alpha" or str(key).endswith("_alpha"):
            if not _is_number(value) or value <= 0:
                raise ConfigError(
                    f"{prefix}.{key} must be a positive number (Beta(alpha, alpha)), got {value}"
                )
        if str(key).endswith("prob") and isinstance(value, (int, float)) and not 0 <= value <= 1:
            raise ConfigError(f"{prefix}.{key} must lie in [0, 1], got {value}")


def _check_schedule(schedule: DictConfig) -> None:
    epochs, window, batch = schedule.epochs, schedule.metric_window, schedule.batch_size
    if not _is_integer(batch) or batch < 2:
        raise ConfigError(f"schedule.batch_size must be at least 2 (mixing pairs samples), got {batch}")
    if not _is_integer(window) or window < 1:
        raise ConfigError(f"schedule.metric_window must be a positive number of epochs, got {window}")
    if not _is_integer(epochs) or epochs < window:
        raise ConfigError(
            f"schedule.epochs={epochs} is below the metric window of {window} epochs (median of the last "
            f"{window}); raise schedule.epochs or lower schedule.metric_window"
        )
    optimizer = schedule.optimizer
    if optimizer.name not in ("sgd", "adamw"):
        raise ConfigError(f"unknown schedule.optimizer.name '{optimizer.name}'; valid: sgd, adamw")
    if not _is_number(optimizer.lr) or optimizer.lr <= 0:
        raise ConfigError(f"schedule.optimizer.lr must be a positive finite number, got {optimizer.lr}")
    _require_number("schedule.optimizer.weight_decay", optimizer.get("weight_decay", 0.0), 0.0)
    if optimizer.name == "sgd":
        _require_number("schedule.optimizer.momentum", optimizer.get("momentum", 0.0), 0.0, 1.0)
    _require_number("schedule.label_smoothing", schedule.get("label_smoothing", 0.0), 0.0, 1.0)
    clip = schedule.get("grad_clip")
    if clip is not None and (not _is_number(clip) or clip <= 0):
        raise ConfigError(f"schedule.grad_clip must be null or a positive number, got {clip!r}")
    lr_schedule = schedule.lr_schedule
    if lr_schedule.name not in ("step", "cosine"):
        raise ConfigError(f"unknown schedule.lr_schedule.name '{lr_schedule.name}'; valid: step, cosine")
    warmup = lr_schedule.get("warmup_epochs", 0)
    if not _is_integer(warmup) or not 0 <= warmup < epochs:
        raise ConfigError(
            f"schedule.lr_schedule.warmup_epochs must be an integer in [0, {epochs}), got {warmup!r}"
        )
    for key in ("warmup_lr", "min_lr"):
        _require_number(f"schedule.lr_schedule.{key}", lr_schedule.get(key, 0.0), 0.0)
    milestones = lr_schedule.get("milestones") or []
    if lr_schedule.name == "step" and not all(_is_integer(m) and 0 < m for m in milestones):
        raise ConfigError(f"schedule.lr_schedule.milestones must be positive epochs, got {list(milestones)}")


EMA_KEYS = ("momentum", "end_momentum", "constant_fraction")  # the root key ema (mixbench.engine.model_ema)
EMA_FORM = "ema={momentum:0.999,end_momentum:0.999999,constant_fraction:0.1} (AutoMix's teacher schedule)"


def check_ema(ema: Any) -> None:
    """The root key ``ema``: null (no EMA copy of the model) or a schedule with exactly :data:`EMA_KEYS`,
    ``0 <= momentum <= end_momentum <= 1`` and ``0 <= constant_fraction <= 1``.  All three are required so
    that one schedule has one spelling, hence one run identity."""
    if ema is None:
        return
    if not isinstance(ema, Mapping) or set(ema) != set(EMA_KEYS):
        given = sorted(ema) if isinstance(ema, Mapping) else repr(ema)
        raise ConfigError(f"ema must be null or name {', '.join(EMA_KEYS)} (got {given}), e.g. {EMA_FORM}")
    for key in EMA_KEYS:
        _require_number(f"ema.{key}", ema[key], 0.0, meaning="an EMA momentum or a share of the steps")
    if not ema["momentum"] <= ema["end_momentum"] <= 1.0 or ema["constant_fraction"] > 1.0:
        raise ConfigError(
            "ema needs momentum <= end_momentum <= 1 and constant_fraction <= 1, got "
            f"{ema['momentum']}, {ema['end_momentum']}, {ema['constant_fraction']}"
        )


def check_writable_folder(path: str | Path, key: str) -> None:
    """Refuse, before anything is built, a folder that cannot be made or written (``runs_root=`` under a
    file, in a read-only place): found only when the first file is written otherwise, minutes later."""
    folder = Path(path).expanduser().absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be made: {existing} is a file; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}={path} cannot be written: {existing} is read-only for you; choose another folder"
        )


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
