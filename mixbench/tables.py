"""Tables from run directories: one row per configuration, seeds aggregated.

A configuration is the folder that holds the ``seed<k>`` run directories
(``<data>/<model>/<method>/<schedule>``).  For each seed we take the median top-1 over the last
``metric_window`` epochs from its ``summary.json``; a row reports their mean ± sample standard deviation over
the complete seeds, how many seeds are complete, and the runs that are not (running or failed) — they are
counted and shown, never averaged in.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    data: str
    model: str
    method: str
    schedule: str
    window: int
    medians: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # e.g. EMA medians of learned methods
    incomplete: list[str] = field(default_factory=list)  # "seed1: running 12/800"
    devices: set[str] = field(default_factory=set)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.medians) if self.medians else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.medians) if len(self.medians) > 1 else None


METHOD_ORDER = ("vanilla", "mixup", "cutmix", "manifoldmix")


def _sort_key(row: Row) -> tuple:
    base = row.method.split(",")[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (row.data, row.model, row.schedule, rank, row.method)


def find_summaries(root: Path) -> list[Path]:
    return sorted(path for path in Path(root).rglob("summary.json") if not any(p.startswith(".") for p in path.parts))


def collect_rows(root: Path) -> list[Row]:
    rows: dict[Path, Row] = {}
    for path in find_summaries(root):
        summary = json.loads(path.read_text())
        configuration = path.parent.parent
        window = int(summary["metric_window"])
        row = rows.setdefault(configuration, _row_for(configuration, Path(root), summary, window))
        seed = f"seed{summary['seed']}"
        row.devices.add(f"{summary.get('device')}, {summary.get('precision')}")
        if summary["status"] != "complete":
            row.incomplete.append(f"{seed}: {summary['status']} {summary['epochs_done']}/{summary['epochs']}")
            continue
        row.medians.append(summary[f"median_last{window}_top1"])
        row.best.append(summary["best_top1"])
        row.last.append(summary["last_top1"])
        for label in summary.get("evaluated", []):
            if label != "online":
                row.extra.setdefault(label, []).append(summary[f"{label}_median_last{window}_top1"])
    return sorted(rows.values(), key=_sort_key)


def _row_for(configuration: Path, root: Path, summary: dict[str, Any], window: int) -> Row:
    parts = configuration.relative_to(root).parts[-4:] if len(configuration.relative_to(root).parts) >= 4 else None
    data, model, method, schedule = parts or (summary["data"], summary["model"], summary["method"], summary["schedule"])
    return Row(data=data, model=model, method=method, schedule=schedule, window=window)


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def to_markdown(rows: list[Row]) -> str:
    windows = sorted({row.window for row in rows})
    metric = f"median top-1, last {'/'.join(map(str, windows))} epochs"
    header = ["data", "model", "method", "schedule", f"{metric} (mean ± std)", "seeds", "best", "last", "not complete"]
    labels = sorted({label for row in rows for label in row.extra})
    header[5:5] = [f"{label} {metric}" for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.data, row.model, row.method, row.schedule, _fmt(row.mean, row.std)]
        cells += [_fmt(*_mean_std(row.extra.get(label, []))) for label in labels]
        cells += [
            str(len(row.medians)),
            _fmt(*_mean_std(row.best)),
            _fmt(*_mean_std(row.last)),
            "; ".join(row.incomplete) or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({device for row in rows for device in row.devices})
    lines += ["", f"Hardware: {'; '.join(devices)}."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["data", "model", "method", "schedule", "window", "mean", "std", "seeds", "best_mean", "last_mean", "not_complete"])
    for row in rows:
        writer.writerow([
            row.data, row.model, row.method, row.schedule, row.window,
            _round(row.mean), _round(row.std), len(row.medians),
            _round(_mean_std(row.best)[0]), _round(_mean_std(row.last)[0]), "; ".join(row.incomplete),
        ])
    return buffer.getvalue()


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)
