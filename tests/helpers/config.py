"""Composing configs with Hydra's compose API as ``tools/train.py`` does, a tiny training setup, and running
the command-line tools in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mixbench.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``tools/train.py`` would see for these command-line overrides."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_overrides(runs_root: Path, epochs: int = 3, window: int = 2) -> list[str]:
    """The quickstart shrunk to seconds: digits at 8 px, PreActResNet18 of width 4."""
    return [
        "experiment=quickstart",
        f"runs_root={runs_root}",
        "model.width=4",
        "data.image_size=8",
        f"schedule.epochs={epochs}",
        f"schedule.metric_window={window}",
        "progress=false",
        "device=cpu",
    ]


def run_cli(arguments: list[str], cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tools/train.py <arguments>`` in a fresh process; returns the completed process.

    The process sees no GPU and, unless this one's environment says otherwise, uses one thread (tiny runs:
    more threads only spin).  To run a tool without a fresh interpreter, see ``tests/helpers/tools.py``."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "CUDA_VISIBLE_DEVICES": "", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
