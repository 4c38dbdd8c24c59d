"""Figures of a table and of single runs (PNG, matplotlib's Agg canvas: no display needed).

* :func:`plot_table`: one line per table row (a configuration and its published cell), ours against the
  published number.  Ours is drawn in the statistic the paper published (the median of the last 10 epochs
  where it states none, and for configurations without a published number), as the mean over complete seeds
  with ± one standard deviation and every seed as a small dot; the published number as a diamond.  The
  horizontal gap between the two is the table's Δ.  EMA networks of learned methods get their own marker.
  Evaluation cells (FGSM error, AUROC, ms per batch, ...) get panels of their own, one per measure, in the
  published unit (named in the panel's title).
* :func:`plot_run`: one run's curves against the epoch: test top-1 (and EMA top-1), train loss (the mixed
  objective) and test loss, with the metric window (the last ``metric_window`` epochs, whose median top-1 is
  the headline number) shaded and its median drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mixbench.atomic import atomic_write
from mixbench.report.runs import HEADLINE
from mixbench.report.tables import STATISTIC_LABEL, Row, Table, mean_std
from mixbench.rundir import ONLINE, read_run

DPI = 110
NETWORK_STYLE = {ONLINE: ("tab:blue", "o"), "ema": ("tab:orange", "s")}
OTHER_STYLE = ("tab:green", "^")


def metric_window_span(epochs: Sequence[int], window: int) -> tuple[int, int] | None:
    """First and last epoch of the metric window (the last ``window`` recorded epochs); None while fewer
    exist."""
    if window < 1:
        raise ValueError("the metric window must be at least 1 epoch")
    if len(epochs) < window:
        return None
    return int(epochs[-window]), int(epochs[-1])


def _save(figure: Figure, out: Path) -> None:
    """Write the PNG next to its destination, then rename it over it (never a torn file)."""
    FigureCanvasAgg(figure)
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


# ------------------------------------------------------------------------------------------------ one run


def plot_run(run_dir: Path, out: Path) -> Path:
    """Top-1 and losses against the epoch for the run directory ``run_dir``, written to ``out``."""
    _save(run_figure(run_dir), out)
    return Path(out)


def run_figure(run_dir: Path) -> Figure:
    """The figure of :func:`plot_run`: (top-1, losses) axes, the metric window shaded on both."""
    run = read_run(run_dir)
    window = run.window
    networks = run.networks
    span = metric_window_span(run.recorded_epochs, window)

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    accuracy_axes, loss_axes = figure.subplots(1, 2)
    for label in networks:
        color, _ = NETWORK_STYLE.get(label, OTHER_STYLE)
        name = f"{label} " if len(networks) > 1 else ""
        epochs, top1 = run.curve(label, "top1")
        if top1:
            accuracy_axes.plot(epochs, top1, color=color, label=f"{name}test top-1")
        median = run.scores(label)["median"]
        if span and median is not None:
            accuracy_axes.hlines(
                median,
                *span,
                colors=color,
                linestyles="--",
                label=f"{name}median of last {window}: {median:.2f}",
            )
        epochs, test_loss = run.curve(label, "test_loss")
        if test_loss:
            loss_axes.plot(epochs, test_loss, color=color, label=f"{name}test loss")
    epochs, train_loss = run.curve(ONLINE, "train_loss")
    if train_loss:
        loss_axes.plot(epochs, train_loss, color="tab:gray", label="train loss (mixed objective)")
    for axes in (accuracy_axes, loss_axes):
        if span:
            axes.axvspan(
                span[0] - 0.5,
                span[1] + 0.5,
                color="gold",
                alpha=0.25,
                lw=0,
                label=f"metric window (last {window} epochs)",
            )
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if run.history:
            axes.legend(fontsize=8)
        else:
            axes.text(0.5, 0.5, "no epoch recorded yet", transform=axes.transAxes, ha="center", va="center")
    accuracy_axes.set_ylabel("top-1 (%)")
    loss_axes.set_ylabel("loss")
    status = f"{run.status} {run.epochs_done}/{run.epochs} epochs"
    names = "  ".join(run.group_names)
    figure.suptitle(f"{names}  seed {run.seed}: {status}\n{run_dir}", fontsize=9)
    return figure


def curve_file_name(row_or_run_dir: Path) -> str:
    """``digits__r18,width=16__mixup__digits_quick__seed0.png`` for ``.../digits/r18,width=16/.../seed0``."""
    parts = Path(row_or_run_dir).resolve().parts[-5:]
    return "__".join(parts) + ".png"


# ------------------------------------------------------------------------------------------------ one table


def _row_label(row: Row, with_table: bool) -> str:
    """``mixup``, ``alignmixup_cvpr22_t1: mixup`` or ``fmix+sumix (sumix,base=fmix)``, plus what is
    missing."""
    if row.published:
        label = (
            f"{row.published.cell.table}: {row.published.cell.row}" if with_table else row.published.cell.row
        )
        if row.group is not None and row.published.cell.row != row.method:
            label += f" ({row.method})"
    else:
        label = row.method
    if row.group is None or not row.group.complete_runs:
        label += f"  [{row.status() or 'no complete run'}]"
    elif row.incomplete:
        label += f"  [+{len(row.incomplete)} not complete]"
    return label


def _panels(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows grouped by (data, model, schedule) and, for evaluation cells, by measure, in order: one panel
    each, with its own axis."""
    panels: dict[str, list[Row]] = {}
    for row in rows:
        title = f"{row.data} · {row.model} · {row.schedule}"
        if row.evaluation is not None:
            title += f" · {row.measure_text()}"
        panels.setdefault(title, []).append(row)
    return panels


def _draw_panel(axes, rows: list[Row], networks: list[str], with_table: bool) -> None:
    if not rows:
        axes.text(
            0.5,
            0.5,
            "no row: nothing run and no cell published",
            transform=axes.transAxes,
            ha="center",
            va="center",
        )
        axes.set_yticks([])
        return
    offsets = {network: 0.15 * index for index, network in enumerate(networks)}
    ours = {
        network: f"ours{', ' + network if len(networks) > 1 else ''}: mean ± std over seeds (dots: seeds)"
        for network in networks
    }
    for position, row in enumerate(rows):
        for network in networks:
            values = row.measured(network)
            if not values:
                continue
            color, marker = NETWORK_STYLE.get(network, OTHER_STYLE)
            y = position - offsets[network]
            mean, std = mean_std(values)
            axes.scatter(values, [y] * len(values), s=10, color=color, alpha=0.4, lw=0)
            axes.errorbar(
                mean,
                y,
                xerr=std or 0.0,
                fmt=marker,
                color=color,
                ms=6,
                capsize=3,
                label=ours[network],
            )
        if row.published_value is not None:
            axes.scatter(
                row.published_value,
                position,
                marker="D",
                s=36,
                facecolor="none",
                edgecolor="black",
                zorder=3,
                label="published",
            )
    axes.set_yticks(range(len(rows)), [_row_label(row, with_table) for row in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.grid(axis="x", alpha=0.3)
    axes.margins(x=0.08)


def plot_table(table: Table, out: Path) -> Path:
    """Ours against the published number for every row of ``table``, one panel per (data, model, schedule)."""
    panels = _panels(table.rows) or {"": []}
    networks = [ONLINE, *table.networks]
    sizes = [max(len(rows), 1) + 1.2 for rows in panels.values()]
    figure = Figure(figsize=(9, 1.2 + 0.3 * sum(sizes)), layout="constrained")
    axes_list = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": sizes})[:, 0]
    for axes, (title, rows) in zip(axes_list, panels.items(), strict=True):
        _draw_panel(axes, rows, networks, with_table=table.reference_table is None)
        axes.set_title(title, fontsize=9, loc="left")
    handles: dict[str, Any] = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(
            handles.values(), handles.keys(), loc="outside lower center", fontsize=8, ncols=len(handles)
        )
    published = any(row.published_value is not None for row in table.rows)
    statistics_used = sorted(
        {
            STATISTIC_LABEL[row.published.our_statistic if row.published else HEADLINE]
            for row in table.rows
            if row.evaluation is None
        }
    ) or [STATISTIC_LABEL[HEADLINE]]
    axes_list[-1].set_xlabel(
        f"top-1 accuracy (%); ours: {' / '.join(statistics_used)}"
        + (
            "\n(the statistic the paper published; median of the last 10 where it states none)"
            if published
            else " (no published numbers)"
        )
        + (
            "\nevaluation panels: the measure and unit of the panel's title, as published"
            if table.has_evaluations
            else ""
        ),
        fontsize=9,
    )
    figure.suptitle(table.reference_table or table.title, fontsize=10, x=0.01, ha="left")
    _save(figure, out)
    return Path(out)


def write_run_plots(table: Table, folder: Path) -> list[Path]:
    """One :func:`plot_run` figure per run directory of the table's rows, into ``folder``."""
    written = []
    done: set[Path] = set()
    for row in table.rows:
        for run in row.group.runs if row.group else []:
            if run.path in done:
                continue
            done.add(run.path)
            written.append(plot_run(run.path, Path(folder) / curve_file_name(run.path)))
    return written
