"""Objects of a run built from its config: the model and the method, placed on the run's device.

Used by the trainer, the benchmark and the tools alike, so that ``model=``, ``method=`` and their options
mean the same everywhere.  Every problem is a :class:`~mixbench.config.ConfigError` of one line.  The
config's checks that need the registries live here (:func:`check_registered`), not in
:mod:`mixbench.config`, which imports none.  :func:`prepare_method` readies a method for a training loop of
one's own (the Python API).
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from mixbench.config import ConfigError, to_plain
from mixbench.data import DATASETS, check_augment
from mixbench.engine.distributed import convert_sync_batchnorm, launch_from_environment
from mixbench.engine.method_config import build_method_from_config
from mixbench.engine.model_ema import ModelEma
from mixbench.engine.runtime import Runtime
from mixbench.methods import METHODS, MixMethod
from mixbench.models import MODELS, StagedNet, StageUnavailableError, build_model
from mixbench.rng import MixRandom


def check_registered(cfg: DictConfig) -> None:
    """Refuse (one line) a config whose data, model or method has a config file but no implementation
    registered in code, or whose ``schedule.augment`` names no policy: the checks of a composed config that
    need the registries (:func:`mixbench.config.validate` makes the others)."""
    for group, registry in (("data", DATASETS), ("model", MODELS), ("method", METHODS)):
        name = cfg[group].name
        if name not in registry:
            raise ConfigError(f"unknown {group} '{name}'; valid: {', '.join(sorted(registry))}")
    check_augment(cfg.schedule.augment)


def input_size(cfg: DictConfig) -> int:
    """The training resolution: the schedule's ``train_size`` where it sets one, else the data's image
    size."""
    return int(cfg.schedule.train_size or cfg.data.image_size)


def build_model_and_method(cfg: DictConfig, runtime: Runtime) -> tuple[nn.Module, MixMethod]:
    """The model on the run's device (in its memory format) and the method set up for it (with the model's EMA
    copy when the root ``ema`` is set: :func:`with_model_ema`); refuses what :func:`check_registered` refuses,
    and a method (a composite's children included) whose options or values are wrong or that cannot run on
    the model."""
    check_registered(cfg)
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
    try:
        method = build_method_from_config(cfg.method)
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
    method = with_model_ema(method, model, cfg.get("ema"))
    method = method.to(runtime.device)
    return model, method


def with_model_ema(method: MixMethod, model: nn.Module, schedule: DictConfig | None) -> MixMethod:
    """``method`` itself, or, when the config's root ``ema`` gives a schedule, ``method`` wrapped with an EMA
    copy of ``model`` evaluated as ``ema`` (:mod:`mixbench.engine.model_ema`); ``method`` is already set up.
    Refuses (one line) a method that keeps its own EMA teacher or evaluates another network than the
    model."""
    if schedule is None:
        return method
    wrapped = ModelEma(method, **to_plain(schedule))
    try:
        wrapped.attach(model)
    except ValueError as error:
        raise ConfigError(f"ema: {error}") from error
    return wrapped


def prepare_method(
    method: MixMethod,
    model: StagedNet,
    num_classes: int,
    *,
    seed: int = 0,
    total_steps: int = 1,
    label_smoothing: float = 0.0,
) -> MixMethod:
    """``method`` made ready to train ``model`` in a loop of one's own, and returned.

    Refuses (``StageUnavailableError``, one line) a model the method cannot run on; sets the method up for
    the model (its own networks: an EMA copy, a Mix Block, an uncertainty head), on the model's device; binds
    it to a generator seeded with ``seed`` (all its draws come from it: the same seed gives the same mixed
    batches), ``total_steps`` (the optimizer steps planned: EMA momentum schedules follow them) and the
    label smoothing of its losses.  The method's own trainable parameters are ``method.param_groups(lr,
    weight_decay)``: add them to the optimizer.
    """
    method.check_model(model)
    method.setup(model, num_classes)
    device = next(model.parameters()).device
    method.to(device)
    method.bind(MixRandom(seed, device), label_smoothing=label_smoothing, total_steps=total_steps)
    return method
