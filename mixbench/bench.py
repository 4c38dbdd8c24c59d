"""The cost of a training step: every method × every model, timed on the current device.

One timed unit is one full training step exactly as :mod:`mixbench.engine.trainer` takes it: the forward pass
through ``method.training_step`` under the run's autocast (bf16 on CUDA, none on CPU), ``zero_grad``,
``backward``, gradient clipping when the recipe asks for it, ``optimizer.step`` over the model's and the
method's own parameter groups, and ``method.after_step`` (EMA updates).  The model, method and optimizer are
built by the trainer's own functions from configs composed with Hydra's compose API, so ``model=``, ``data=``,
``method=`` and any ``key=value`` override mean exactly what they mean in ``tools/train.py``.

The batches are synthetic and already on the device: uniform [0, 1) pixels normalised with the data config's
mean and std, at its image size (or ``--image-size``), labels uniform over its classes, in channels_last when
the run would use it.  The data pipeline (reading, augmentation, host-to-device copies) is therefore excluded,
and no dataset needs to exist on disk.

Per row: ``warmup`` untimed steps, then ``steps`` steps each timed alone with ``time.perf_counter`` (with
``torch.cuda.synchronize`` before and after on a GPU); the row reports the median step time, images/s at that
median, the ratio of its step time to vanilla's on the same model (vanilla is always measured), the peak
memory and the parameters of the model and of the method's own trainable parts (a Mix Block, a decoder; an
EMA copy is not trainable and not counted).  Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU,
reset before the row's objects are built; on a CPU it is the growth of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set at the row's start, after freed
memory has been handed back to the system; where that is not available the column says ``—``.  Vanilla is
timed again after each model's other rows and its row notes the second time: when the two differ by more than
15% the header warns that the device's speed changed during the run (on a shared machine, other processes).

A method that needs weights mixbench does not ship (``needs_external_weights``) is listed as skipped with the
reason; a method that a model cannot serve (a feature-space method on a transformer that only exposes its
input) is listed as ``n/a`` with the reason; a row that runs out of GPU memory is listed as failed.  No
requested combination is silently dropped.
"""

from __future__ import annotations

import csv
import ctypes
import gc
import io
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mixbench.atomic import atomic_write_text
from mixbench.config import CONFIG_DIR, ConfigError, check_group_choice, validate
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.runtime import Runtime, resolve_runtime
from mixbench.engine.step import TrainingStep, build_training_step
from mixbench.methods import METHODS
from mixbench.models import StageUnavailableError

REFERENCE_METHOD = "vanilla"
SELECTED_BY_FLAGS = {"data": "--data", "model": "--models", "method": "--methods"}
NO_VALUE = "—"
UNSTABLE_DRIFT = 0.15  # vanilla re-timed at the end differing by more than this marks the run as unreliable


@dataclass(frozen=True)
class DeviceDefaults:
    """What a plain ``tools/bench.py`` measures on a kind of device."""

    models: tuple[str, ...]
    batch_size: int
    steps: int
    warmup: int


DEFAULTS = {
    # All methods on the three CIFAR CNNs: 86 s on an H100 (bf16, channels_last, torch 2.11).
    "cuda": DeviceDefaults(models=("r18", "wrn16_8", "rx50"), batch_size=128, steps=20, warmup=5),
    # The published PreActResNet18 at CIFAR's 32 px, a small batch: 6 minutes on 2 idle AMD EPYC cores.
    "cpu": DeviceDefaults(models=("r18",), batch_size=32, steps=5, warmup=2),
}


@dataclass
class BenchRequest:
    """A resolved benchmark: every field has its final value."""

    methods: list[str]
    models: list[str]
    data: str
    batch_size: int
    image_size: int | None  # None: the data config's size (or the schedule's train_size)
    steps: int
    warmup: int
    compile: bool
    overrides: list[str] = field(default_factory=list)  # free key=value overrides applied to every row


@dataclass
class BenchRow:
    model: str
    method: str
    status: str  # "ok", "n/a", "skipped" or "failed"
    note: str = ""
    step_ms: float | None = None
    images_per_s: float | None = None
    ratio_to_vanilla: float | None = None
    peak_memory_mb: float | None = None
    model_params: int | None = None
    method_params: int | None = None


@dataclass
class BenchReport:
    rows: list[BenchRow]
    device: str
    slug: str
    facts: dict[str, str]  # the header's named values, in order
    memory_of: str  # what the peak memory column measures


# -- the request -------------------------------------------------------------------------------------------
def resolve_request(
    methods: str | None,
    models: str | None,
    data: str,
    batch_size: int | None,
    image_size: int | None,
    steps: int | None,
    warmup: int | None,
    compile_model: bool,
    overrides: list[str],
) -> tuple[BenchRequest, Runtime]:
    """Fill what was not given with the defaults of the device the overrides select (``device=auto``: CUDA
    when visible); raise :class:`ConfigError` with one line for anything invalid."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override:
            raise ConfigError(f"'{override}' is not a key=value override; flags start with --")
        if key in SELECTED_BY_FLAGS:
            raise ConfigError(f"select {key} with {SELECTED_BY_FLAGS[key]}, not the override {override}")
    check_group_choice("data", data)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = _compose([f"data={data}", *overrides])
    runtime = resolve_runtime(base)
    defaults = DEFAULTS["cuda" if runtime.device.type == "cuda" else "cpu"]
    model_names = _split(models) if models else list(defaults.models)
    for name in model_names:
        check_group_choice("model", name)
    method_names = sorted(METHODS) if methods in (None, "all") else _split(methods)
    for name in method_names:
        check_group_choice("method", name)
    method_names = [REFERENCE_METHOD] + [
        name for name in dict.fromkeys(method_names) if name != REFERENCE_METHOD
    ]
    request = BenchRequest(
        methods=method_names,
        models=list(dict.fromkeys(model_names)),
        data=data,
        batch_size=batch_size if batch_size is not None else defaults.batch_size,
        image_size=image_size,
        steps=steps if steps is not None else defaults.steps,
        warmup=warmup if warmup is not None else defaults.warmup,
        compile=compile_model,
        overrides=list(overrides),
    )
    _check_numbers(request)
    return request, runtime


def _split(names: str) -> list[str]:
    return [name.strip() for name in names.split(",") if name.strip()]


def _check_numbers(request: BenchRequest) -> None:
    if request.batch_size < 2:
        raise ConfigError(f"--batch-size must be at least 2 (mixing pairs samples), got {request.batch_size}")
    if request.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {request.steps}")
    if request.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {request.warmup}")
    if request.image_size is not None and request.image_size < 8:
        raise ConfigError(f"--image-size must be at least 8 px, got {request.image_size}")


def _compose(overrides: list[str]) -> DictConfig:
    try:
        return compose(config_name="train", overrides=overrides)
    except Exception as error:  # Hydra and OmegaConf errors: one line
        raise ConfigError(
            f"the overrides {' '.join(overrides)} do not compose: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def row_overrides(request: BenchRequest, model: str, method: str) -> list[str]:
    """The ``tools/train.py`` overrides of one row."""
    overrides = [f"data={request.data}", f"model={model}", f"method={method}", *request.overrides]
    overrides += [f"schedule.batch_size={request.batch_size}", f"compile={str(request.compile).lower()}"]
    if request.image_size is not None:  # the network's input and the data's size (AlignMixup/AE's decoder)
        overrides += [f"data.image_size={request.image_size}", f"schedule.train_size={request.image_size}"]
    return overrides


def compose_row_configs(request: BenchRequest) -> dict[tuple[str, str], DictConfig]:
    """Every row's config, composed and validated, and every model built once on the CPU, before anything is
    timed: an override that does not fit a model fails here with one line, not after minutes of timing."""
    configs = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for model in request.models:
            for method in request.methods:
                cfg = _compose(row_overrides(request, model, method))
                validate(cfg)
                configs[model, method] = cfg
    cpu = Runtime.cpu()
    for model in request.models:
        build_model_and_method(configs[model, REFERENCE_METHOD], cpu)  # vanilla runs on every model
    return configs


# -- one row -----------------------------------------------------------------------------------------------
def synthetic_batch(cfg: DictConfig, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised image batch of the config's size and class count, already on the device."""
    size, batch = input_size(cfg), int(cfg.schedule.batch_size)
    device = runtime.device
    mean = torch.tensor(list(cfg.data.mean), device=device).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std), device=device).view(1, -1, 1, 1)
    x = (torch.rand(batch, 3, size, size, device=device) - mean) / std
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, int(cfg.data.num_classes), (batch,), device=device)
    return x, y


def bench_row(cfg: DictConfig, runtime: Runtime, steps: int, warmup: int) -> BenchRow:
    """Time ``steps`` training steps of one configuration after ``warmup`` untimed ones."""
    model_name, method_name = str(cfg.model.name), str(cfg.method.name)
    method_class = METHODS[method_name]
    memory = PeakMemory(runtime.device)
    memory.start()
    torch.manual_seed(int(cfg.seed))
    try:
        model, method = build_model_and_method(cfg, runtime)
    except ConfigError as error:
        if isinstance(error.__cause__, StageUnavailableError):
            return BenchRow(model_name, method_name, "n/a", note=f"n/a: {error.__cause__}")
        if getattr(method_class, "needs_external_weights", False):
            reason = str(error.__cause__ or error).split(": ", 1)[0]
            return BenchRow(model_name, method_name, "skipped", note=f"skipped: {reason}")
        raise
    step = build_training_step(cfg, runtime, model, method, updates_per_epoch=warmup + steps)
    x, y = synthetic_batch(cfg, runtime)
    row = BenchRow(
        model_name,
        method_name,
        "ok",
        model_params=sum(p.numel() for p in model.parameters()),
        method_params=sum(p.numel() for p in method.parameters() if p.requires_grad),
    )
    try:
        for _ in range(warmup):
            step(x, y)
        seconds = [_timed(step, x, y, runtime.device) for _ in range(steps)]
        loss_sum = step.sums.loss
    except torch.cuda.OutOfMemoryError:
        row.status, row.note = "failed", f"failed: out of GPU memory at batch {cfg.schedule.batch_size}"
        return row
    finally:
        peak = memory.peak_mb()
        del step, model, method
    row.step_ms = 1000.0 * statistics.median(seconds)
    row.images_per_s = int(cfg.schedule.batch_size) / statistics.median(seconds)
    row.peak_memory_mb = peak
    if not math.isfinite(float(loss_sum)):
        row.note = "loss became non-finite during the timed steps"
    return row


def _timed(step: TrainingStep, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


class PeakMemory:
    """Peak memory of one row: CUDA allocated bytes, or the growth of the host's peak resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline_kib: int | None = None

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_freed_host_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
            self.baseline_kib = _proc_status_kib("VmRSS")
        except OSError:
            self.baseline_kib = None

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.baseline_kib is None:
            return None
        try:
            return max(_proc_status_kib("VmHWM") - self.baseline_kib, 0) / 1024
        except OSError:
            return None


def _proc_status_kib(field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field_name}")
    return int(match.group(1))


def _release_freed_host_memory() -> None:
    """Hand memory freed by the previous row back to the system (glibc), so that it shows as growth again."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -- the whole benchmark -----------------------------------------------------------------------------------
def run_benchmark(
    request: BenchRequest, runtime: Runtime, log: Callable[[str], None] | None = None
) -> BenchReport:
    """Measure every row of ``request``; ratios are to vanilla on the same model."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    configs = compose_row_configs(request)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # One untimed vanilla step first: one-off process costs (thread pools, kernel caches, the CUDA context)
    # would otherwise land in the first row's time and memory.
    bench_row(configs[request.models[0], REFERENCE_METHOD], runtime, steps=1, warmup=1)
    started_at = time.strftime("%Y-%m-%d %H:%M")
    rows: list[BenchRow] = []
    drifts: list[float] = []
    for model in request.models:
        model_rows = []
        for method in request.methods:
            row = bench_row(configs[model, method], runtime, request.steps, request.warmup)
            model_rows.append(row)
            timing = f"{row.step_ms:.1f} ms" if row.step_ms is not None else row.note
            log(f"{model} {method}: {timing}")
        reference = model_rows[0]  # vanilla comes first
        for row in model_rows:
            if row.step_ms is not None and reference.step_ms is not None:
                row.ratio_to_vanilla = row.step_ms / reference.step_ms
        if len(model_rows) > 1 and reference.step_ms is not None:
            drifts.append(
                _retime_reference(reference, configs[model, REFERENCE_METHOD], runtime, request, log)
            )
        rows += model_rows
    first = configs[request.models[0], request.methods[0]]
    device = device_name(runtime.device)
    facts = {
        "device": device,
        "torch": torch.__version__,
        "precision": "bf16 autocast" if runtime.autocast_dtype is not None else "fp32",
        "channels_last": str(runtime.channels_last).lower(),
        "compile": str(runtime.compile).lower(),
        "batch size": str(request.batch_size),
        "image size": f"{input_size(first)} px",
        "data": f"{request.data} ({int(first.data.num_classes)} classes, synthetic)",
        "optimizer": f"{first.schedule.optimizer.name} (schedule {first.schedule.name})",
        "steps timed": f"{request.steps} after {request.warmup} warm-up",
        "date": started_at,
        "git commit": git_commit(),
    }
    if runtime.device.type == "cpu" and load is not None:  # other processes share the cores' time
        facts["load average (1 min)"] = f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    if request.overrides:
        facts["overrides"] = " ".join(request.overrides)
    if drifts and max(abs(drift) for drift in drifts) > UNSTABLE_DRIFT:
        worst = max(drifts, key=abs)
        facts["warning"] = (
            f"vanilla re-timed after the other methods differs by {100 * worst:+.0f}%: the device's speed changed "
            "during the run (other processes?), so the step times and ratios are not reliable"
        )
    memory_of = (
        "torch.cuda.max_memory_allocated, reset before each row is built"
        if runtime.device.type == "cuda"
        else "growth of the process's peak resident set (VmHWM) over its size at the row's start, approximate"
    )
    return BenchReport(rows, device, device_slug(runtime.device), facts, memory_of)


def _retime_reference(
    reference: BenchRow, cfg: DictConfig, runtime: Runtime, request: BenchRequest, log: Callable[[str], None]
) -> float:
    """Time vanilla again after the model's other rows; note it on vanilla's row and return the relative
    change, a check that the device kept its speed while the rows were timed."""
    again = bench_row(cfg, runtime, request.steps, request.warmup)
    drift = again.step_ms / reference.step_ms - 1.0
    reference.note = f"re-timed after the other methods: {again.step_ms:.1f} ms ({100 * drift:+.0f}%)"
    log(f"{reference.model} vanilla again: {again.step_ms:.1f} ms")
    return drift


def write_report(report: BenchReport, out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/<device slug>.md`` and ``.csv``, each written atomically."""
    markdown_path, csv_path = out_dir / f"{report.slug}.md", out_dir / f"{report.slug}.csv"
    atomic_write_text(to_markdown(report), markdown_path)
    atomic_write_text(to_csv(report), csv_path)
    return markdown_path, csv_path


# -- the device and the commit -----------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({_cpu_model()}), {threads} thread{'s' if threads > 1 else ''}"


def device_slug(device: torch.device) -> str:
    """``nvidia-h100-80gb-hbm3`` for a GPU, ``cpu-2-threads`` for the CPU."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{torch.get_num_threads()}-threads"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The short commit of the working tree, marked when tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here
        )
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=here,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode != 0 or not commit.stdout.strip():
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if changes.stdout.strip() else "")


# -- rendering ---------------------------------------------------------------------------------------------
def to_markdown(report: BenchReport) -> str:
    header = " · ".join(f"{key}: {value}" for key, value in report.facts.items())
    lines = [
        f"# Training-step cost on {report.device}",
        "",
        header,
        "",
        "One step = one full training step as `tools/train.py` takes it (forward through the method, backward, "
        "optimizer step, after-step hook) on synthetic batches already on the device: the data pipeline is "
        "excluded. Step time is the median over the timed steps; images/s = batch size / median step time; "
        f"× vanilla = step time / vanilla's on the same model. Peak memory: {report.memory_of}. Method params: the "
        "method's own trainable parts. Written by `python tools/bench.py`.",
        "",
        "| model | method | step (ms) | images/s | × vanilla | peak memory (MB) | model params (M) | method params | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report.rows:
        cells = [
            row.model,
            row.method,
            _number(row.step_ms, "{:.1f}"),
            _number(row.images_per_s, "{:.0f}"),
            _number(row.ratio_to_vanilla, "{:.2f}"),
            _number(row.peak_memory_mb, "{:.0f}"),
            _number(row.model_params / 1e6 if row.model_params is not None else None, "{:.2f}"),
            _number(row.method_params, "{:,}"),
            row.note,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | int | None, pattern: str) -> str:
    return NO_VALUE if value is None else pattern.format(value)


CSV_COLUMNS = (
    "model",
    "method",
    "status",
    "step_ms",
    "images_per_s",
    "ratio_to_vanilla",
    "peak_memory_mb",
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
)


def to_csv(report: BenchReport) -> str:
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
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(
            {
                "model": row.model,
                "method": row.method,
                "status": row.status,
                "step_ms": _rounded(row.step_ms, 3),
                "images_per_s": _rounded(row.images_per_s, 1),
                "ratio_to_vanilla": _rounded(row.ratio_to_vanilla, 4),
                "peak_memory_mb": _rounded(row.peak_memory_mb, 1),
                "model_params": "" if row.model_params is None else row.model_params,
                "method_params": "" if row.method_params is None else row.method_params,
                "note": row.note,
                **constant,
            }
        )
    return buffer.getvalue()


def _rounded(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"
