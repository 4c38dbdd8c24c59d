"""``compile=true``: the trainer's and the benchmark's step run the compiled model, train exactly as the eager
step does, and are traced once per distinct shape of the network call, not once per step (a method that fed a
fresh Python float into the compiled call would recompile every step on a GPU).

Dynamo's tracing is what mixbench controls; inductor's code generation is torch's and takes tens of seconds
per graph on this 2-core CPU, so these tests trace with the ``aot_eager`` backend (the same Dynamo graphs and
AOT autograd, no code generation).  The GPU's speed with inductor is measured by ``scripts/gpu_bench.sh``."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import mixbench.engine.step as step_module
from mixbench.bench.request import compose_row_configs, resolve_request
from mixbench.bench.timing import synthetic_batch
from mixbench.engine.build import build_model_and_method
from mixbench.engine.step import build_training_step

pytestmark = pytest.mark.usefixtures("single_torch_thread")

STEPS = 5
TORCH_COMPILE = torch.compile


def _losses(method_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], int]:
    """The losses of STEPS steps of ``method_name`` on a small r18 (compiled or not) and the graphs traced."""
    monkeypatch.setattr(step_module.torch, "compile", lambda model: TORCH_COMPILE(model, backend="aot_eager"))
    request, runtime = resolve_request(
        method_name,
        "r18",
        "digits",
        8,
        16,
        steps=1,
        warmup=0,
        compile_model=compiled,
        overrides=["device=cpu", "model.width=4"],
        loop_windows=0,
    )
    assert runtime.compile is compiled  # tools/bench.py --compile reaches the step the rows are timed with
    cfg = compose_row_configs(request)["r18", method_name]
    if method_name == "alignmixup":
        cfg.method.max_iter = 5  # Sinkhorn's loop is traced iteration by iteration: 5 prove the point
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, runtime)
    step = build_training_step(cfg, runtime, model, method, updates_per_epoch=STEPS)
    x, y = synthetic_batch(cfg, runtime)
    losses = [float(step(x, y)) for _ in range(STEPS)]
    return losses, counters["stats"]["unique_graphs"]


@pytest.mark.parametrize(
    ("method_name", "graphs"),
    [
        ("manifoldmix", 3),  # one graph per mixing stage drawn (stages 0-2 on r18), lam passed as a tensor
        ("alignmixup", 2),  # input mixing and feature alignment (Sinkhorn inside the traced call)
        ("sumix", 2),  # the no-grad clean forward and the trained one
    ],
)
def test_a_compiled_step_trains_as_the_eager_one_and_traces_each_call_shape_once(
    method_name: str, graphs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager, none_traced = _losses(method_name, compiled=False, monkeypatch=monkeypatch)
    compiled, traced = _losses(method_name, compiled=True, monkeypatch=monkeypatch)
    assert none_traced == 0
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert 1 <= traced <= graphs
