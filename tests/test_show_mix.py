"""tools/show_mix.py draws a method's mix into a PNG; the samples cover distinct classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR
from mixbench.data import load_split
from mixbench.report.gallery import pick_samples
from tests.helpers import REPO
from tests.helpers.tools import run_tool


def test_pick_samples_takes_one_image_per_class_first() -> None:
    data_cfg = OmegaConf.load(CONFIG_DIR / "data" / "digits.yaml")
    split = load_split(data_cfg, "test")
    x, y = pick_samples(split, data_cfg, 12, torch.device("cpu"))
    assert x.shape == (12, 3, 16, 16) and x.dtype == torch.float32
    assert sorted(y[:10].tolist()) == list(range(10))


def test_cli_writes_a_png_for_a_method(tmp_path: Path) -> None:
    """``python tools/show_mix.py`` run in this process (tests/helpers/tools.py)."""
    out = tmp_path / "cutmix.png"
    result = run_tool("show_mix", ["method=cutmix", "samples=4", f"out={out}", "checkpoint=null"])
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    """A real ``python tools/show_mix.py`` process: its one line is all a fresh interpreter prints."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "show_mix.py"),
            "method=mixup",
            f"checkpoint={tmp_path}/none.pt",
            f"out={tmp_path}/x.png",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "x.png").exists()
