"""Train one configuration, or a grid with -m.

    python tools/train.py method=mixup model=r18 data=cifar100
    python tools/train.py method=mixup model=r18 data=cifar100 --cfg job      # print the composed config
    python tools/train.py -m experiment=quickstart                             # a grid (Hydra multirun)

Re-running a command resumes its run from the last checkpoint, or skips it when it is complete.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mixbench.cli import check_overrides, fail
from mixbench.config import ConfigError
from mixbench.data import DatasetMissingError
from mixbench.engine.trainer import RunFailed, train
from mixbench.rundir import RunDirectoryError
from mixbench.sweep import FAILED_JOBS


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (ConfigError, DatasetMissingError, RunDirectoryError, RunFailed) as error:
        if _in_process_sweep():  # report, and let the other jobs of the grid run
            print(f"error: {error}", file=sys.stderr, flush=True)
            FAILED_JOBS.append(" ".join(HydraConfig.get().overrides.task))
            return
        fail(str(error), code=1 if isinstance(error, RunFailed) else 2)


def _in_process_sweep() -> bool:
    """A grid run job after job in this process (Hydra's basic launcher): a failure must not end the grid.

    Under other launchers (the GPU pool, Slurm) each job is its own process and fails with its exit code."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and str(hydra_cfg.launcher.get("_target_", "")).endswith(
        "BasicLauncher"
    )


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as error:
        fail(str(error))
    main()
    if FAILED_JOBS:
        fail(f"{len(FAILED_JOBS)} job(s) of the sweep failed: " + "; ".join(FAILED_JOBS), code=1)
