"""The controls table (mixbench.report.controls, ``tools/table.py --controls``) on fake run directories.

Per published cell: the paper's number, ours as published (the cell's configuration: AutoMix at min_lr 0.05
with its EMA teacher; the baselines' online net) and ours under the controls (the baseline with an EMA copy of
the model, ``ema=``; AutoMix annealed to min_lr 0), each matched by run identity and never mixed up.
"""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR
from mixbench.report.controls import MIN_LR_0, build_controls_table, controls_to_csv, controls_to_markdown
from tests.helpers import compose_config
from tests.helpers.tools import run_tool
from tests.test_tables import OPENMIXUP, cell_config, curve, folders_of, write_run

COLUMN = "cifar100/resnet18"
SCHEDULE = {"momentum": 0.999, "end_momentum": 0.999999, "constant_fraction": 0.1}
EMA_CONTROL = "ema 0.999 -> 0.999999 after 10%"


def with_ema(config: dict[str, Any]) -> dict[str, Any]:
    return {**copy.deepcopy(config), "ema": dict(SCHEDULE)}


def with_min_lr_zero(config: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["schedule"]["lr_schedule"]["min_lr"] = 0.0
    return changed


def write_configuration(
    root: Path, config: dict[str, Any], medians: list[float], ema: list[float] | None = None
):
    """One fake run per seed of ``config`` under ``root``: online (and EMA) medians of the last 10 epochs."""
    for seed, median in enumerate(medians):
        ema_top1 = curve(ema[seed], ema[seed]) if ema is not None else None
        write_run(root, folders_of(config), seed, curve(median, median), ema_top1=ema_top1, config=config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As published: vanilla (2 seeds), AutoMix (min_lr 0.05, online and EMA).  Controls: vanilla and mixup
    with the EMA copy, AutoMix at min_lr 0.  Each configuration in a runs root of its own, as the
    experiments keep them; a digits run that trains no cell."""
    root = tmp_path_factory.mktemp("controls")
    vanilla, automix = cell_config(OPENMIXUP, "vanilla", COLUMN), cell_config(OPENMIXUP, "automix", COLUMN)
    assert automix["schedule"]["lr_schedule"]["min_lr"] == 0.05 and vanilla["ema"] is None
    write_configuration(root / "openmixup_cifar100", vanilla, [78.0, 78.4])
    write_configuration(root / "openmixup_cifar100_learned", automix, [80.0], ema=[82.0])
    write_configuration(root / "controls_cifar100", with_ema(vanilla), [78.2, 78.2], ema=[79.0, 79.4])
    mixup = cell_config(OPENMIXUP, "mixup", COLUMN)
    write_configuration(root / "controls_cifar100", with_ema(mixup), [79.5], ema=[80.5])
    write_configuration(root / "controls_cifar100_learned", with_min_lr_zero(automix), [81.0], ema=[81.5])
    digits = {**vanilla, "data": {**vanilla["data"], "name": "digits"}}
    write_configuration(root / "quickstart", with_ema(digits), [96.0], ema=[95.0])
    return root


def test_each_cell_gets_its_published_number_ours_as_published_and_its_control(runs: Path) -> None:
    table = build_controls_table(runs)
    rows = {(row.cell.row, row.control): row for row in table.rows}
    assert sorted(rows) == [("automix", MIN_LR_0), ("mixup", EMA_CONTROL), ("vanilla", EMA_CONTROL)]
    vanilla = rows["vanilla", EMA_CONTROL]
    assert vanilla.published.value == 78.04 and vanilla.cell.column == COLUMN
    assert vanilla.compared("published") == pytest.approx((78.2, 0.2828427))
    assert vanilla.compared("published", "ema") == (None, None)  # the published baseline has no EMA
    assert vanilla.compared("control") == (78.2, 0.0)  # the copy leaves the online net as it was
    assert vanilla.compared("control", "ema") == pytest.approx((79.2, 0.2828427))
    assert (vanilla.seeds(vanilla.as_published), vanilla.seeds(vanilla.controls)) == (2, 2)
    automix = rows["automix", MIN_LR_0]
    assert automix.published.value == 82.04
    assert automix.compared("published") == (80.0, None) and automix.compared("published", "ema") == (
        82.0,
        None,
    )
    assert automix.compared("control") == (81.0, None) and automix.compared("control", "ema") == (81.5, None)
    mixup = rows["mixup", EMA_CONTROL]
    assert mixup.as_published == [] and mixup.compared("control", "ema") == (80.5, None)


def test_the_markdown_and_csv_put_them_side_by_side(runs: Path) -> None:
    table = build_controls_table(runs)
    text = controls_to_markdown(table)
    line = next(line for line in text.splitlines() if line.startswith("| vanilla · cifar100/resnet18"))
    assert [cell.strip() for cell in line.strip("|").split("|")] == [
        "vanilla · cifar100/resnet18",
        "78.04",
        "78.20 ± 0.28",
        "—",
        EMA_CONTROL,
        "78.20 ± 0.00",
        "79.20 ± 0.28",
        "2 / 2",
        "",
    ]
    assert "min_lr 0.05" in text and "Hardware: cpu, fp32." in text
    lines = list(csv.DictReader(io.StringIO(controls_to_csv(table))))
    automix = next(line for line in lines if line["row"] == "automix")
    assert automix["control"] == MIN_LR_0 and float(automix["as_published_ema_mean"]) == 82.0
    assert float(automix["control_online_mean"]) == 81.0 and automix["as_published_online_std"] == ""


def test_tools_table_controls_prints_and_writes_the_table(runs: Path, tmp_path: Path) -> None:
    result = run_tool("table", [str(runs), "--controls", "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert "| automix · cifar100/resnet18 | 82.04 | 80.00 | 82.00 | min_lr 0 | 81.00 | 81.50 | 1 / 1 |" in (
        result.stdout
    )
    written = tmp_path / "openmixup_cifar100_tiny_cub_controls.md"
    assert written.read_text() == result.stdout and (written.with_suffix(".csv")).is_file()
    refused = run_tool("table", [str(runs), "--controls", "--latex", "--out", str(tmp_path)])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--controls" in refused.stderr


def test_runs_that_train_no_cell_give_an_empty_table_that_says_so(tmp_path: Path) -> None:
    digits = cell_config(OPENMIXUP, "vanilla", COLUMN)
    digits["data"] = {**digits["data"], "name": "digits"}
    write_configuration(tmp_path, with_ema(digits), [96.0], ema=[95.0])
    table = build_controls_table(tmp_path)
    assert table.rows == [] and table.notes[0].startswith(f"No run under {tmp_path} trains a top-1 cell")


@pytest.mark.parametrize(
    ("experiment", "methods"),
    [
        ("controls_cifar100", ["vanilla", "mixup", "automix", "adautomix"]),
        ("controls_cifar100_cutmix", [None]),
    ],
)
def test_every_job_of_the_controls_experiments_is_a_control_of_a_published_cell(
    experiment: str, methods: list[str | None], tmp_path: Path
) -> None:
    """Composed as tools/train.py composes each job: the baselines carry the EMA copy under the teacher's
    schedule, the learned methods none and min_lr 0; each lands in the controls column of its cell."""
    sweep = yaml.safe_load((CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text())["hydra"]["sweeper"]
    assert sweep["params"].get("method", "cutmix").split(",") == [m or "cutmix" for m in methods]
    for method in methods:
        overrides = [f"experiment={experiment}", *([f"method={method}"] if method else [])]
        config = OmegaConf.to_container(compose_config(overrides), resolve=True)
        write_configuration(tmp_path / str(method), config, [70.0], ema=[71.0] if config["ema"] else None)
    rows = build_controls_table(tmp_path).rows
    found = {row.cell.row: row.control for row in rows if row.cell.column == COLUMN}
    expected = {
        method or "cutmix": MIN_LR_0 if method in ("automix", "adautomix") else EMA_CONTROL
        for method in methods
    }
    assert found == expected
    assert all(row.as_published == [] and row.seeds(row.controls) == 1 for row in rows)
