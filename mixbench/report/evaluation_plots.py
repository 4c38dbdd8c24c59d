"""Figures of evaluations (PNG, matplotlib's Agg canvas), drawn from the records of an evaluation table
(:mod:`mixbench.report.evaluations`), each written atomically:

* :func:`plot_attacks` (``attacks.png``): top-1 error under FGSM and PGD per configuration, one panel per
  attack, a bar per network (online, EMA) at the mean over seeds with ± one standard deviation, seeds as dots.
* :func:`plot_occlusion` (``occlusion.png``): accuracy against the masked fraction of patches, every
  configuration (and network) on one axis, mean over seeds.
* :func:`plot_reliability` (``reliability.png``): the reliability diagrams side by side, one per
  configuration and network, from the recorded bins (counts summed over seeds, accuracy and confidence
  averaged weighted by count), the ECE (mean over seeds) in each title.
* :func:`plot_cam_gallery` (``cams.png``): the CAM figures the WSOL evaluation wrote in each run
  (``eval/cam_<network>.png``), tiled with their run named.

:func:`write_evaluation_plots` draws those the records allow into one folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mixbench.atomic import atomic_write
from mixbench.report.evaluations import (
    EvaluationRow,
    EvaluationTable,
    build_evaluation_table,
    occlusion_points,
)
from mixbench.report.records import LAST, network_results
from mixbench.report.tables import mean_std
from mixbench.rundir import ONLINE

DPI = 110
NETWORK_COLORS = {ONLINE: "tab:blue", "ema": "tab:orange"}
OTHER_COLOR = "tab:green"
ATTACKS = ("fgsm", "pgd")
MAX_CAM_FIGURES = 24  # the gallery shows at most this many run figures (in row, seed, network order)


def _save(figure: Figure, out: Path) -> Path:
    FigureCanvasAgg(figure)
    atomic_write(out, lambda handle: figure.savefig(handle, format="png", dpi=DPI))
    return Path(out)


def row_labels(rows: list[EvaluationRow]) -> list[str]:
    """The method of each row, with the data / model / schedule where the rows differ in them."""
    parts = [(row.group.data, row.group.model, row.group.method, row.group.schedule) for row in rows]
    varying = [index for index in (0, 1, 3) if len({part[index] for part in parts}) > 1]
    return [" · ".join([part[2], *(part[index] for index in varying)]) for part in parts]


def _networks(table: EvaluationTable) -> list[str]:
    return [ONLINE, *table.networks]


# --------------------------------------------------------------------------------------------- attacks


def plot_attacks(table: EvaluationTable, out: Path) -> Path | None:
    """Top-1 error under FGSM and PGD per configuration (bars per network); None when no row has either."""
    attacks = [suite for suite in ATTACKS if table.records(suite)]
    if not attacks:
        return None
    rows = [row for row in table.rows if any(row.records(suite) for suite in attacks)]
    labels = row_labels(rows)
    networks = _networks(table)
    width = 0.8 / len(networks)
    figure = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 3.6 * len(attacks)), layout="constrained")
    axes_list = figure.subplots(len(attacks), 1, squeeze=False)[:, 0]
    for axes, suite in zip(axes_list, attacks, strict=True):
        column = next(column for column in table.columns if column.suite == suite)
        for offset, network in enumerate(networks):
            color = NETWORK_COLORS.get(network, OTHER_COLOR)
            positions, means, stds = [], [], []
            for index, row in enumerate(rows):
                values = [value for group in row.values(column, network).values() for value in group]
                if not values:
                    continue
                x = index - 0.4 + width * (offset + 0.5)
                mean, std = mean_std(values)
                positions.append(x)
                means.append(mean)
                stds.append(std or 0.0)
                axes.scatter(
                    [x] * len(values), values, s=16, facecolor="white", edgecolor="black", lw=0.8, zorder=4
                )
            if positions:
                axes.bar(
                    positions, means, width=width * 0.95, yerr=stds, capsize=3, color=color, label=network
                )
        axes.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        axes.set_ylabel(f"{suite.upper()} top-1 error (%)")
        axes.set_ylim(0, 100)
        axes.grid(axis="y", alpha=0.3)
        protocol = _protocol_text(table, suite)
        axes.set_title(f"{suite.upper()}{': ' + protocol if protocol else ''}", fontsize=9, loc="left")
    handles: dict[str, Any] = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    figure.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncols=len(handles),
        fontsize=8,
        title="network: mean ± std over seeds (circles: seeds)",
        title_fontsize=8,
    )
    figure.suptitle(table.title, fontsize=10, x=0.01, ha="left")
    return _save(figure, out)


def _protocol_text(table: EvaluationTable, suite: str) -> str:
    """The recorded protocol of a suite, ``eps=0.031, steps=20`` (``;``-separated where runs differ)."""
    texts = []
    for _, _, record in table.records(suite):
        protocol = record.get("protocol") or {}
        texts.append(
            ", ".join(
                f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                for key, value in protocol.items()
                if isinstance(value, (int, float, str, bool))
            )
        )
    return "; ".join(dict.fromkeys(text for text in texts if text))


# ------------------------------------------------------------------------------------------- occlusion


def _mean_curve(row: EvaluationRow, network: str) -> tuple[list[float], list[float], list[float]]:
    """Masked fractions, mean and std of the accuracy over the seeds whose records have that fraction."""
    by_fraction: dict[float, list[float]] = {}
    for _, record in row.records("occlusion"):
        for fraction, value in occlusion_points(record, network):
            by_fraction.setdefault(fraction, []).append(value)
    fractions = sorted(by_fraction)
    stats = [mean_std(by_fraction[fraction]) for fraction in fractions]
    return fractions, [mean for mean, _ in stats], [std or 0.0 for _, std in stats]  # type: ignore[misc]


def plot_occlusion(table: EvaluationTable, out: Path) -> Path | None:
    """Accuracy against the masked fraction, all configurations on one axis; None without occlusion
    records."""
    rows = [row for row in table.rows if row.records("occlusion")]
    if not rows:
        return None
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    axes = figure.subplots()
    for row, label in zip(rows, row_labels(rows), strict=True):
        for network in row.networks:
            fractions, means, stds = _mean_curve(row, network)
            if not fractions:
                continue
            name = label if network == ONLINE else f"{label} ({network})"
            x = [100 * fraction for fraction in fractions]
            (line,) = axes.plot(x, means, marker="o", ms=3, label=name, ls="-" if network == ONLINE else "--")
            axes.fill_between(
                x,
                [m - s for m, s in zip(means, stds, strict=True)],
                [m + s for m, s in zip(means, stds, strict=True)],
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
    axes.set_xlabel("patches masked (%)")
    axes.set_ylabel("top-1 accuracy (%), mean over seeds (band: ± std)")
    axes.set_xlim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"Occlusion: {table.title}", fontsize=9, loc="left")
    return _save(figure, out)


# ----------------------------------------------------------------------------------------- calibration


def _fraction(value: Any, percent: bool) -> float | None:
    if not isinstance(value, (int, float)):
        return None
    return float(value) / 100 if percent else float(value)


def merged_bins(records: list[Mapping[str, Any]], network: str = ONLINE) -> list[dict[str, float]]:
    """The calibration bins of several seeds as one table: ``lower``, ``upper`` and ``accuracy`` /
    ``confidence`` as fractions of 1 (the records' percentages divided by 100), ``count`` summed, accuracy and
    confidence averaged weighted by count; empty bins left out."""
    merged: dict[tuple[float, float], dict[str, float]] = {}
    for record in records:
        entry = network_results(record, network) or {}
        bins = [item for item in entry.get("bins") or [] if isinstance(item, Mapping)]
        if not bins:
            continue
        edges_percent = max(float(item.get("upper") or 0) for item in bins) > 1.0
        values_percent = edges_percent or any(
            float(item.get(key) or 0) > 1.0 for item in bins for key in ("accuracy", "confidence")
        )
        for item in bins:
            count = int(item.get("count") or 0)
            accuracy = _fraction(item.get("accuracy"), values_percent)
            confidence = _fraction(item.get("confidence", item.get("mean_confidence")), values_percent)
            lower, upper = (
                _fraction(item.get("lower"), edges_percent),
                _fraction(item.get("upper"), edges_percent),
            )
            if not count or accuracy is None or confidence is None or lower is None or upper is None:
                continue
            slot = merged.setdefault(
                (round(lower, 6), round(upper, 6)), {"count": 0, "accuracy": 0.0, "confidence": 0.0}
            )
            slot["count"] += count
            slot["accuracy"] += accuracy * count
            slot["confidence"] += confidence * count
    return [
        {
            "lower": lower,
            "upper": upper,
            "count": slot["count"],
            "accuracy": slot["accuracy"] / slot["count"],
            "confidence": slot["confidence"] / slot["count"],
        }
        for (lower, upper), slot in sorted(merged.items())
    ]


def plot_reliability(table: EvaluationTable, out: Path) -> Path | None:
    """Reliability diagrams side by side (one per configuration and network); None without calibration
    records that hold bins."""
    panels = []
    rows = [row for row in table.rows if row.records("calibration")]
    for row, label in zip(rows, row_labels(rows), strict=True):
        records = [record for _, record in row.records("calibration")]
        for network in row.networks:
            bins = merged_bins(records, network)
            if bins:
                eces = [
                    float(entry["ece"])
                    for entry in (network_results(record, network) for record in records)
                    if entry and isinstance(entry.get("ece"), (int, float))
                ]
                name = label if network == ONLINE else f"{label} ({network})"
                panels.append((name, bins, mean_std(eces)[0], len(records)))
    if not panels:
        return None
    columns = min(len(panels), 4)
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(3.2 * columns, 3.4 * lines), layout="constrained")
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(panels):
            axes.set_axis_off()
            continue
        name, bins, ece, seeds = panels[index]
        lefts = [item["lower"] for item in bins]
        widths = [item["upper"] - item["lower"] for item in bins]
        accuracies = [item["accuracy"] for item in bins]
        axes.bar(lefts, accuracies, width=widths, align="edge", color="tab:blue", edgecolor="black", lw=0.5)
        axes.bar(
            lefts,
            [item["confidence"] - item["accuracy"] for item in bins],
            bottom=accuracies,
            width=widths,
            align="edge",
            color="tab:red",
            alpha=0.3,
            hatch="//",
            lw=0.5,
        )
        axes.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        ece_text = f"ECE {ece:.2f}%" if ece is not None else "ECE —"
        axes.set_title(f"{name}\n{ece_text} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=8)
        axes.set_xlabel("confidence", fontsize=8)
        axes.set_ylabel("accuracy", fontsize=8)
        axes.tick_params(labelsize=7)
    figure.suptitle(
        f"Reliability: {table.title} (bars: accuracy per confidence bin; hatched: gap to mean confidence)",
        fontsize=9,
        x=0.01,
        ha="left",
    )
    return _save(figure, out)


# ------------------------------------------------------------------------------------------------ CAMs


def cam_figures(table: EvaluationTable) -> list[tuple[str, Path]]:
    """``(caption, file)`` of every CAM figure a WSOL record names that exists, in row / seed / network
    order."""
    found = []
    rows = [row for row in table.rows if row.records("wsol")]
    for row, label in zip(rows, row_labels(rows), strict=True):
        for run, record in row.records("wsol"):
            for network, entry in (record.get("networks") or {}).items():
                for name in (entry or {}).get("figures") or []:
                    path = run.path / str(name)
                    if path.is_file():
                        suffix = "" if network == ONLINE else f" ({network})"
                        found.append((f"{label} seed{run.seed}{suffix}", path))
    return found


def plot_cam_gallery(table: EvaluationTable, out: Path) -> Path | None:
    """The runs' CAM figures tiled (at most :data:`MAX_CAM_FIGURES`); None when no run has one."""
    import matplotlib.image

    figures = cam_figures(table)
    if not figures:
        return None
    shown = figures[:MAX_CAM_FIGURES]
    columns = min(len(shown), 3)
    lines = -(-len(shown) // columns)
    figure = Figure(figsize=(max(4.5 * columns, 8.0), 3.6 * lines), layout="constrained")
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        axes.set_axis_off()
        if index < len(shown):
            caption, path = shown[index]
            axes.imshow(matplotlib.image.imread(path))
            axes.set_title(caption, fontsize=8)
    more = f" (first {len(shown)} of {len(figures)})" if len(figures) > len(shown) else ""
    figure.suptitle(f"CAMs of the WSOL evaluation{more}: {table.title}", fontsize=9, x=0.01, ha="left")
    return _save(figure, out)


# ------------------------------------------------------------------------------------------------ all


def write_evaluation_plots(
    table_or_root: EvaluationTable | Path | str, out_dir: Path | str, weights: str = LAST
) -> list[Path]:
    """Draw every evaluation figure the records allow into ``out_dir`` (``attacks.png``, ``occlusion.png``,
    ``reliability.png``, ``cams.png``); returns the files written (none without records).

    ``table_or_root`` is an :class:`~mixbench.report.evaluations.EvaluationTable` or a runs folder, read with
    :func:`~mixbench.report.evaluations.build_evaluation_table` at ``weights``.
    """
    table = (
        table_or_root
        if isinstance(table_or_root, EvaluationTable)
        else build_evaluation_table(Path(table_or_root), weights)
    )
    out_dir = Path(out_dir)
    drawn = [
        plot_attacks(table, out_dir / "attacks.png"),
        plot_occlusion(table, out_dir / "occlusion.png"),
        plot_reliability(table, out_dir / "reliability.png"),
        plot_cam_gallery(table, out_dir / "cams.png"),
    ]
    return [path for path in drawn if path is not None]
