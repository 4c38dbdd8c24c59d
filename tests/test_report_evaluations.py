"""Evaluations in the reports: the evaluation and cost cells of the published tables (AlignMixup T2 cost,
T3 attacks, T4 OOD, T5 WSOL, SUMix T5 corruption/FGSM) filled from the runs' ``eval/<suite>.json`` records,
the evaluation table of a runs folder, its figures, and the count of measurable published cells.

Run directories are faked in tmp_path as in tests/test_tables.py (summary.json, metrics.jsonl, config.yaml
composed with Hydra), and the records are written with ``RunDirectory.write_evaluation`` in the schema of
``mixbench.rundir.EVALUATION_KEYS``; every expected number below is computed by hand from the values
written.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mixbench.report import (
    build_evaluation_table,
    build_table,
    evaluation_to_csv,
    evaluation_to_markdown,
    published,
    to_csv,
    to_markdown,
    write_evaluation_table_files,
)
from mixbench.report.evaluation_plots import merged_bins, write_evaluation_plots
from mixbench.report.evaluations import occlusion_area
from mixbench.rundir import RunDirectory
from tests.helpers import REPO
from tests.test_tables import QUICK, cell_config, curve, folders_of, write_run

T2 = "alignmixup_cvpr22_t2_imagenet"
T3 = "alignmixup_cvpr22_t3_robustness"
T4 = "alignmixup_cvpr22_t4_ood"
T5 = "alignmixup_cvpr22_t5_wsol"
SUMIX_T5 = "sumix_eccv24_t5_robustness"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(
    suite: str,
    networks: dict[str, Any],
    *,
    weights: str = "last",
    data: dict[str, Any] | None = None,
    device: str = "NVIDIA H200",
    commit: str = "abc1234",
    **extra: Any,
) -> dict[str, Any]:
    """An evaluation record as tools/evaluate.py writes it (mixbench.rundir.EVALUATION_KEYS)."""
    return {
        "suite": suite,
        "protocol": {"eps": 8 / 255} if suite == "fgsm" else {},
        "weights": {
            "which": weights,
            "file": "checkpoint.pt" if weights == "last" else "best.pt",
            "epoch": 20,
        },
        "data": {"dataset": "cifar100", "split": "test", "images": 10000, "image_size": 32, **(data or {})},
        "networks": networks,
        "device": device,
        "commit": commit,
        "created": "2026-12-03T22:00:00Z",
        "seconds": 12.3,
        **extra,
    }


def attack(error: float, clean: float = 20.0) -> dict[str, Any]:
    return {"clean_error": clean, "adversarial_error": error, "images": 10000}


def ood_set(at_half: float, auroc: float, aupr_in: float, aupr_out: float) -> dict[str, Any]:
    return {
        "detection_accuracy": 99.0,  # the best-threshold accuracy: not what AlignMixup T4 publishes
        "detection_accuracy_at_half": at_half,
        "auroc": auroc,
        "aupr_in": aupr_in,
        "aupr_out": aupr_out,
        "fpr_at_95_tpr": 50.0,
        "images": 10000,
    }


def write(run_dir: Path, evaluation: dict[str, Any]) -> Path:
    return RunDirectory(run_dir).write_evaluation(evaluation)


def runs_of(root: Path, table: str, row: str, column: str, seeds: int = 2, **kwargs: Any) -> list[Path]:
    """Complete runs (seeds 0..seeds-1) of the configuration a published cell trains."""
    config = cell_config(table, row, column)
    return [
        write_run(root, folders_of(config), seed, curve(70.0 + seed, 75.0), config=config, **kwargs)
        for seed in range(seeds)
    ]


def rows_of(table, row: str, column: str) -> list:
    return [
        entry
        for entry in table.rows
        if entry.published and (entry.published.cell.row, entry.published.cell.column) == (row, column)
    ]


def the_row(table, row: str, column: str):
    (found,) = rows_of(table, row, column)
    return found


# ------------------------------------------------------------------------------- published tables


def test_t3_attack_cells_are_filled_as_error_with_the_published_number_and_delta(tmp_path: Path) -> None:
    """AlignMixup T3: FGSM / PGD cells read eval/fgsm.json / eval/pgd.json's adversarial_error, stay top-1
    error like the paper (not 100 - error), and Δ = mean over seeds - published; a seed without the PGD
    record is named with the command, not averaged in."""
    seed0, seed1 = runs_of(tmp_path, T3, "vanilla", "fgsm/cifar100/r18")
    write(seed0, record("fgsm", {"online": attack(80.0)}))
    write(seed1, record("fgsm", {"online": attack(84.0)}))
    write(seed0, record("pgd", {"online": attack(99.0)}))
    table = build_table(tmp_path, T3)
    fgsm = the_row(table, "vanilla", "fgsm/cifar100/r18")
    assert fgsm.published.raw == 87.12 and fgsm.published_value == 87.12  # error stays error
    assert fgsm.measured() == [80.0, 84.0]
    assert fgsm.compared() == pytest.approx((82.0, 2.8284271))
    assert fgsm.delta() == pytest.approx(82.0 - 87.12)
    pgd = the_row(table, "vanilla", "pgd/cifar100/r18")
    assert pgd.measured() == [99.0] and pgd.delta() == pytest.approx(99.0 - 99.97)
    assert f"seed1 not evaluated: run python tools/evaluate.py {seed0.parent} eval=pgd" in pgd.status()
    # cells without runs are listed as such
    assert the_row(table, "mixup", "fgsm/cifar10/r18").note == "not run"
    markdown = to_markdown(table)
    assert "| FGSM top-1 error under attack (%) | 82.00 ± 2.83 | 87.12 | -5.12 |" in markdown
    assert "Evaluation cells are shown in the unit the paper published" in markdown
    assert "records of the last epoch's weights (checkpoint.pt; eval/<suite>.json)" in markdown
    assert "ran on: NVIDIA H200; commit: abc1234." in markdown
    line = next(
        entry
        for entry in csv.DictReader(io.StringIO(to_csv(table)))
        if (entry["row"], entry["column"]) == ("vanilla", "fgsm/cifar100/r18")
    )
    assert (line["evaluation"], line["compared_statistic"], line["weights"]) == (
        "fgsm",
        "adversarial_error",
        "last",
    )
    assert (line["compared_mean"], line["published"], line["delta"]) == ("82.0", "87.12", "-5.12")


def test_t4_ood_cells_read_the_detection_accuracy_at_threshold_half_and_the_renamed_set(
    tmp_path: Path,
) -> None:
    """AlignMixup T4: det_acc is detection_accuracy_at_half (the source thresholds at 0.5), never the
    best-threshold accuracy; the tin_crop columns read the set tinyimagenet_crop."""
    (run,) = runs_of(tmp_path, T4, "mixup", "isun/auroc", seeds=1)
    sets = {
        "lsun_crop": ood_set(60.0, 50.0, 55.0, 45.0),
        "isun": ood_set(61.0, 70.0, 65.0, 66.0),
        "tinyimagenet_crop": ood_set(62.5, 64.0, 63.5, 60.0),
    }
    write(run, record("ood", {"online": {"sets": sets, "id_images": 10000}}))
    table = build_table(tmp_path, T4)
    expected = {  # column: (ours, published)
        "lsun_crop/det_acc": (60.0, 57.5),
        "lsun_crop/auroc": (50.0, 59.3),
        "isun/aupr_in": (65.0, 60.2),
        "isun/aupr_out": (66.0, 63.4),
        "tin_crop/det_acc": (62.5, 58.7),
        "tin_crop/auroc": (64.0, 62.8),
    }
    for column, (ours, value) in expected.items():
        row = the_row(table, "mixup", column)
        assert (row.measured(), row.published_value) == ([ours], value), column
        assert row.delta() == pytest.approx(ours - value), column
    assert published.cell(T4, "mixup", "tin_crop/auroc").evaluation == "ood/tinyimagenet_crop"
    assert "OOD tinyimagenet_crop det. acc. at threshold 0.5 (%)" in to_markdown(table)


def test_t5_wsol_cells_read_top1_loc_and_maxboxacc_v2(tmp_path: Path) -> None:
    """AlignMixup T5: CUB-200 runs of vgg_gap on the finegrained recipe fill top1_loc and maxboxacc_v2; the
    notes say that recipe needs model.pretrained_path."""
    seed0, seed1 = runs_of(tmp_path, T5, "cutmix", "top1_loc/vgg_gap")
    for run_dir, (loc, box) in zip((seed0, seed1), ((55.0, 60.0), (56.0, 61.0)), strict=True):
        entry = {"top1_loc": loc, "gt_known_loc": 70.0, "max_box_acc_v2": box, "top1": 75.0, "figures": []}
        write(run_dir, record("wsol", {"online": entry}, data={"dataset": "cub200"}))
    table = build_table(tmp_path, T5)
    top1_loc = the_row(table, "cutmix", "top1_loc/vgg_gap")
    assert top1_loc.measured() == [55.0, 56.0] and top1_loc.delta() == pytest.approx(55.5 - 52.5)
    box = the_row(table, "cutmix", "maxboxacc_v2/vgg_gap")
    assert box.delta() == pytest.approx(60.5 - 62.6)
    assert the_row(table, "vanilla", "top1_loc/resnet50").note == "not run"
    assert any("Not trainable in mixbench: acol" in note for note in table.notes)
    assert any("finegrained requires model.pretrained_path" in note for note in table.notes)


def test_sumix_t5_fills_corruption_only_from_the_released_cifar100_c(tmp_path: Path) -> None:
    """SUMix T5: corruption_acc is the mean accuracy of a record of the released CIFAR-100-C only; a record
    of generated corruptions is listed as not comparable and never averaged in; fgsm_err stays error."""
    seed0, seed1 = runs_of(tmp_path, SUMIX_T5, "fmix", "corruption_acc/base")
    released = {"corruption_source": "released", "corruption_set": "cifar100_c"}
    generated = {"corruption_source": "generated", "corruption_set": "generated"}
    corruption = {"accuracy": {"fog": {"1": 60.0}}, "clean_top1": 79.0}
    write(seed0, record("corruption", {"online": {**corruption, "mean": 50.0}}, data=released))
    write(seed1, record("corruption", {"online": {**corruption, "mean": 40.0}}, data=generated))
    write(seed0, record("fgsm", {"online": attack(88.0)}))
    write(seed1, record("fgsm", {"online": attack(90.0)}))
    table = build_table(tmp_path, SUMIX_T5)
    row = the_row(table, "fmix", "corruption_acc/base")
    assert row.measured() == [50.0] and row.delta() == pytest.approx(50.0 - 48.79)
    assert "seed1: eval/corruption.json generated corruptions, not the released CIFAR-100-C" in row.status()
    fgsm = the_row(table, "fmix", "fgsm_err/base")
    assert fgsm.published_value == 89.16 and fgsm.delta() == pytest.approx(89.0 - 89.16)
    clean = the_row(table, "fmix", "clean_acc/base")  # a top-1 cell of the same runs: the median of last 10
    assert clean.measured() == [70.0, 71.0] and clean.delta() == pytest.approx(70.5 - 79.69)


def test_a_generated_corruption_record_alone_fills_nothing(tmp_path: Path) -> None:
    """With only generated corruptions the SUMix T5 cell stays empty, present and listed, never filled."""
    (run,) = runs_of(tmp_path, SUMIX_T5, "fmix", "corruption_acc/base", seeds=1)
    generated = {"corruption_source": "generated", "corruption_set": "generated"}
    write(run, record("corruption", {"online": {"mean": 40.0, "accuracy": {}}}, data=generated))
    row = the_row(build_table(tmp_path, SUMIX_T5), "fmix", "corruption_acc/base")
    assert row.group is not None and row.measured() == [] and row.delta() is None
    assert "not comparable" in row.status()


def test_t2_cost_columns_read_the_cost_record_with_its_device(tmp_path: Path) -> None:
    """AlignMixup T2: params_M = step.trained_params / 1e6 (the network's and the method's own trained
    parameters, as the paper counts AlignMixup-AE's autoencoder) and ms_per_batch = step.ms_per_batch of
    eval/cost.json, labelled with the device and batch of the measurement; top1_err stays a top-1 cell
    (100 - error)."""
    (run,) = runs_of(tmp_path, T2, "mixup", "params_M", seeds=1)
    step = {
        "params": 25_557_032,
        "method_params": 1_000,
        "trained_params": 25_558_032,
        "ms_per_batch": 300.0,
        "images_per_s": 853.3,
        "peak_memory_mb": 20000.0,
        "batch_size": 256,
        "image_size": 224,
        "device": "NVIDIA H200",
        "host_syncs_per_step": 0.0,
    }
    write(run, record("cost", {}, data={"dataset": "imagenet"}, step=step))
    table = build_table(tmp_path, T2)
    params = the_row(table, "mixup", "params_M")
    assert params.measured() == [pytest.approx(25.558032)] and params.delta() == pytest.approx(0.558032)
    ms = the_row(table, "mixup", "ms_per_batch")
    assert ms.measured() == [300.0] and ms.delta() == pytest.approx(300.0 - 436)
    assert ms.measure_text() == "ms per batch (NVIDIA H200, batch 256)"
    top1 = the_row(table, "mixup", "top1_err")
    assert top1.evaluation is None and top1.published_value == pytest.approx(100 - 22.58)
    markdown = to_markdown(table)
    assert "| ms per batch (NVIDIA H200, batch 256) | 300.00 | 436.00 | -136.00 |" in markdown
    assert "RTX 2080 Ti at batch 1024" in markdown  # the mapping's note on the published timing


def test_runs_without_their_evaluation_are_listed_with_the_command(tmp_path: Path) -> None:
    """A cell whose runs exist but have no record (or an unreadable one) is a row that says so and how to
    make it, never dropped; the clean top-1 of its runs still shows."""
    seed0, seed1 = runs_of(tmp_path, T3, "cutmix", "fgsm/cifar10/r18")
    (seed1 / "eval").mkdir()
    (seed1 / "eval" / "pgd.json").write_text("{not json")
    table = build_table(tmp_path, T3)
    row = the_row(table, "cutmix", "fgsm/cifar10/r18")
    assert row.seeds == 2 and row.measured() == []
    assert row.status() == f"not evaluated: run python tools/evaluate.py {seed0.parent} eval=fgsm"
    pgd = the_row(table, "cutmix", "pgd/cifar10/r18")
    assert "seed0 not evaluated" in pgd.status() and "seed1: eval/pgd.json unreadable" in pgd.status()
    assert "force=true" in pgd.status()
    assert any("seeds without a usable, comparable evaluation record" in note for note in table.notes)


def test_ema_networks_are_compared_apart_never_as_a_maximum(tmp_path: Path) -> None:
    """A record's ema network fills the row's EMA values and EMA Δ; the online ones are the online
    network's alone."""
    (run,) = runs_of(tmp_path, T3, "vanilla", "fgsm/cifar10/r18", seeds=1, ema_top1=curve(72.0, 76.0))
    write(run, record("fgsm", {"online": attack(80.0), "ema": attack(70.0)}))
    table = build_table(tmp_path, T3)
    row = the_row(table, "vanilla", "fgsm/cifar10/r18")
    assert row.measured() == [80.0] and row.measured("ema") == [70.0]
    assert row.delta() == pytest.approx(80.0 - 89.41) and row.delta("ema") == pytest.approx(70.0 - 89.41)
    header = to_markdown(table).splitlines()[0]
    assert "| ema ours |" in header and "| ema Δ |" in header
    line = next(
        entry
        for entry in csv.DictReader(io.StringIO(to_csv(table)))
        if (entry["row"], entry["column"]) == ("vanilla", "fgsm/cifar10/r18")
    )
    assert (line["compared_mean"], line["ema_compared_mean"], line["ema_delta"]) == ("80.0", "70.0", "-19.41")


def test_weights_best_reads_the_best_records(tmp_path: Path) -> None:
    """--weights best reads eval/<suite>@best.json, and the notes say which weights were evaluated."""
    (run,) = runs_of(tmp_path, T3, "mixup", "fgsm/cifar10/r18", seeds=1)
    write(run, record("fgsm", {"online": attack(80.0)}))
    write(run, record("fgsm", {"online": attack(70.0)}, weights="best"))
    assert the_row(build_table(tmp_path, T3), "mixup", "fgsm/cifar10/r18").measured() == [80.0]
    best = build_table(tmp_path, T3, weights="best")
    row = the_row(best, "mixup", "fgsm/cifar10/r18")
    assert row.measured() == [70.0] and row.delta() == pytest.approx(70.0 - 78.42)
    assert any("the best epoch's weights (best.pt; eval/<suite>@best.json)" in note for note in best.notes)
    pgd = the_row(best, "mixup", "pgd/cifar10/r18")
    assert "eval=pgd weights=best" in pgd.status()
    with pytest.raises(ValueError, match="weights must be one of last, best"):
        build_table(tmp_path, T3, weights="first")


def test_runs_of_an_evaluation_table_show_its_cells_by_their_own_reference(tmp_path: Path) -> None:
    """Without --table, runs whose experiment names AlignMixup T5 show its WSOL cells (both columns)."""
    (run,) = runs_of(tmp_path, T5, "mixup", "top1_loc/resnet50", seeds=1)
    write(run, record("wsol", {"online": {"top1_loc": 50.0, "max_box_acc_v2": 61.0}}))
    rows = build_table(tmp_path).rows
    assert sorted((row.published.cell.column, row.measured()[0]) for row in rows) == [
        ("maxboxacc_v2/resnet50", 61.0),
        ("top1_loc/resnet50", 50.0),
    ]


def test_cli_weights_best_and_evaluation_figures(tmp_path: Path) -> None:
    """tools/table.py --weights best fills from @best records and --plots draws the evaluation figures."""
    (run,) = runs_of(tmp_path / "runs", T3, "mixup", "fgsm/cifar10/r18", seeds=1)
    write(run, record("fgsm", {"online": attack(70.0)}, weights="best"))
    out = tmp_path / "tables"
    tool = [sys.executable, str(REPO / "tools" / "table.py"), str(tmp_path / "runs")]
    result = subprocess.run(
        [*tool, "--table", T3, "--weights", "best", "--out", str(out), "--plots"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "| FGSM top-1 error under attack (%) | 70.00 | 78.42 | -8.42 |" in result.stdout
    assert "eval/<suite>@best.json" in result.stdout
    attacks = out / f"{T3}_evaluations" / "attacks.png"
    assert attacks.read_bytes().startswith(PNG_SIGNATURE)
    count = subprocess.run([*tool[:2], "--count"], capture_output=True, text=True)
    assert count.returncode == 0 and count.stdout.splitlines()[-1].split()[0] == "all"


# ------------------------------------------------------------------------------- measurable cells


def test_measurable_cells_cover_the_tables_and_every_trainable_cell() -> None:
    """At least 470 of the 591 published cells are measurable, and every cell mixbench trains is measured
    (a clean top-1 cell, or one an evaluation suite fills)."""
    counts = published.cell_counts()
    assert counts["all"].measurable >= 470 and counts["all"].total == 591
    unmeasured = [
        f"{target.table} [{target.row}, {target.column}]"
        for table in published.reference_tables()
        for target in published.cells(table)
        if published.is_trainable(target) and not published.is_measurable(target)
    ]
    assert not unmeasured, f"trainable but not measurable (give a reason): {unmeasured}"
    assert counts["all"].trainable == counts["all"].measurable
    assert published.counts_text().splitlines()[-1].split()[1:] == [
        str(counts["all"].trainable),
        str(counts["all"].measurable),
        "591",
    ]


def test_cell_evaluations_name_the_record_entry() -> None:
    """Each kind of evaluation cell maps to its suite and record key; clean top-1 cells to none."""
    cases = {
        (T3, "vanilla", "pgd/cifar10/r18"): ("pgd", None, "adversarial_error"),
        (T4, "vanilla", "isun/det_acc"): ("ood", "isun", "detection_accuracy_at_half"),
        (T5, "vanilla", "maxboxacc_v2/resnet50"): ("wsol", None, "max_box_acc_v2"),
        (SUMIX_T5, "cutmix", "corruption_acc/sumix"): ("corruption", "cifar100_c", "mean"),
        (T2, "vanilla", "ms_per_batch"): ("cost", None, "ms_per_batch"),
    }
    for (table, row, column), expected in cases.items():
        found = published.cell_evaluation(published.cell(table, row, column))
        assert (found.suite, found.part, found.key) == expected, (table, row, column)
    assert published.cell_evaluation(published.cell(T2, "vanilla", "top1_err")) is None
    assert not published.cell(T5, "acol", "top1_loc/vgg_gap").runnable  # not a mixup method


# ------------------------------------------------------------------------------- the evaluation table


def _quick_runs(root: Path) -> tuple[Path, Path, Path]:
    """Two mixup seeds and one automix seed (with an EMA network) of the digits quickstart."""
    mixup0 = write_run(root, QUICK, 0, curve(90.0, 91.0))
    mixup1 = write_run(root, QUICK, 1, curve(92.0, 93.0))
    automix = write_run(
        root, ("digits", "r18", "automix", "digits_quick"), 0, curve(80.0, 81.0), ema_top1=curve(85.0, 86.0)
    )
    return mixup0, mixup1, automix


def _calibration(ece: float, accuracy: float, confidence: float, count: int = 100) -> dict[str, Any]:
    bins = [{"lower": 0.5, "upper": 0.6, "count": count, "accuracy": accuracy, "confidence": confidence}]
    return {"ece": ece, "top1": 90.0, "bins": bins, "diagram": "eval/calibration_online.png"}


def _occlusion(half: float) -> dict[str, Any]:
    return {"accuracy": {"0.0": 90.0, "0.5": half, "1.0": 10.0}, "curve": "eval/occlusion_online.png"}


def test_evaluation_table_aggregates_seeds_and_marks_generated_data(tmp_path: Path) -> None:
    """One line per configuration and network; each suite's number as mean ± std over seeds; generated
    corruptions marked; occlusion at 50 % and its area; a suite a seed lacks is named; cost on the online
    line only."""
    mixup0, mixup1, automix = _quick_runs(tmp_path)
    generated = {"corruption_source": "generated", "corruption_set": "generated"}
    write(mixup0, record("fgsm", {"online": attack(60.0)}))
    write(mixup1, record("fgsm", {"online": attack(64.0)}))
    write(mixup0, record("corruption", {"online": {"mean": 40.0, "accuracy": {}}}, data=generated))
    write(mixup0, record("occlusion", {"online": _occlusion(50.0)}))
    write(mixup1, record("occlusion", {"online": _occlusion(70.0)}))
    write(automix, record("fgsm", {"online": attack(55.0), "ema": attack(45.0)}))
    write(automix, record("calibration", {"online": _calibration(5.0, 55.0, 58.0)}))
    cost_step = {"ms_per_batch": 12.5, "batch_size": 64, "device": "cpu (2 threads)"}
    write(mixup0, record("cost", {}, step=cost_step, device="cpu (2 threads)"))
    table = build_evaluation_table(tmp_path)
    assert [column.key for column in table.columns] == [
        "fgsm_err",
        "ece",
        "corruption_mean",
        "occlusion_50",
        "occlusion_auc",
        "cost_ms_per_batch",
    ]
    by_key = {column.key: column for column in table.columns}
    automix_row, mixup_row = sorted(table.rows, key=lambda row: row.group.method)
    assert mixup_row.values(by_key["fgsm_err"]) == {"": [60.0, 64.0]}
    assert automix_row.values(by_key["fgsm_err"], "ema") == {"": [45.0]}
    assert mixup_row.values(by_key["corruption_mean"]) == {"generated": [40.0]}
    # trapezoids over 0, 0.5, 1: (90 + 50) / 4 + (50 + 10) / 4 = 50; (90 + 70) / 4 + (70 + 10) / 4 = 60
    assert mixup_row.values(by_key["occlusion_auc"]) == {"": [50.0, 60.0]}
    assert occlusion_area([(0.0, 90.0), (0.5, 50.0), (1.0, 10.0)]) == pytest.approx(50.0)
    markdown = evaluation_to_markdown(table)
    lines = [line for line in markdown.splitlines() if line.startswith("| digits")]
    assert len(lines) == 3  # automix online, automix ema, mixup online
    mixup_line = next(line for line in lines if "| mixup |" in line)
    assert "| 62.00 ± 2.83 |" in mixup_line and "| 40.00 (generated) |" in mixup_line
    assert "| 60.00 ± 14.14 | 55.00 ± 7.07 | 12.50 |" in mixup_line
    assert "corruption: seed1 not evaluated" in mixup_line and "cost: seed1 not evaluated" in mixup_line
    ema_line = next(line for line in lines if "| ema |" in line)
    assert "| 45.00 |" in ema_line and "12.50" not in ema_line
    assert "Generated data: corruptions generated with imagecorruptions" in markdown
    assert "ms per batch: one training step timed on cpu (2 threads), batch 64." in markdown
    assert (
        "Evaluated on: NVIDIA H200 (fgsm, calibration, corruption, occlusion); cpu (2 threads) (cost)."
        in markdown
    )
    rows = list(csv.DictReader(io.StringIO(evaluation_to_csv(table))))
    mixup_csv = next(row for row in rows if row["method"] == "mixup")
    assert (mixup_csv["fgsm_err_mean"], mixup_csv["fgsm_err_std"], mixup_csv["fgsm_err_seeds"]) == (
        "62.0",
        "2.8284",
        "2",
    )
    assert (mixup_csv["corruption_mean_mean"], mixup_csv["corruption_mean_data"]) == ("40.0", "generated")
    assert mixup_csv["top1_mean"] == "91.0" and mixup_csv["weights"] == "last"
    written = write_evaluation_table_files(table, tmp_path / "out", "evaluations")
    assert [path.name for path in written] == ["evaluations.md", "evaluations.csv"]
    assert written[0].read_text() == markdown


def test_evaluation_table_without_records_says_how_to_make_them(tmp_path: Path) -> None:
    """Runs with no eval/ records give the clean top-1 columns only and the command in the notes."""
    write_run(tmp_path, QUICK, 0, curve(90.0, 91.0))
    table = build_evaluation_table(tmp_path, weights="best")
    assert table.columns == [] and not table.has_records
    assert any(
        f"No evaluation records (eval/<suite>@best.json) under {tmp_path}" in note
        and "eval=<suite> weights=best" in note
        for note in table.notes
    )


def test_reliability_bins_merge_over_seeds_by_count() -> None:
    """Bins of several seeds: counts summed, accuracy and confidence weighted by count, percentages read as
    fractions."""
    first = record("calibration", {"online": _calibration(5.0, 50.0, 60.0, count=100)})
    second = record("calibration", {"online": _calibration(4.0, 80.0, 60.0, count=300)})
    (merged,) = merged_bins([first, second])
    assert merged["count"] == 400
    assert merged["accuracy"] == pytest.approx((0.5 * 100 + 0.8 * 300) / 400)
    assert merged["confidence"] == pytest.approx(0.6)


def test_evaluation_figures_are_written(tmp_path: Path) -> None:
    """Attack bars, occlusion curves, reliability diagrams and the CAM gallery are non-empty PNGs, drawn
    only where records exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    import numpy as np

    mixup0, mixup1, automix = _quick_runs(tmp_path / "runs")
    for run_dir, error in ((mixup0, 60.0), (mixup1, 64.0)):
        write(run_dir, record("fgsm", {"online": attack(error)}))
        write(run_dir, record("pgd", {"online": attack(error + 30)}))
        write(run_dir, record("occlusion", {"online": _occlusion(error - 10)}))
    write(automix, record("fgsm", {"online": attack(55.0), "ema": attack(45.0)}))
    write(automix, record("calibration", {"online": _calibration(5.0, 55.0, 58.0)}))
    cam = mixup0 / "eval" / "cam_online.png"
    matplotlib.image.imsave(cam, np.linspace(0, 1, 64 * 64).reshape(64, 64))
    write(
        mixup0,
        record(
            "wsol", {"online": {"top1_loc": 50.0, "max_box_acc_v2": 60.0, "figures": ["eval/cam_online.png"]}}
        ),
    )
    written = write_evaluation_plots(tmp_path / "runs", tmp_path / "figures")
    assert sorted(path.name for path in written) == [
        "attacks.png",
        "cams.png",
        "occlusion.png",
        "reliability.png",
    ]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, path
    only_attacks = tmp_path / "only_attacks"
    write_run(only_attacks, QUICK, 0, curve(90.0, 91.0))
    write(
        only_attacks / QUICK[0] / QUICK[1] / QUICK[2] / QUICK[3] / "seed0",
        record("fgsm", {"online": attack(1.0)}),
    )
    assert [path.name for path in write_evaluation_plots(only_attacks, tmp_path / "f2")] == ["attacks.png"]
