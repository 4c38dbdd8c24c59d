"""The table tool: seeds aggregated per configuration, unfinished runs shown and never averaged in, runs
matched to the published cells they reproduce (the one run identity of mixbench.rundir), error tables
converted, EMA networks in their own columns; and the generic Markdown / CSV / LaTeX renderers.

Run directories are faked in tmp_path (summary.json from mixbench.rundir.summary_scores, metrics.jsonl,
config.yaml composed with Hydra as tools/train.py would).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from mixbench.report import (
    build_table,
    collect_rows,
    published,
    read_runs,
    resolve_table_name,
    to_csv,
    to_latex,
    to_markdown,
)
from mixbench.report.render import csv_text, latex_escape, latex_tabular, markdown_table
from mixbench.rundir import RunDirectoryError, run_identity, summary_scores
from tests.helpers import REPO, compose_config

T1 = "alignmixup_cvpr22_t1"  # top-1 error, best epoch published
OPENMIXUP = "openmixup_cifar100_tiny_cub"  # top-1 accuracy, median of the last 10 published


def write_run(
    root: Path,
    folders: tuple[str, str, str, str],
    seed: int,
    top1: list[float],
    *,
    status: str = "complete",
    epochs: int | None = None,
    window: int = 10,
    ema_top1: list[float] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A run directory as the trainer leaves it: metrics.jsonl, summary.json and (optionally) config.yaml."""
    run_dir = root.joinpath(*folders, f"seed{seed}")
    run_dir.mkdir(parents=True)
    history = []
    for index, value in enumerate(top1):
        record = {
            "epoch": index + 1,
            "train_loss": 2.0 - index / 100,
            "top1": value,
            "test_loss": 1.0 - index / 200,
        }
        if ema_top1 is not None:
            record.update({"ema_top1": ema_top1[index], "ema_test_loss": 0.9})
        history.append(record)
    labels = ["", "ema"] if ema_top1 is not None else [""]
    summary = {
        "status": status,
        "data": folders[0].split(",")[0],
        "model": folders[1].split(",")[0],
        "method": folders[2].split(",")[0],
        "schedule": folders[3].split(",")[0],
        "seed": seed,
        "epochs": epochs or len(top1),
        "epochs_done": len(top1),
        "metric_window": window,
        "evaluated": [label or "online" for label in labels],
        **summary_scores(history, window, labels),
        "device": "cpu",
        "precision": "fp32",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in history))
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def curve(median: float, best: float, epochs: int = 20) -> list[float]:
    """A top-1 curve whose last-10 median is ``median`` and whose best epoch (early) is ``best``."""
    values = [50.0] * (epochs - 10) + [median] * 10
    values[3] = best
    return values


@cache
def _cell_config(table: str, row: str, column: str) -> str:
    cfg = compose_config(published.cell_overrides(published.cell(table, row, column)))
    return json.dumps(OmegaConf.to_container(cfg, resolve=True))


def cell_config(table: str, row: str, column: str, reference_table: str | None = None) -> dict[str, Any]:
    """The resolved config.yaml of a run trained for a published cell (as its experiment would set it)."""
    config = json.loads(_cell_config(table, row, column))
    config["reference_table"] = reference_table or table
    return config


def folders_of(config: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        config["data"]["name"],
        config["model"]["name"],
        config["method"]["name"],
        config["schedule"]["name"],
    )


QUICK = ("digits", "r18", "mixup", "digits_quick")


# ------------------------------------------------------------------------------------------ aggregation


def test_rows_average_complete_seeds_only_and_list_the_others(tmp_path: Path) -> None:
    write_run(tmp_path, QUICK, 0, curve(90.0, 91.0))
    write_run(tmp_path, QUICK, 1, curve(94.0, 95.0))
    write_run(tmp_path, QUICK, 2, [10.0, 20.0, 30.0], status="failed", epochs=20)
    write_run(
        tmp_path, ("digits", "r18", "vanilla", "digits_quick"), 0, [50.0] * 7, status="running", epochs=20
    )
    table = build_table(tmp_path)
    rows = {row.method: row for row in table.rows}
    mixup = rows["mixup"]
    assert mixup.medians == [90.0, 94.0] and mixup.seeds == 2
    assert mixup.mean == pytest.approx(92.0) and mixup.std == pytest.approx(statistics.stdev([90.0, 94.0]))
    assert mixup.incomplete == ["seed2: failed 3/20"]
    assert rows["vanilla"].mean is None and rows["vanilla"].seeds == 0
    assert rows["vanilla"].incomplete == ["seed0: running 7/20"]
    markdown = to_markdown(table)
    assert "| 92.00 ± 2.83 | 2 | 93.00 ± 2.83 | 92.00 ± 2.83 | seed2: failed 3/20 |" in markdown
    assert "| — | 0 | — | — | seed0: running 7/20 |" in markdown
    assert markdown.index("| vanilla") < markdown.index("| mixup")  # baseline first
    assert "Hardware: cpu, fp32." in markdown and "No published numbers" in markdown
    assert "Δ" not in markdown  # no published column when nothing is published
    line = next(line for line in to_csv(table).splitlines() if ",mixup," in line)
    assert line.startswith("digits,r18,mixup,digits_quick,10,92.0,2.8284,2,93.0,92.0,")
    assert line.endswith(",seed2: failed 3/20")


def test_one_run_directory_is_a_table_of_one_row(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, ("digits", "r18,width=16", "mixup", "digits_quick"), 0, curve(90.0, 91.0))
    (row,) = collect_rows(run_dir)
    assert (row.model, row.method, row.mean) == ("r18,width=16", "mixup", 90.0)


# ------------------------------------------------------------------------------------ published numbers


def test_runs_meet_the_published_cell_of_their_reference_table(tmp_path: Path) -> None:
    """AlignMixup T1 publishes top-1 error of the best epoch: shown as 100 - error, Δ against our best
    epoch."""
    config = cell_config(T1, "mixup", "cifar100/r18")
    for seed, (median, best) in enumerate([(78.0, 79.5), (78.4, 80.1)]):
        write_run(tmp_path, folders_of(config), seed, curve(median, best), config=config)
    (row,) = build_table(tmp_path).rows
    assert (row.published.cell.row, row.published.cell.column) == ("mixup", "cifar100/r18")
    assert row.published.raw == 20.21 and row.published_value == 79.79  # 100 - 20.21
    assert row.published.statistic == "best" and row.mean == pytest.approx(78.2)
    assert row.delta() == pytest.approx(statistics.fmean([79.5, 80.1]) - 79.79)
    markdown = to_markdown(build_table(tmp_path))
    assert "| 79.79 | +0.01 (best epoch) |" in markdown
    assert "Published as top-1 error; shown as accuracy = 100 - error." in markdown
    record = next(csv.DictReader(io.StringIO(to_csv(build_table(tmp_path)))))
    assert (record["table"], record["published"], record["published_raw"]) == (T1, "79.79", "20.21")
    assert (record["published_metric"], record["compared_statistic"], record["delta"]) == (
        "top1_err",
        "best",
        "0.01",
    )


def test_an_accuracy_table_compares_the_median_of_the_last_10(tmp_path: Path) -> None:
    config = cell_config(
        OPENMIXUP, "cutmix", "cifar100/rx50"
    )  # alpha 0.2 and weight decay 5e-4: options matter
    write_run(tmp_path, folders_of(config), 0, curve(79.0, 99.0), config=config)
    (row,) = build_table(tmp_path).rows
    assert row.published_value == 78.32 and row.delta() == pytest.approx(79.0 - 78.32)
    assert "| 78.32 | +0.68 |" in to_markdown(build_table(tmp_path))


def test_a_configuration_that_differs_from_the_cell_is_not_compared(tmp_path: Path) -> None:
    config = cell_config(OPENMIXUP, "cutmix", "cifar100/rx50")
    config["method"]["alpha"] = 1.0  # the table's CutMix uses 0.2
    write_run(tmp_path, folders_of(config), 0, curve(79.0, 80.0), config=config)
    (row,) = build_table(tmp_path).rows
    assert row.published is None and row.note == f"trains no cell of {OPENMIXUP}"


def test_a_run_with_other_data_options_is_not_compared() -> None:
    """The run identity includes the data group: the same recipe at another image size is another run."""
    config = cell_config(OPENMIXUP, "cutmix", "cifar100/rx50")
    assert published.matching_cells(OPENMIXUP, config)
    config["data"]["image_size"] = 24
    assert not published.matching_cells(OPENMIXUP, config)


def test_where_and_how_a_run_ran_does_not_change_its_cell() -> None:
    """Runtime values (device, precision, data.root, the logger, ...) are no part of the run identity."""
    config = cell_config(OPENMIXUP, "cutmix", "cifar100/rx50")
    config.update(device="cuda:3", precision="bf16", num_workers=2, runs_root="/elsewhere", progress=False)
    config["data"]["root"] = "/mnt/datasets"
    config["logger"] = {"name": "wandb", "mode": "offline"}
    found = published.matching_cells(OPENMIXUP, config)
    assert ("cutmix", "cifar100/rx50") in [(target.row, target.column) for target in found]


@pytest.mark.parametrize(
    ("table", "row", "column"),
    [
        (T1, "alignmixup_ae", "cifar10/r18"),  # image_size: ${data.image_size} in the method config
        ("sumix_eccv24_t1", "cutmix+sumix", "tiny_imagenet/rx50"),  # a wrapper with nested base options
        ("alignmixup_cvpr22_t6_ablation", "alignmixup {A}", "aligned"),
    ],
)
def test_the_config_a_cell_trains_matches_that_cell(table: str, row: str, column: str) -> None:
    found = published.matching_cells(table, cell_config(table, row, column))
    assert (row, column) in [(target.row, target.column) for target in found]
    # the config published.py builds from configs/ has the identity of the one Hydra composes
    identity = run_identity(cell_config(table, row, column)).configuration
    assert published.cell_configuration(published.cell(table, row, column)) == identity


def test_table_and_experiment_names_resolve_to_published_tables() -> None:
    assert resolve_table_name(T1) == T1
    assert resolve_table_name("alignmixup_t1_cifar") == T1  # an experiment stands for its reference_table
    with pytest.raises(ValueError, match="experiment quickstart names no published table"):
        resolve_table_name("quickstart")
    with pytest.raises(ValueError, match="unknown table 'no_such_table'; valid: .*alignmixup_cvpr22_t1"):
        resolve_table_name("no_such_table")


def test_following_a_published_table_shows_every_cell_in_order(tmp_path: Path) -> None:
    """--table: T6 reuses T1's runs; cells without runs say so; other configurations are counted, not
    shown."""
    t1_vanilla = cell_config(T1, "vanilla", "cifar100/r18")
    write_run(tmp_path, folders_of(t1_vanilla), 0, curve(76.0, 77.0), config=t1_vanilla)
    quick = json.loads(_cell_config(T1, "mixup", "cifar10/r18"))
    quick["data"]["name"] = "digits"
    write_run(tmp_path, QUICK, 0, curve(90.0, 91.0), config=quick)
    table = build_table(tmp_path, "alignmixup_cvpr22_t6_ablation")
    shown = [(row.published.cell.row, row.published.cell.column) for row in table.rows]
    assert shown[0] == ("vanilla", None) and table.rows[0].seeds == 1
    assert table.rows[0].delta() == pytest.approx(77.0 - 76.76)
    assert all(row.note == "not run" and row.seeds == 0 for row in table.rows[1:])
    assert len(shown) == len({*shown})
    assert any("1 configuration(s)" in note and "not shown" in note for note in table.notes)
    assert not any(note.startswith("Not trainable") for note in table.notes)  # every T6 cell trains
    wsol = build_table(tmp_path, "alignmixup_cvpr22_t5_wsol")
    assert any(
        note.startswith("Not trainable in mixbench: acol (ACoL needs its own two-branch VGG head")
        for note in wsol.notes
    )


def test_learned_methods_have_ema_columns(tmp_path: Path) -> None:
    config = cell_config(OPENMIXUP, "automix", "cifar100/resnet18")
    write_run(tmp_path, folders_of(config), 0, curve(81.0, 82.0), ema_top1=curve(82.5, 83.0), config=config)
    write_run(tmp_path, folders_of(config), 1, curve(81.4, 82.0), ema_top1=curve(82.1, 83.0), config=config)
    table = build_table(tmp_path)
    (row,) = table.rows
    assert row.values("median", "ema") == [82.5, 82.1]
    assert row.delta("ema") == pytest.approx(82.3 - 82.04)
    markdown = to_markdown(table)
    header = markdown.splitlines()[0]
    assert "ema top-1, median of last 10" in header and "ema Δ" in header
    assert "| 81.20 ± 0.28 |" in markdown and "| 82.30 ± 0.28 |" in markdown
    record = next(csv.DictReader(io.StringIO(to_csv(table))))
    assert record["ema_mean"] == "82.3" and record["mean"] == "81.2" and record["ema_delta"] == "0.26"


def test_an_unreadable_summary_is_named_in_one_line(tmp_path: Path) -> None:
    """A damaged run directory is left out and named with its one-line reason; the table is still made."""
    write_run(tmp_path, QUICK, 1, curve(92.0, 93.0))
    run_dir = write_run(tmp_path, QUICK, 0, curve(90.0, 91.0))
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(RunDirectoryError, match=r"summary.json is not readable JSON") as caught:
        read_runs(tmp_path)
    assert len(str(caught.value).splitlines()) == 1
    table = build_table(tmp_path)
    assert [run.seed for row in table.rows for run in row.group.runs] == [1]
    (note,) = [note for note in table.notes if note.startswith("Damaged run directories")]
    assert f"{run_dir}: {run_dir / 'summary.json'} is not readable JSON" in note


# ------------------------------------------------------------------------------- generic renderers


def test_markdown_table_aligns_escapes_and_ends_with_a_newline() -> None:
    text = markdown_table(["name", "ms"], [["a|b", "1.5"], ["c", "20"]], align=["l", "r"])
    assert text == "| name | ms |\n|---|---:|\n| a\\|b | 1.5 |\n| c | 20 |\n"
    assert markdown_table(["x", "y"], []) == "| x | y |\n|---|---|\n"  # no align: all left
    with pytest.raises(ValueError, match="row 0 has 2 cells for 1 columns"):
        markdown_table(["x"], [["1", "2"]])
    with pytest.raises(ValueError, match="alignments must be one of"):
        markdown_table(["x"], [], align=["right"])
    with pytest.raises(ValueError, match="2 alignments for 1 columns"):
        markdown_table(["x"], [], align=["l", "r"])


def test_csv_text_has_a_header_and_empty_fields_for_missing_keys() -> None:
    text = csv_text(["a", "b"], [{"a": 1, "b": "x,y"}, {"b": 2.5}])
    assert text == 'a,b\n1,"x,y"\n,2.5\n'
    assert list(csv.DictReader(io.StringIO(text))) == [{"a": "1", "b": "x,y"}, {"a": "", "b": "2.5"}]
    with pytest.raises(ValueError):
        csv_text(["a"], [{"c": 1}])  # a key that is not a column is a mistake, not a silent drop


def test_latex_tabular_escapes_every_cell() -> None:
    text = latex_tabular(["method", "Δ"], [["my_method&co", "+0.50 ± 0.10"]], align="lr")
    assert text.splitlines() == [
        r"\begin{tabular}{lr}",
        r"\hline",
        r"method & $\Delta$ \\",
        r"\hline",
        r"my\_method\&co & +0.50 $\pm$ 0.10 \\",
        r"\hline",
        r"\end{tabular}",
    ]
    assert text.endswith("\n") and latex_tabular(["a"], []).startswith(r"\begin{tabular}{l}")
    assert latex_escape("50% of {x} — 3 · 2 − 1") == r"50\% of \{x\} -- 3 $\cdot$ 2 $-$ 1"


# ------------------------------------------------------------------------------------------------ LaTeX


def _tabular_rows(latex: str) -> tuple[str, list[list[str]]]:
    match = re.search(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", latex, re.S)
    assert match, latex
    body = [
        line.strip() for line in match.group(2).splitlines() if line.strip() and line.strip() != r"\hline"
    ]
    assert all(line.endswith(r"\\") for line in body)
    return match.group(1), [re.split(r"(?<!\\)&", line[:-2]) for line in body]


def test_latex_is_a_tabular_with_one_line_per_row(tmp_path: Path) -> None:
    write_run(tmp_path, QUICK, 0, curve(90.0, 91.0))
    write_run(tmp_path, ("digits", "r18", "my_method&co", "digits_quick"), 0, curve(80.0, 81.0))
    write_run(
        tmp_path, ("digits", "r18", "vanilla", "digits_quick"), 0, [50.0] * 3, status="failed", epochs=20
    )
    table = build_table(tmp_path)
    spec, lines = _tabular_rows(to_latex(table))
    assert len(lines) == 1 + len(table.rows) == 4
    assert all(len(cells) == len(spec) for cells in lines)
    latex = to_latex(table)
    assert r"90.00" in latex and r"my\_method\&co" in latex and "digits\\_quick" in latex and "±" not in latex


# --------------------------------------------------------------------------------------------- the tool


def test_cli_writes_tables_and_figures_and_refuses_bad_input(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", QUICK, 0, curve(90.0, 91.0))
    out = tmp_path / "tables"
    tool = [sys.executable, str(REPO / "tools" / "table.py")]
    result = subprocess.run(
        [*tool, str(tmp_path / "runs"), "--out", str(out), "--latex", "--plots"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "| digits | r18 | mixup | digits_quick | 90.00 |" in result.stdout
    assert (out / "runs.md").read_text() == result.stdout
    assert (out / "runs.csv").is_file() and (out / "runs.tex").is_file()
    assert (out / "runs.png").stat().st_size > 0
    assert (out / "runs_curves" / "digits__r18__mixup__digits_quick__seed0.png").stat().st_size > 0
    (tmp_path / "empty").mkdir()
    empty = subprocess.run([*tool, str(tmp_path / "empty")], capture_output=True, text=True)
    assert empty.returncode == 2 and empty.stderr.startswith("error: no summary.json")
    unknown = subprocess.run(
        [*tool, str(tmp_path / "runs"), "--table", "no_such_table", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown table 'no_such_table'")
    assert len(unknown.stderr.strip().splitlines()) == 1
    assert (out / "runs.md").read_text() == result.stdout  # nothing already written lost
