"""``compile=true``: the trainer's and the benchmark's step run the compiled model (and a learned method's
compiled EMA teacher and Mix Block), train exactly as the eager step does, and are traced once per distinct
call (shape, grad mode), not once per step (a method that fed a fresh Python float into a compiled call would
recompile every step on a GPU).

Dynamo's tracing is what mixbench controls; inductor's code generation is torch's and takes tens of seconds
per graph on this 2-core CPU, so these tests trace with the ``aot_eager`` backend (the same Dynamo graphs and
AOT autograd, no code generation).  The GPU's speed with inductor is measured by ``scripts/gpu_bench.sh``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch._dynamo.utils import counters

import mixbench.engine.step as step_module
from mixbench.bench.request import compose_row_configs, resolve_request
from mixbench.bench.timing import synthetic_batch
from mixbench.config import COMPILE_MODES, ConfigError, validate
from mixbench.engine.build import build_model_and_method
from mixbench.engine.runtime import resolve_compile_mode, resolve_runtime
from mixbench.engine.step import build_training_step
from mixbench.methods.mix_block import TEACHER_PASSES, LearnedMixMethod, TrainModePass
from mixbench.methods.stage_probe import evaluating
from tests.helpers import compose_config
from tests.helpers.tools import run_tool

pytestmark = pytest.mark.usefixtures("single_torch_thread")

STEPS = 5
TORCH_COMPILE = torch.compile


def _trace_with_aot_eager(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """``torch.compile`` as the step calls it, with the ``aot_eager`` backend; returns the list of the
    keyword arguments of each call (the step's ``mode=``), which the backend replaces."""
    calls: list[dict] = []

    def compile_for_tests(target, **options):
        calls.append(options)
        shapes = {"dynamic": options["dynamic"]} if "dynamic" in options else {}  # a method's own choice
        return TORCH_COMPILE(target, backend="aot_eager", **shapes)

    monkeypatch.setattr(step_module.torch, "compile", compile_for_tests)
    return calls


def _build(method_name: str, compiled: bool, overrides: tuple[str, ...] = ()):
    """A small r18 and ``method_name`` (a bench row: a name or a variant) with the step the bench times."""
    request, runtime = resolve_request(
        method_name,
        "r18",
        "digits",
        8,
        16,
        steps=1,
        warmup=0,
        compile_model=compiled,
        overrides=["device=cpu", "model.width=4", *overrides],
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
    return cfg, runtime, model, method, step


def _losses(method_name: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], int]:
    """The losses of STEPS steps of ``method_name`` on a small r18 (compiled or not) and the graphs traced."""
    _trace_with_aot_eager(monkeypatch)
    cfg, runtime, _, _, step = _build(method_name, compiled)
    x, y = synthetic_batch(cfg, runtime)
    losses = [float(step(x, y)) for _ in range(STEPS)]
    return losses, counters["stats"]["unique_graphs"]


@pytest.mark.parametrize(
    ("method_name", "fewest", "most"),
    [
        # the forward and the loss in one compiled call, the model inlined into it: one graph whatever lam
        ("vanilla", 1, 1),
        ("mixup", 1, 1),  # the path of every input-space method (InputMixMethod.training_step)
        ("manifoldmix", 1, 3),  # one graph per mixing stage drawn (stages 0-2 on r18), lam passed as a tensor
        ("alignmixup", 1, 2),  # input mixing and feature alignment (Sinkhorn inside the traced call)
        ("sumix", 1, 2),  # the no-grad clean forward and the trained one
        # AlignMixup/AE runs the model's stages itself (forward_features, compiled beside the forward); every
        # branch it draws calls them on a batch of the same shape: one graph (none before 2026-12-04)
        ("alignmixup_ae", 1, 1),
    ],
)
def test_a_compiled_step_trains_as_the_eager_one_and_traces_each_call_shape_once(
    method_name: str, fewest: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The methods that mix through the online model alone; those with compiled parts of their own (a teacher,
    a Mix Block, a solver) are in ``tests/test_compile_parts.py`` (a file of their own: the two halves run
    on different workers)."""
    assert_compiled_trains_as_eager(method_name, fewest, most, monkeypatch)


def assert_compiled_trains_as_eager(
    method_name: str, fewest: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STEPS compiled steps give the eager steps' losses, and ``fewest``..``most`` graphs are traced."""
    eager, none_traced = _losses(method_name, compiled=False, monkeypatch=monkeypatch)
    compiled, traced = _losses(method_name, compiled=True, monkeypatch=monkeypatch)
    assert none_traced == 0
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert fewest <= traced <= most


@pytest.mark.parametrize("method_name", ["vanilla", "mixup"])
def test_the_loss_is_traced_with_the_network_in_one_graph(
    method_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vanilla's and the input-space methods' step is one compiled call, the network's convolutions and the
    cross-entropy in the same graph (so that CUDA graphs replay the loss's kernels with the network's)."""
    calls = _traced_calls(method_name, monkeypatch)
    assert len(calls) == 1
    assert "conv2d" in calls[0] and "cross_entropy" in calls[0], calls[0]


def _traced_calls(method_name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One compiled step of ``method_name``: the call targets of each graph Dynamo traced, as one string."""
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(
        step_module.torch, "compile", lambda target, **_: TORCH_COMPILE(target, backend=recording_backend)
    )
    cfg, runtime, _, _, step = _build(method_name, compiled=True)
    step(*synthetic_batch(cfg, runtime))
    return [" ".join(str(node.target) for node in graph.graph.nodes) for graph in graphs]


def test_a_learned_method_compiles_its_teacher_and_mix_block_with_the_runs_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for mode in COMPILE_MODES:
        calls = _trace_with_aot_eager(monkeypatch)
        _, runtime, _, method, _ = _build("automix", compiled=True, overrides=(f"compile_mode={mode}",))
        resolved = "default" if mode == "auto" else mode  # auto on this CPU: no CUDA graphs
        assert runtime.compile_mode == resolved  # a free override of tools/bench.py reaches the runtime
        # the online model and its forward_features, the teacher's three passes and the Mix Block's forward,
        # each with the run's mode
        assert len(calls) == 3 + len(TEACHER_PASSES)
        assert calls == [{} if resolved == "default" else {"mode": resolved}] * len(calls)
    ema = method.ema
    for name in TEACHER_PASSES:
        assert isinstance(ema.module.__dict__[name], TrainModePass)
    assert isinstance(method.mix_block.__dict__["forward"], TrainModePass)
    calls = _trace_with_aot_eager(monkeypatch)
    _build("automix", compiled=False, overrides=("compile_mode=max-autotune",))
    assert calls == []  # compile_mode alone compiles nothing


def test_auto_replays_cuda_graphs_on_one_gpu_and_compiles_plainly_elsewhere() -> None:
    assert resolve_compile_mode("auto", "cuda", world_size=1) == "reduce-overhead"
    assert resolve_compile_mode("auto", "cuda", world_size=4) == "default"  # torchrun: DDP's hooks
    assert resolve_compile_mode("auto", "cpu", world_size=1) == "default"
    for mode in set(COMPILE_MODES) - {"auto"}:  # a mode named by the user is kept on every device
        for device_type, world_size in (("cuda", 1), ("cuda", 2), ("cpu", 1)):
            assert resolve_compile_mode(mode, device_type, world_size) == mode
    cfg = compose_config(["method=mixup", "compile=true", "device=cpu"])
    assert cfg.compile_mode == "auto"  # the default of configs/train.yaml
    assert resolve_runtime(cfg).compile_mode == "default"


def test_the_modes_that_replay_cuda_graphs_mark_each_step_begin(monkeypatch: pytest.MonkeyPatch) -> None:
    _trace_with_aot_eager(monkeypatch)
    begun: list[str] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: begun.append("step"))
    for mode, marks in (("max-autotune-no-cudagraphs", 0), ("reduce-overhead", 2)):
        begun.clear()
        cfg, runtime, _, _, step = _build("vanilla", compiled=True, overrides=(f"compile_mode={mode}",))
        x, y = synthetic_batch(cfg, runtime)
        step(x, y)
        step(x, y)
        assert len(begun) == marks, mode


def test_compiling_leaves_the_state_dict_keys_and_the_checkpoints_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _trace_with_aot_eager(monkeypatch)
    state = {}
    for compiled in (False, True):
        cfg, runtime, model, method, step = _build("adautomix", compiled)
        step(*synthetic_batch(cfg, runtime))
        state[compiled] = (model.state_dict(), method.state_dict())
    assert list(state[True][0]) == list(state[False][0])
    assert list(state[True][1]) == list(state[False][1])
    assert not any("_orig_mod" in key for key in state[True][1])
    method.load_state_dict(state[False][1])  # an eager run's checkpoint loads into a compiled one (strict)
    # a copy runs eagerly on its own weights, not through the original's compiled passes
    for copied in (copy.deepcopy(method), pickle.loads(pickle.dumps(method))):
        for name in TEACHER_PASSES:
            assert copied.ema.module.__dict__[name].module is copied.ema.module
            assert copied.ema.module.__dict__[name].compiled is None


def test_the_compiled_teacher_sees_the_ema_update_and_eval_mode_stays_eager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _trace_with_aot_eager(monkeypatch)
    cfg, runtime, model, method, _ = _build("adautomix", compiled=True)
    assert isinstance(method, LearnedMixMethod)
    teacher, stage = method.ema.module, method.feature_stage
    x, _ = synthetic_batch(cfg, runtime)

    def passes() -> list[torch.Tensor]:
        with torch.no_grad():
            features = teacher.forward_features(x, stage)
            return [features, teacher.forward_from(features, stage), method.ema(x)]

    def eager_passes() -> list[torch.Tensor]:
        eager = copy.deepcopy(teacher)  # the same weights, and eager passes (tested above)
        with torch.no_grad():
            features = eager.forward_features(x, stage)
            return [features, eager.forward_from(features, stage), eager(x)]

    before = passes()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3  # the three passes ran compiled
    for compiled, reference in zip(before, eager_passes(), strict=True):
        torch.testing.assert_close(compiled, reference)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    method.ema.base_momentum = method.ema.end_momentum = 0.0  # the teacher becomes the online network
    method.after_step(model)
    after = passes()
    assert counters["stats"]["unique_graphs"] == graphs  # the in-place update is no reason to trace again
    for compiled, reference, old in zip(after, eager_passes(), before, strict=True):
        torch.testing.assert_close(compiled, reference)
        assert not torch.allclose(compiled, old)
    with evaluating(method.ema), torch.no_grad():
        teacher(x)
        method.preview_features(x)
    assert counters["stats"]["unique_graphs"] == graphs  # evaluation and previews stay eager


@pytest.mark.parametrize(("mode", "shown"), [("reduce_overhead", "'reduce_overhead'"), ("true", "True")])
def test_an_unknown_compile_mode_is_refused_in_one_line(mode: str, shown: str) -> None:
    expected = f"compile_mode={shown} is not one of {', '.join(COMPILE_MODES)}"
    cfg = compose_config(["method=mixup", f"compile_mode={mode}"])
    for check in (validate, resolve_runtime):
        with pytest.raises(ConfigError) as error:
            check(cfg)
        assert str(error.value) == expected
    result = run_tool("bench", ["--models", "r18", "--methods", "mixup", f"compile_mode={mode}", "--compile"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1 and expected in errors[0], result.stderr


def test_sumix_loss_is_traced_with_the_mixed_batchs_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUMix's loss (the distances' softmaxes, lam's sigmoid, the uncertainty head, the regulariser's exp and
    the cross-entropies) is compiled with the mixed batch's forward, in the graph of the trained network's
    convolutions, rather than launched op by op after it (as until 8e9efbb)."""
    calls = _traced_calls("sumix", monkeypatch)
    with_loss = [text for text in calls if "conv2d" in text and "sigmoid" in text]
    assert len(with_loss) == 1, calls
    assert "exp" in with_loss[0] and "cross_entropy" in with_loss[0] and "softmax" in with_loss[0]
