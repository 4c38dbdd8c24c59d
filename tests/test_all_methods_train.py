"""Every registered method trains on the embedded dataset: finite losses and accuracy above chance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mixbench.engine.trainer import train
from mixbench.methods import METHODS
from mixbench.rundir import run_directory
from tests.helpers import compose_config

NEEDS_EXTERNAL_WEIGHTS = {
    name for name, cls in METHODS.items() if getattr(cls, "needs_external_weights", False)
}
TRAINABLE = sorted(set(METHODS) - NEEDS_EXTERNAL_WEIGHTS)
CHANCE = 10.0  # digits: 10 balanced classes


@pytest.mark.slow
@pytest.mark.parametrize("method", TRAINABLE)
def test_a_short_run_learns_without_nan(method: str, tmp_path: Path) -> None:
    overrides = [
        "experiment=quickstart",
        f"runs_root={tmp_path}",
        f"method={method}",
        "model.width=8",
        "schedule.epochs=4",
        "schedule.metric_window=1",
        "progress=false",
        "device=cpu",
    ]
    cfg = compose_config(overrides)
    summary = train(cfg)
    history = [json.loads(line) for line in (run_directory(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "complete"
    assert all(math.isfinite(record["train_loss"]) for record in history)
    assert history[-1]["top1"] > 2 * CHANCE, f"{method} reached only {history[-1]['top1']:.1f}% top-1"
    for label in summary["evaluated"]:
        if label != "online":  # an EMA network (momentum 0.999) barely leaves its initialisation in 4 epochs
            assert 0.0 <= history[-1][f"{label}_top1"] <= 100.0
            assert summary[f"{label}_last_top1"] == history[-1][f"{label}_top1"]
