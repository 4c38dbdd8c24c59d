"""Opening the tracker a run's ``logger`` config names (the plugins are imported only when opened, so their
packages stay optional)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixbench.trackers.base import Tracker, check_tracker_available

# logger name -> (module, class) of its Tracker; imported only when opened, so the packages stay optional.
_TRACKERS: dict[str, tuple[str, str]] = {
    "none": ("mixbench.trackers.base", "NoneTracker"),
    "tensorboard": ("mixbench.trackers.tensorboard", "TensorBoardTracker"),
    "wandb": ("mixbench.trackers.wandb", "WandbTracker"),
    "mlflow": ("mixbench.trackers.mlflow", "MlflowTracker"),
}


def open_tracker(
    logger_cfg: Mapping[str, Any],
    folder: Path,
    config: Mapping[str, Any],
    start_epoch: int = 0,
    run_name: str = "",
) -> Tracker:
    """The tracker ``logger_cfg["name"]`` names, opened on ``folder`` (arguments: see :class:`Tracker`)."""
    check_tracker_available(logger_cfg)
    module, cls = _TRACKERS[str(logger_cfg.get("name", "none"))]
    tracker_class = getattr(importlib.import_module(module), cls)
    return tracker_class(logger_cfg, Path(folder), config, start_epoch, run_name)
