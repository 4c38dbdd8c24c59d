"""Train one configuration, or a grid with -m.

    python tools/train.py method=mixup model=r18 data=cifar100
    python tools/train.py method=mixup model=r18 data=cifar100 --cfg job      # print the composed config
    python tools/train.py -m experiment=quickstart                             # a grid (Hydra multirun)

Re-running a command resumes its run from the last checkpoint, or skips it when it is complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mixbench.cli import check_overrides, fail
from mixbench.config import ConfigError
from mixbench.data import DatasetMissingError
from mixbench.engine.trainer import RunFailed, RunInterrupted, train
from mixbench.rundir import RunDirectoryError
from mixbench.runlock import RunLockedError
from mixbench.sweep import FAILED_JOBS


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        with interrupted_by_signals():
            train(cfg)
    except (KeyboardInterrupt, RunInterrupted) as interruption:
        cause = str(interruption) or "Ctrl-C"
        code = 128 + int(signal.Signals.__members__.get(cause, signal.SIGINT))
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for all
            message = f"interrupted by {cause}; the same command resumes the run from its last checkpoint"
            print(f"error: {message}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # The run's files are written (summary marked interrupted, checkpoint of the last epoch); skipping the
        # interpreter's teardown (seconds with torch loaded) frees the device at once, as a scheduler expects.
        os._exit(code)
    except (ConfigError, DatasetMissingError, RunDirectoryError, RunFailed, RunLockedError) as error:
        if _in_process_sweep():  # report, and let the other jobs of the grid run
            print(f"error: {error}", file=sys.stderr, flush=True)
            FAILED_JOBS.append(" ".join(HydraConfig.get().overrides.task))
            return
        fail(str(error), code=1 if isinstance(error, RunFailed) else 2)


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM (Slurm, ``timeout``, ``kill``, a sweep's parent) and SIGHUP end the run like Ctrl-C: it is
    marked ``interrupted`` and the process exits with one line.  The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: object) -> None:
        raise RunInterrupted(signal.Signals(number).name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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
