"""A trained run loaded for evaluation: its networks with their weights, its config and runtime.

Made by :func:`mixbench.evaluation.runner.load_run` (or ``runner.runtime_only`` for the cost suite, which
reads no weights) and read by every suite of :mod:`mixbench.evaluation.suites`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, open_dict

from mixbench.engine.build import input_size
from mixbench.engine.runtime import Runtime
from mixbench.evaluation.attacks import NormalizedModel
from mixbench.rundir import RunDirectory


@dataclass
class LoadedRun:
    """A run's networks with their weights loaded, and what the suites need to know about it."""

    run_dir: RunDirectory
    cfg: DictConfig  # the run's config.yaml, with this command's data root
    runtime: Runtime
    networks: dict[str, NormalizedModel]  # label ("online", "ema") -> classifier of images in [0, 1]
    weights: dict[str, Any]  # {"which", "file", "epoch"}
    num_workers: int

    @property
    def data_cfg(self) -> DictConfig:
        return self.cfg.data

    @property
    def dataset(self) -> str:
        return str(self.cfg.data.name)

    @property
    def model_name(self) -> str:
        return str(self.cfg.model.name)

    @property
    def image_size(self) -> int:
        return input_size(self.cfg)

    @property
    def title(self) -> str:
        return f"{self.cfg.method.name} / {self.cfg.model.name} / {self.cfg.data.name} / seed {self.cfg.seed}"

    def training_config(self, batch_size: int | None = None) -> DictConfig:
        """The run's config for timing its training step (the cost suite), optionally at another batch."""
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            if batch_size is not None:
                cfg.schedule.batch_size = int(batch_size)
            cfg.device = str(self.runtime.device)
            cfg.precision = self.runtime.precision
            cfg.channels_last = self.runtime.channels_last
            cfg.compile = False
        return cfg
