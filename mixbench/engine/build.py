"""Objects of a run built from its config: the model and the method, placed on the run's device.

Used by the trainer, the benchmark and the tools alike, so that ``model=``, ``method=`` and their options
mean the same everywhere.  Every problem is a :class:`~mixbench.config.ConfigError` of one line.
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from mixbench.config import ConfigError, to_plain
from mixbench.engine.distributed import convert_sync_batchnorm, launch_from_environment
from mixbench.engine.runtime import Runtime
from mixbench.methods import MixMethod, build_method
from mixbench.models import StageUnavailableError, build_model


def input_size(cfg: DictConfig) -> int:
    """The training resolution: the schedule's ``train_size`` where it sets one, else the data's image size."""
    return int(cfg.schedule.train_size or cfg.data.image_size)


def build_model_and_method(cfg: DictConfig, runtime: Runtime) -> tuple[nn.Module, MixMethod]:
    """The model on the run's device (in its memory format) and the method set up for it."""
    model_options = {k: v for k, v in to_plain(cfg.model).items() if k not in ("name", "width")}
    try:
        model = build_model(
            cfg.model.name,
            num_classes=int(cfg.data.num_classes),
            image_size=input_size(cfg),
            width=cfg.model.width,
            **model_options,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"model {cfg.model.name}: {error}") from error
    method_options = {k: v for k, v in to_plain(cfg.method).items() if k != "name"}
    try:
        method = build_method(cfg.method.name, **method_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {cfg.method.name}: {error}") from error
    try:
        method.check_model(model)
    except StageUnavailableError as error:
        raise ConfigError(
            f"method {cfg.method.name} cannot run on model {cfg.model.name}: {error}; "
            "pick an input-space method (mixup, cutmix) or a CNN backbone"
        ) from error
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    if bool(cfg.get("sync_bn", False)) and launch_from_environment().distributed:
        model = convert_sync_batchnorm(
            model
        )  # before setup, so that EMA copies and hooks see the final layers
    method.setup(model, int(cfg.data.num_classes))
    method = method.to(runtime.device)
    return model, method
