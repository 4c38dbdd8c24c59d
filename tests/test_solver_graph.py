"""The solvers replayed as CUDA graphs (mixbench/methods/solver_graph.py), checked on the CPU with a stand-in
backend that records by running the function on the static inputs and replays by running it again into the
static outputs: the static buffers, the signatures, the bitwise check and the fallback are the real code's.
On a CUDA device, the real recording of Co-Mixup's solver against its eager run."""

from __future__ import annotations

import pytest
import torch

from mixbench import build_method
from mixbench.methods.alignmixup import AlignMixup, SinkhornOptions, align_mix, official_sinkhorn
from mixbench.methods.comixup import CoMixup
from mixbench.methods.puzzlemix import PuzzleMix
from mixbench.methods.solver_graph import SolverGraph, replay_summary
from mixbench.rng import MixRandom

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class RerunBackend:
    """Records ``function`` on the static inputs; a replay runs it again and writes into the same outputs."""

    def __init__(self, held: int = 0) -> None:
        self.captures = 0
        self.replays = 0
        self.held = held  # the memory the stand-in recording says it holds

    def memory_limit(self, args) -> int:
        return 1 << 20

    def capture(self, function, static_args):
        self.captures += 1
        outputs = function(*static_args)

        def replay() -> None:
            self.replays += 1
            fresh = function(*static_args)
            with torch.inference_mode():  # a replay writes the outputs' memory, whatever made them
                for old, new in zip(_tuple(outputs), _tuple(fresh), strict=True):
                    old.copy_(new)

        return replay, outputs, self.held


def _tuple(outputs):
    return (outputs,) if isinstance(outputs, torch.Tensor) else outputs


def on_stand_in(graph: SolverGraph) -> RerunBackend:
    graph.backend, graph.any_device = RerunBackend(), True
    return graph.backend


def costs(seed: int, batch: int = 3, side: int = 5) -> torch.Tensor:
    return torch.rand(batch, side, side, generator=torch.Generator().manual_seed(seed)) * 4


def test_a_recorded_solver_replays_new_inputs_to_the_eager_results_and_returns_copies() -> None:
    graph = SolverGraph(official_sinkhorn)
    backend = on_stand_in(graph)
    results = [graph(costs(seed), 0.5, 20, 0.1) for seed in range(3)]
    assert backend.captures == 1 and backend.replays == 3 and graph.recorded == 1  # one check, two calls
    for seed, result in enumerate(results):  # earlier results are not overwritten by later replays
        for ours, eager in zip(result, official_sinkhorn(costs(seed), 0.5, 20, 0.1), strict=True):
            assert torch.equal(ours, eager)


def test_a_new_shape_or_python_value_is_a_new_recording() -> None:
    graph = SolverGraph(official_sinkhorn)
    backend = on_stand_in(graph)
    graph(costs(0), 0.5, 20, 0.1)
    graph(costs(1, side=6), 0.5, 20, 0.1)
    plan = graph(costs(2), 0.25, 20, 0.1)[0]  # eps baked into the first recording must not be reused
    assert backend.captures == 3 and graph.recorded == 3
    assert torch.equal(plan, official_sinkhorn(costs(2), 0.25, 20, 0.1)[0])


def test_a_replay_that_differs_from_the_eager_run_falls_back_to_eager_with_one_warning() -> None:
    calls = []

    def drifting(x: torch.Tensor) -> torch.Tensor:  # hidden state: not a pure function of its inputs
        calls.append(1)
        return x * len(calls)

    graph = SolverGraph(drifting)
    on_stand_in(graph)
    with pytest.warns(UserWarning, match="drifting: not replayed as a CUDA graph, the replay differs"):
        first = graph(torch.ones(2))
    assert torch.equal(first, torch.ones(2)) and graph.recorded == 0
    calls.clear()
    assert torch.equal(graph(torch.ones(2)), torch.ones(2))  # eager from then on: the function's own result


def test_a_recording_error_falls_back_to_eager_with_one_warning() -> None:
    class Failing:
        def capture(self, function, static_args):
            raise RuntimeError("operation not permitted when stream is capturing")

    graph = SolverGraph(official_sinkhorn, backend=Failing())
    with pytest.warns(UserWarning, match="recording failed .RuntimeError: operation not permitted"):
        plan = graph(costs(0), 0.5, 20, 0.1)[0]
    assert torch.equal(plan, official_sinkhorn(costs(0), 0.5, 20, 0.1)[0]) and graph.recorded == 0
    assert torch.equal(graph(costs(1), 0.5, 20, 0.1)[0], official_sinkhorn(costs(1), 0.5, 20, 0.1)[0])


def test_a_recording_that_would_hold_too_much_memory_is_dropped_for_the_eager_solver() -> None:
    graph = SolverGraph(official_sinkhorn, backend=RerunBackend(held=3 << 20))
    with pytest.warns(UserWarning, match="its recording would hold 3 MB .limit 1 MB.; it runs eagerly"):
        plan = graph(costs(0), 0.5, 20, 0.1)[0]
    assert graph.recorded == 0 and torch.equal(plan, official_sinkhorn(costs(0), 0.5, 20, 0.1)[0])
    assert graph.backend.replays == 0 and graph.fallbacks == ["its recording would hold 3 MB (limit 1 MB)"]


def test_the_default_backend_leaves_cpu_tensors_and_a_disabled_graph_to_the_function() -> None:
    graph = SolverGraph(official_sinkhorn)
    graph(costs(0), 0.5, 20, 0.1)
    assert graph.recorded == 0 and not graph._recordings
    disabled = SolverGraph(official_sinkhorn)
    backend = on_stand_in(disabled)
    disabled.enabled = False
    disabled(costs(0), 0.5, 20, 0.1)
    assert backend.captures == 0


def test_comixup_mixes_with_its_recorded_solver_as_with_the_eager_one() -> None:
    x = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(3, 10, 8, 8, generator=torch.Generator().manual_seed(1))
    recorded, eager = CoMixup(m_part=5), CoMixup(m_part=5, cuda_graph=False)
    recorded.bind(MixRandom(3))
    eager.bind(MixRandom(3))
    backend = on_stand_in(recorded.solver)
    for step in range(3):
        ours, theirs = recorded.mix_with_saliency(x, maps[step]), eager.mix_with_saliency(x, maps[step])
        assert torch.equal(ours.labels, theirs.labels) and torch.equal(ours.x, theirs.x)
    assert backend.captures == 1 and backend.replays == 3


def test_puzzlemix_mixes_with_its_recorded_solvers_as_with_the_eager_ones() -> None:
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    maps = torch.rand(3, 6, 16, 16, generator=torch.Generator().manual_seed(1))
    recorded, eager = PuzzleMix(grid_sizes=[4]), PuzzleMix(grid_sizes=[4], cuda_graph=False)
    recorded.bind(MixRandom(5))
    eager.bind(MixRandom(5))
    backends = on_stand_in(recorded.mask_solver), on_stand_in(recorded.transport_solver)
    for step in range(3):
        ours, theirs = recorded.mix_with_saliency(x, y, maps[step]), eager.mix_with_saliency(x, y, maps[step])
        assert torch.equal(ours.mask, theirs.mask) and torch.equal(ours.batch.x, theirs.batch.x)
    assert [(backend.captures, backend.replays) for backend in backends] == [(1, 3), (1, 3)]


def test_alignmix_with_the_recorded_sinkhorn_mixes_as_with_the_eager_one() -> None:
    recorded, eager = SinkhornOptions(), SinkhornOptions(cuda_graph=False)
    backend = on_stand_in(recorded.official_solver)
    perm = torch.tensor([2, 0, 3, 1])
    for seed in range(3):
        features = torch.rand(4, 6, 2, 2, generator=torch.Generator().manual_seed(seed)) * 3
        ours, ours_result = align_mix(features, perm, 0.3, seed % 2 == 0, recorded)
        theirs, their_result = align_mix(features, perm, 0.3, seed % 2 == 0, eager)
        assert torch.equal(ours, theirs) and torch.equal(ours_result.plan, their_result.plan)
    assert backend.captures == 1 and backend.replays == 3


def test_methods_list_their_solver_graphs_and_the_bench_note_names_replays_and_fallbacks() -> None:
    comixup, puzzle, align = CoMixup(), PuzzleMix(), AlignMixup()
    assert comixup.solver_graphs() == [comixup.solver]
    assert puzzle.solver_graphs() == [puzzle.mask_solver, puzzle.transport_solver]
    assert align.solver_graphs() == [align.sinkhorn.official_solver]
    wrapped = build_method("sumix", base="puzzlemix")
    assert [graph.name for graph in wrapped.solver_graphs()] == ["minimise_grid_energy", "transport_sources"]
    assert build_method("mixup").solver_graphs() == []
    graph = align.sinkhorn.official_solver
    assert replay_summary([graph]) == ""  # nothing recorded on the CPU
    on_stand_in(graph)
    graph(costs(0), 0.5, 20, 0.1)
    graph(costs(1, side=6), 0.5, 20, 0.1)
    assert replay_summary([graph]) == "official_sinkhorn replayed as a CUDA graph (2 shapes)"
    failing = SolverGraph(official_sinkhorn, backend=type("Failing", (), {"capture": _refuse})())
    with pytest.warns(UserWarning):
        failing(costs(0), 0.5, 20, 0.1)
    assert replay_summary([graph, failing]) == (
        "official_sinkhorn replayed as a CUDA graph (2 shapes); "
        "official_sinkhorn ran eagerly: recording failed (RuntimeError: not capturable)"
    )


def test_compiling_a_methods_parts_stops_its_recordings() -> None:
    """Under compile=true the compiled parts are not recorded into graphs of our own (MixMethod.compile_parts,
    for every method and a wrapper's base)."""
    methods = [CoMixup(), PuzzleMix(), AlignMixup(), build_method("sumix", base="puzzlemix")]
    graphs = [graph for method in methods for graph in method.solver_graphs()]
    assert len(graphs) == 6 and all(graph.enabled for graph in graphs)
    for method in methods:
        method.compile_parts(lambda function, **options: function)
    assert not any(graph.enabled for graph in graphs)


def _refuse(self, function, static_args):
    raise RuntimeError("not capturable")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_comixup_replays_its_recorded_solver_to_the_eager_labels() -> None:
    x = torch.randn(40, 3, 32, 32, device="cuda")
    maps = torch.rand(3, 40, 32, 32, device="cuda")
    recorded, eager = CoMixup(), CoMixup(cuda_graph=False)
    recorded.bind(MixRandom(3, "cuda"))
    eager.bind(MixRandom(3, "cuda"))
    for step in range(3):
        ours, theirs = recorded.mix_with_saliency(x, maps[step]), eager.mix_with_saliency(x, maps[step])
        assert torch.equal(ours.labels, theirs.labels)
    assert recorded.solver.recorded == 1
