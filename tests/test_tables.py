"""The table tool: seeds aggregated per configuration, unfinished runs shown and never averaged in."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from mixbench.tables import collect_rows, to_csv, to_markdown
from tests.conftest import REPO


def _write_run(root: Path, method: str, seed: int, status: str, median: float | None, epochs_done: int = 20) -> None:
    run_dir = root / "digits" / "r18" / method / "digits_quick" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    summary = {
        "status": status, "data": "digits", "model": "r18", "method": method, "schedule": "digits_quick",
        "seed": seed, "epochs": 20, "epochs_done": epochs_done, "metric_window": 10, "evaluated": ["online"],
        "median_last10_top1": median, "best_top1": (median or 0) + 1, "last_top1": median,
        "device": "cpu", "precision": "fp32",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_rows_average_complete_seeds_only_and_list_the_others(tmp_path: Path) -> None:
    _write_run(tmp_path, "mixup", 0, "complete", 90.0)
    _write_run(tmp_path, "mixup", 1, "complete", 94.0)
    _write_run(tmp_path, "mixup", 2, "failed", None, epochs_done=3)
    _write_run(tmp_path, "vanilla", 0, "running", None, epochs_done=7)
    rows = {row.method: row for row in collect_rows(tmp_path)}
    mixup = rows["mixup"]
    assert mixup.medians == [90.0, 94.0]
    assert mixup.mean == pytest.approx(92.0) and mixup.std == pytest.approx(statistics.stdev([90.0, 94.0]))
    assert mixup.incomplete == ["seed2: failed 3/20"]
    assert rows["vanilla"].mean is None and rows["vanilla"].incomplete == ["seed0: running 7/20"]
    markdown = to_markdown(list(rows.values()))
    assert "92.00 ± 2.83" in markdown and "seed2: failed 3/20" in markdown and "seed0: running 7/20" in markdown
    assert markdown.index("| vanilla") < markdown.index("| mixup")  # baseline first
    assert "Hardware: cpu, fp32." in markdown
    assert "digits,r18,mixup,digits_quick,10,92.0,2.8284,2,93.0,92.0,seed2: failed 3/20\n" in to_csv(list(rows.values()))


def test_cli_writes_markdown_and_csv_and_refuses_an_empty_folder(tmp_path: Path) -> None:
    _write_run(tmp_path / "runs", "mixup", 0, "complete", 90.0)
    out = tmp_path / "tables" / "quick"
    tool = [sys.executable, str(REPO / "tools" / "table.py")]
    result = subprocess.run([*tool, str(tmp_path / "runs"), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| digits | r18 | mixup | digits_quick | 90.00 |" in result.stdout
    assert out.with_suffix(".md").read_text() == result.stdout and out.with_suffix(".csv").exists()
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([*tool, str(tmp_path / "empty")], capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no summary.json")
