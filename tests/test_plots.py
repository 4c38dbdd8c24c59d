"""Figures: the metric window shaded over exactly the last ``metric_window`` epochs, PNGs written for runs and
tables (also for runs with no epoch yet, and for cells without a published number or without runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixbench.report import build_table
from mixbench.report.plots import (
    curve_file_name,
    metric_window_span,
    plot_run,
    plot_table,
    run_figure,
    write_run_plots,
)
from tests.test_tables import OPENMIXUP, QUICK, cell_config, curve, folders_of, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, path


def test_metric_window_span_is_the_last_window_epochs() -> None:
    assert metric_window_span(list(range(1, 21)), 10) == (11, 20)
    assert metric_window_span(list(range(1, 11)), 10) == (1, 10)
    assert metric_window_span([5, 6, 7, 8], 2) == (7, 8)  # a resumed history need not start at epoch 1
    assert metric_window_span(list(range(1, 8)), 10) is None  # fewer epochs than the window: no metric yet
    with pytest.raises(ValueError, match="at least 1"):
        metric_window_span([1, 2], 0)


def test_run_figure_shades_the_window_on_both_axes_and_draws_ema(tmp_path: Path) -> None:
    run_dir = write_run(
        tmp_path, QUICK, 0, curve(90.0, 95.0, epochs=25), ema_top1=curve(91.0, 96.0, epochs=25)
    )
    figure = run_figure(run_dir)
    accuracy_axes, loss_axes = figure.axes
    for axes in (accuracy_axes, loss_axes):
        (span,) = axes.patches
        bounds = span.get_bbox()
        assert (bounds.x0, bounds.x1) == (15.5, 25.5)  # epochs 16..25, padded by half an epoch
    labels = [line.get_label() for line in accuracy_axes.get_lines()]
    assert "online test top-1" in labels and "ema test top-1" in labels
    medians = {collection.get_label(): collection for collection in accuracy_axes.collections}
    assert "ema median of last 10: 91.00" in medians and "online median of last 10: 90.00" in medians
    assert_png(plot_run(run_dir, tmp_path / "out" / "run.png"))


def test_a_run_without_epochs_still_gets_a_figure(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, QUICK, 0, [], status="running", epochs=20)
    figure = run_figure(run_dir)
    assert not figure.axes[0].patches  # no window yet
    assert_png(plot_run(run_dir, tmp_path / "empty.png"))


def test_table_figure_and_one_curve_figure_per_run(tmp_path: Path) -> None:
    automix = cell_config(OPENMIXUP, "automix", "cifar100/resnet18")
    for seed in (0, 1):
        write_run(
            tmp_path / "runs",
            folders_of(automix),
            seed,
            curve(81.0 + seed, 82.0),
            ema_top1=curve(82.0, 83.0),
            config=automix,
        )
    write_run(tmp_path / "runs", QUICK, 0, curve(90.0, 91.0))  # no published number
    write_run(tmp_path / "runs", QUICK, 1, [10.0], status="failed", epochs=20)  # shown, not averaged
    table = build_table(tmp_path / "runs")
    assert_png(plot_table(table, tmp_path / "out" / "table.png"))
    written = write_run_plots(table, tmp_path / "out" / "curves")
    assert len(written) == 4 and len(set(written)) == 4
    for path in written:
        assert_png(path)
    assert tmp_path / "out" / "curves" / "digits__r18__mixup__digits_quick__seed1.png" in written
    following = build_table(tmp_path / "runs", OPENMIXUP)  # many cells without runs: published only
    assert_png(plot_table(following, tmp_path / "out" / "openmixup.png"))


def test_curve_file_names_follow_the_run_directory() -> None:
    name = curve_file_name(Path("runs/quickstart/digits/r18,width=16/mixup/digits_quick/seed0"))
    assert name == "digits__r18,width=16__mixup__digits_quick__seed0.png"
