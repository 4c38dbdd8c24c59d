"""The benchmark's files: ``<device slug>.md`` (header, what the columns mean, the table) and ``.csv`` (one
line per row with the header's values repeated), rendered with :mod:`mixbench.report.render`."""

from __future__ import annotations

from pathlib import Path

from mixbench.atomic import atomic_write_text
from mixbench.bench.passes import passes_text
from mixbench.bench.results import BenchReport, BenchRow
from mixbench.report.render import csv_text, markdown_table

NO_VALUE = "—"

CSV_COLUMNS = (
    "model",
    "method",
    "status",
    "step_ms",
    "step_ms_q1",
    "step_ms_q3",
    "images_per_s",
    "ratio_to_vanilla",
    "ratio_low",
    "ratio_high",
    "versus_vanilla",
    "floor",
    "floor_low",
    "floor_high",
    "passes",
    "peak_memory_mb",
    "page_faults_per_step",
    "host_syncs_per_step",
    "cuda_syncs_per_step",
    "host_sync_sites",
    "launches_per_step",
    "gpu_busy_ms_per_step",
    "model_params",
    "method_params",
    "note",
    "device",
    "precision",
    "channels_last",
    "batch_size",
    "image_size",
    "steps",
    "torch",
    "git_commit",
    "peak_memory_of",
    "host_syncs_of",
)


def write_report(report: BenchReport, out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/<device slug>.md`` and ``.csv``, each written atomically."""
    markdown_path, csv_path = out_dir / f"{report.slug}.md", out_dir / f"{report.slug}.csv"
    atomic_write_text(to_markdown(report), markdown_path)
    atomic_write_text(to_csv(report), csv_path)
    return markdown_path, csv_path


def has_cuda_syncs(report: BenchReport) -> bool:
    """Whether the rows carry CUDA's sync debug mode's counts (a CUDA run): the table then shows them."""
    return any(row.cuda_syncs_per_step is not None for row in report.rows)


def to_markdown(report: BenchReport) -> str:
    """The Markdown file: title, header facts, what the columns mean, the table."""
    header = " · ".join(f"{key}: {value}" for key, value in report.facts.items())
    cuda = has_cuda_syncs(report)
    explanation = (
        "One step = one full training step as `tools/train.py` takes it (forward through the method, "
        "backward, optimizer step, after-step hook) on synthetic batches already on the device: the data "
        "pipeline is excluded. The rows of a model are timed round-robin, one step of each per round, the "
        "order rotating each round, so a change of the device's speed hits every row alike. Step time is the "
        "mean over the timed steps (methods drawing a branch per step cost differently on different steps); "
        "images/s = batch size / mean step time; × vanilla = the row's total time / vanilla's over the same "
        "rounds, with its 90% bootstrap interval over the rounds in brackets; vs vanilla: slower or faster "
        "only when that whole interval lies above or below 1, same when it contains 1 (not distinguishable "
        "by this run). Floor: the time of the network passes the method's step runs (its algorithm's: "
        "MixMethod.passes, in the units listed below the table, each timed on its own in the same rounds) / "
        "vanilla's, with its 90% interval; × vanilla above the floor is the implementation's own cost "
        "(mixing, solvers, the method's small networks, bookkeeping), — where a method's passes are not "
        "modelled (mixbench/bench/passes.py). Peak memory: "
        f"{report.memory_of}. Page faults / step: the process's minor page faults (getrusage) per timed "
        "step: host memory first touched during the step since the allocator took it from the system. "
        f"Host syncs / step: {report.host_syncs_of}; 0 means the step never waits for "
        "the device, and the note names the file:line of each sync. Launches / step (with --profile): CUDA "
        "kernel launches per step on a GPU, aten operator calls on a CPU, from 3 profiled untimed steps "
        "(mixbench/bench/profile.py); GPU busy / step (GPU only): the kernels' own device time per step over "
        "the same steps (a step much longer than that waits on the host issuing kernels). Method params: the "
        "method's own trainable parts. Written by "
        "`python tools/bench.py`."
    )
    columns = [
        "model",
        "method",
        "step (ms)",
        "images/s",
        "× vanilla [90% interval]",
        "vs vanilla",
        "floor × vanilla [90%]",
        "peak memory (MB)",
        "page faults / step",
        "host syncs / step",
    ]
    if cuda:
        columns.append("CUDA syncs / step")
    profiled = any(row.launches_per_step is not None for row in report.rows)
    if profiled:
        columns.append("launches / step")
    busy = any(row.gpu_busy_ms_per_step is not None for row in report.rows)
    if busy:
        columns.append("GPU busy / step (ms)")
    columns += ["model params (M)", "method params", "note"]
    align = ["l", "l"] + ["r"] * (len(columns) - 3) + ["l"]
    cells = [_markdown_cells(row, cuda, profiled, busy) for row in report.rows]
    table = markdown_table(columns, cells, align=align)
    text = f"# Training-step cost on {report.device}\n\n{header}\n\n{explanation}\n\n{table}"
    if report.units:
        text += "\n" + units_markdown(report)
    if report.loops:
        text += "\n" + loops_markdown(report)
    return text


def units_markdown(report: BenchReport) -> str:
    """The pass units behind the floors (time and ratio to vanilla's step, per model) and each method's
    passes in them."""
    explanation = (
        "Each unit timed on its own on the model and batch of the rows, in the same rounds (train mode, the "
        "run's autocast; mixbench/bench/passes.py); step = vanilla's row. A method's floor is the sum of its "
        "passes' units."
    )
    columns = ["model", "unit", "time (ms)", "× vanilla [90% interval]"]
    rows = [
        [
            unit.model,
            unit.unit,
            f"{unit.ms:.1f}",
            f"{unit.ratio:.2f} [{unit.ratio_low:.2f}, {unit.ratio_high:.2f}]",
        ]
        for unit in report.units
    ]
    table = markdown_table(columns, rows, align=["l", "l", "r", "r"])
    methods: dict[str, str] = {}
    for row in report.rows:
        if row.passes is not None:
            methods.setdefault(row.method, passes_text(row.passes))
    listing = "\n".join(f"- {method}: {text}" for method, text in methods.items())
    return f"\n## Pass units\n\n{explanation}\n\n{table}\n\nPasses per step:\n\n{listing}\n"


def loops_markdown(report: BenchReport) -> str:
    """The trainer's loop (data path included) against a bare fwd/bwd/step loop, one line per model."""
    first = report.loops[0]
    explanation = (
        "Vanilla through the trainer's own per-batch path -- the device-resident loader over a synthetic "
        f"CIFAR-shaped set ({first.dataset_images:,} uint8 images; shuffle, random crop and flip, "
        "normalisation on the device) feeding the training step with its lr schedule, and the trainer's "
        "finite check of the loss every 50 steps -- against a bare loop on a fixed batch (forward, "
        "cross-entropy, zero_grad, backward, optimizer step: nothing else). The loops alternate in windows "
        f"of {first.window} steps ({first.windows} windows each); step = median of window time / steps "
        "[quartiles]; share = median of the paired bare / trainer time ratios [quartiles] "
        "(mixbench/bench/data_path.py)."
    )
    columns = [
        "model",
        "bare step (ms)",
        "bare images/s",
        "trainer step (ms)",
        "trainer images/s",
        "trainer speed / bare",
    ]
    rows = [
        [
            loop.model,
            f"{loop.bare_ms:.2f} [{loop.bare_ms_q1:.2f}, {loop.bare_ms_q3:.2f}]",
            f"{loop.bare_images_per_s:,.0f}",
            f"{loop.trainer_ms:.2f} [{loop.trainer_ms_q1:.2f}, {loop.trainer_ms_q3:.2f}]",
            f"{loop.trainer_images_per_s:,.0f}",
            f"{loop.share_of_bare:.3f} [{loop.share_q1:.3f}, {loop.share_q3:.3f}]",
        ]
        for loop in report.loops
    ]
    table = markdown_table(columns, rows, align=["l"] + ["r"] * (len(columns) - 1))
    return f"\n## The trainer's loop against a bare loop\n\n{explanation}\n\n{table}"


def _markdown_cells(row: BenchRow, cuda: bool, profiled: bool, busy: bool = False) -> list[str]:
    cells = [
        row.model,
        row.method,
        _number(row.step_ms, "{:.1f}"),
        _number(row.images_per_s, "{:.0f}"),
        _ratio(row),
        row.versus_vanilla() or ("—" if row.method != "vanilla" or row.step_ms is None else ""),
        _floor(row),
        _number(row.peak_memory_mb, "{:.0f}"),
        _number(row.page_faults_per_step, "{:,.0f}"),
        _syncs(row.host_syncs_per_step),
    ]
    if cuda:
        cells.append(_syncs(row.cuda_syncs_per_step))
    if profiled:
        cells.append(_number(row.launches_per_step, "{:,.0f}"))
    if busy:
        cells.append(_number(row.gpu_busy_ms_per_step, "{:.2f}"))
    model_millions = row.model_params / 1e6 if row.model_params is not None else None
    cells += [_number(model_millions, "{:.2f}"), _number(row.method_params, "{:,}"), _note(row)]
    return cells


def _ratio(row: BenchRow) -> str:
    """``1.23 [1.18, 1.29]``: the ratio and its bootstrap interval (vanilla: ``1.00``)."""
    if row.ratio_to_vanilla is None:
        return NO_VALUE
    if row.method == "vanilla" or row.ratio_low is None:
        return f"{row.ratio_to_vanilla:.2f}"
    return f"{row.ratio_to_vanilla:.2f} [{row.ratio_low:.2f}, {row.ratio_high:.2f}]"


def _floor(row: BenchRow) -> str:
    """``1.66 [1.62, 1.70]``: the passes' floor and its interval (``1.00`` for a vanilla step's passes)."""
    if row.floor is None:
        return NO_VALUE
    if row.floor_low is None or row.floor_low == row.floor_high:
        return f"{row.floor:.2f}"
    return f"{row.floor:.2f} [{row.floor_low:.2f}, {row.floor_high:.2f}]"


def _syncs(per_step: float | None) -> str:
    """``0`` for a step that never syncs (the case to aim for), else two decimals."""
    if per_step == 0:
        return "0"
    return _number(per_step, "{:.2f}")


def _note(row: BenchRow) -> str:
    notes = [row.note] if row.note else []
    if row.host_sync_sites:
        notes.append("host syncs at " + sync_sites_text(row.host_sync_sites))
    return "; ".join(notes)


def sync_sites_text(sites: dict[str, float]) -> str:
    """``mixbench/methods/sinkhorn.py:87 (5.00/step), ...``."""
    return ", ".join(f"{site} ({per_step:.2f}/step)" for site, per_step in sites.items())


def _number(value: float | int | None, pattern: str) -> str:
    return NO_VALUE if value is None else pattern.format(value)


def to_csv(report: BenchReport) -> str:
    """The CSV file: one line per row, numbers rounded, the header's values repeated on every line."""
    facts = report.facts
    constant = {
        "device": report.device,
        "precision": facts["precision"],
        "channels_last": facts["channels_last"],
        "batch_size": facts["batch size"],
        "image_size": facts["image size"].removesuffix(" px"),
        "steps": facts["steps timed"].split()[0],
        "torch": facts["torch"],
        "git_commit": facts["git commit"],
        "peak_memory_of": report.memory_of,
        "host_syncs_of": report.host_syncs_of,
    }
    rows = [
        {
            "model": row.model,
            "method": row.method,
            "status": row.status,
            "step_ms": _rounded(row.step_ms, 3),
            "step_ms_q1": _rounded(row.step_ms_q1, 3),
            "step_ms_q3": _rounded(row.step_ms_q3, 3),
            "images_per_s": _rounded(row.images_per_s, 1),
            "ratio_to_vanilla": _rounded(row.ratio_to_vanilla, 4),
            "ratio_low": _rounded(row.ratio_low, 4),
            "ratio_high": _rounded(row.ratio_high, 4),
            "versus_vanilla": row.versus_vanilla(),
            "floor": _rounded(row.floor, 4),
            "floor_low": _rounded(row.floor_low, 4),
            "floor_high": _rounded(row.floor_high, 4),
            "passes": passes_text(row.passes),
            "peak_memory_mb": _rounded(row.peak_memory_mb, 1),
            "page_faults_per_step": _rounded(row.page_faults_per_step, 1),
            "host_syncs_per_step": _rounded(row.host_syncs_per_step, 2),
            "cuda_syncs_per_step": _rounded(row.cuda_syncs_per_step, 2),
            "host_sync_sites": sync_sites_text(row.host_sync_sites),
            "launches_per_step": _rounded(row.launches_per_step, 0),
            "gpu_busy_ms_per_step": _rounded(row.gpu_busy_ms_per_step, 3),
            "model_params": "" if row.model_params is None else row.model_params,
            "method_params": "" if row.method_params is None else row.method_params,
            "note": row.note,
            **constant,
        }
        for row in report.rows
    ]
    return csv_text(CSV_COLUMNS, rows)


def _rounded(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"
