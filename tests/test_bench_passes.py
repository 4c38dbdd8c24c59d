"""A step's floor (mixbench/bench/passes.py): every method's declared passes are the network passes its step
really runs, each pass unit does the work its name says, and the floor is the declared sum of the units'
times.

The per-method check counts, over real training steps built as the trainer builds them (digits at 16 px,
PreActResNet18 of width 8, batch 4), the calls of the first and of the last stage of the online network and
of its EMA teacher, with and without gradient: a forward from the input starts at the first stage, a forward
to the logits ends at the last one, ``stages 1-k`` starts without ending.
"""

from __future__ import annotations

import csv
from collections import Counter

import pytest
import torch
from torch import nn

from mixbench.bench import benchmark
from mixbench.bench.benchmark import run_benchmark
from mixbench.bench.passes import floor_seconds, passes_text, prepare_units, unit_pass, units_needed
from mixbench.bench.report import write_report
from mixbench.engine.runtime import resolve_runtime
from mixbench.methods import METHODS
from mixbench.methods.base import (
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_INPUT,
    FORWARD_NO_GRAD,
    STEP,
    add_passes,
    features_no_grad,
)
from mixbench.models import build_model
from tests.test_bench import _request
from tests.test_host_syncs import batch, built_step, method_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py

STEPS = 2
EXTERNAL = {name for name, cls in METHODS.items() if getattr(cls, "needs_external_weights", False)}
# switch draws a method per step: its passes are an expectation, checked on its own below
CHECKED = sorted(set(METHODS) - EXTERNAL - {"switch"})
VARIANTS = [
    ("sumix", ["method.base=puzzlemix"]),
    ("sumix", ["method.base=automix"]),
    ("puzzlemix", ["method.clean_lam=1.0"]),
    ("comixup", ["method.clean_lam=0.0"]),
]


def expected_calls(passes: dict[str, float]) -> Counter:
    """Starts and ends of forwards, with and without gradient, that ``passes`` imply per step."""
    with_grad = sum(
        passes.get(unit, 0.0) for unit in (STEP, FORWARD_BACKWARD, FORWARD_BACKWARD_INPUT, FORWARD)
    )
    features = sum(count for unit, count in passes.items() if unit.startswith("stages 1-"))
    no_grad = passes.get(FORWARD_NO_GRAD, 0.0)
    counts = Counter(
        {
            ("start", True): with_grad,
            ("end", True): with_grad,
            ("start", False): no_grad + features,
            ("end", False): no_grad,
        }
    )
    return +counts  # zero counts dropped


def forward_calls(method: str, overrides: list[str]) -> tuple[Counter, dict[str, float]]:
    """Per step: forwards started/ended (by grad mode) in the online network and its teacher, and the
    method's declared passes."""
    step = built_step(method_config(method, *overrides))
    networks = [step.model]
    teacher = getattr(step.method, "ema", None) or getattr(getattr(step.method, "base", None), "ema", None)
    if teacher is not None:
        networks.append(teacher.module)
    firsts = {id(net.stage_modules()[0]) for net in networks}
    lasts = {id(net.stage_modules()[-1]) for net in networks}
    calls: Counter = Counter()

    def count(module: nn.Module, args: tuple) -> None:
        if id(module) in firsts:
            calls["start", torch.is_grad_enabled()] += 1
        if id(module) in lasts:
            calls["end", torch.is_grad_enabled()] += 1

    x, y = batch()
    step(x, y)  # a first step outside the count (lazy set-up)
    handle = nn.modules.module.register_module_forward_pre_hook(count)
    try:
        for _ in range(STEPS):
            step(x, y)
    finally:
        handle.remove()
    per_step = Counter({key: value / STEPS for key, value in calls.items()})
    return per_step, step.method.passes()


@pytest.mark.parametrize(
    ("method", "overrides"),
    [(name, []) for name in CHECKED] + VARIANTS,
    ids=[*CHECKED, *(f"{name}[{','.join(extra)}]" for name, extra in VARIANTS)],
)
def test_a_methods_declared_passes_are_the_forwards_its_step_runs(method: str, overrides: list[str]) -> None:
    calls, passes = forward_calls(method, overrides)
    assert passes is not None
    assert calls == expected_calls(passes), f"{method} runs {dict(calls)}, declares {passes}"


def test_switch_declares_its_choices_passes_weighted_by_their_probabilities() -> None:
    step = built_step(method_config("switch", "method.choices=[mixup,puzzlemix]", "method.probs=[0.25,0.75]"))
    assert step.method.passes() == {STEP: 1.0, FORWARD_BACKWARD_INPUT: 0.75}


def test_label_smoothing_adds_the_clean_losss_own_backward_through_the_saliency_forward() -> None:
    step = built_step(method_config("comixup", "schedule.label_smoothing=0.1"))
    assert step.method.passes() == {
        STEP: 1.0,
        FORWARD_BACKWARD_INPUT: 1.0,
        FORWARD_BACKWARD: 1.0,
        FORWARD: -1.0,
    }


def test_the_floor_is_the_declared_sum_of_the_units_paired_by_round() -> None:
    vanilla = [1.0, 2.0]
    units = {FORWARD_BACKWARD_INPUT: [0.5, 0.75], features_no_grad(3): [0.25, 0.5]}
    counts = {STEP: 1.0, FORWARD_BACKWARD_INPUT: 2.0, features_no_grad(3): 1.0}
    assert floor_seconds(counts, vanilla, units) == [1.0 + 1.0 + 0.25, 2.0 + 1.5 + 0.5]
    assert units_needed([counts, None, {STEP: 1.0}]) == sorted([FORWARD_BACKWARD_INPUT, features_no_grad(3)])
    assert add_passes({STEP: 1.0, FORWARD: 1.0}, {FORWARD: -1.0}) == {STEP: 1.0}
    assert passes_text({STEP: 1.0, FORWARD_BACKWARD: 2.0}) == "step; 2× forward + backward"


def test_each_unit_computes_the_gradients_its_name_says_and_leaves_no_state() -> None:
    cfg = method_config("vanilla")
    runtime = resolve_runtime(cfg)
    torch.manual_seed(0)
    model = build_model("r18", 10, 16, width=8)
    x, y = batch()
    weight = model.stage_modules()[0].parameters().__next__()
    seen: list[str] = []
    weight.register_hook(lambda grad: seen.append("weight") or grad)
    head_calls: list[bool] = []
    model.stage_modules()[-1].register_forward_pre_hook(lambda module, args: head_calls.append(True))
    for unit, weights, reaches_end in [
        (FORWARD_BACKWARD, True, True),
        (FORWARD_BACKWARD_INPUT, False, True),
        (FORWARD, False, True),
        (FORWARD_NO_GRAD, False, True),
        (features_no_grad(3), False, False),
    ]:
        seen.clear(), head_calls.clear()
        unit_pass(unit, model, runtime)(x, y)
        assert (seen == ["weight"]) == weights, unit
        assert bool(head_calls) == reaches_end, unit
    assert all(p.grad is None for p in model.parameters())  # returned, never accumulated
    head_calls.clear()
    prepared = prepare_units([FORWARD_NO_GRAD], model.eval(), runtime, x, y, warmup=2)
    assert model.training and len(head_calls) == 2  # units run in train mode, warmed up as asked
    assert prepared[0].seconds == []  # the warm-up is not timed
    with pytest.raises(ValueError, match="unknown pass unit"):
        unit_pass("backward", model, runtime)


def test_the_bench_times_the_units_a_model_needs_and_writes_each_rows_floor(tmp_path) -> None:
    request, runtime = _request("puzzlemix,mixup", "r18", ["model.width=4"])
    report = run_benchmark(request, runtime, log=lambda message: None)
    rows = {row.method: row for row in report.rows}
    assert rows["vanilla"].floor == 1.0 and rows["mixup"].floor == 1.0  # a vanilla step's passes
    assert [unit.unit for unit in report.units] == [FORWARD_BACKWARD_INPUT]  # step is vanilla's own row
    unit = report.units[0]
    assert rows["puzzlemix"].floor == pytest.approx(1.0 + unit.ratio)
    assert rows["puzzlemix"].floor_low <= rows["puzzlemix"].floor <= rows["puzzlemix"].floor_high
    markdown_path, csv_path = write_report(report, tmp_path)
    markdown = markdown_path.read_text()
    assert "## Pass units" in markdown and "- puzzlemix: step; forward + backward to the input" in markdown
    written = {line["method"]: line for line in csv.DictReader(csv_path.open())}
    assert written["puzzlemix"]["passes"] == "step; forward + backward to the input"
    assert float(written["puzzlemix"]["floor"]) == pytest.approx(rows["puzzlemix"].floor, abs=1e-4)


def test_pass_units_out_of_gpu_memory_cost_the_floors_not_the_rows(monkeypatch) -> None:
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(benchmark, "prepare_units", out_of_memory)
    request, runtime = _request("puzzlemix", "r18", ["model.width=4"])
    report = run_benchmark(request, runtime, log=lambda message: None)
    assert [row.status for row in report.rows] == ["ok", "ok"] and report.units == []
    assert all(row.floor is None and row.ratio_to_vanilla is not None for row in report.rows)
