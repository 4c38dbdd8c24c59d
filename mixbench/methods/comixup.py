"""Co-Mixup (Kim et al., "Co-Mixup: Saliency Guided Joint Mixup with Supermodular Diversity", ICLR 2021).

The batch is cut into partitions of ``m_part`` images (the last one may be smaller; the whole batch when it
is smaller than ``m_part``).  From the m inputs of a partition, m outputs are built jointly: every cell p of a
k x k grid (``grid`` = 4) of output j gets a label z_jp, the vector of the inputs' shares there (one-hot, or
half-half of two inputs, see below).  With ``s_i`` the gradient saliency of input i (``gradient_saliency.py``)
averaged on the grid and normalised to sum 1, ``alpha ~ Dirichlet(alpha_0, ..., alpha_0)`` one draw per
partition, and ``c_j = sum_p z_jp`` the number of cells of each input in output j, the labelling minimises

    E(z) = sum_{j,p} z_jp . (-s(p) - eta' log alpha)                                    saliency, prior
         + beta' sum_j sum_{p~q} ||z_jp - z_jq||^2 / 2                                  smoothness
         + gamma' sum_j c_j . rho(A u_-j),  u_-j = sum_{j' != j} c_j',  rho(u) = u [u > tau']   diversity

with ``beta' = beta / k^2``, ``gamma' = gamma / k^2``, ``eta' = eta / k^2``, ``tau' = tau k^2`` (the official
scaling), 4-neighbourhoods, and the compatibility ``A = (1 - omega) I + omega A_dist``, ``A_dist`` the L1
distances between the inputs' saliency peaks (8x8 box filter, stride 1) normalised to sum m per partition.
The supermodular term penalises an input that the other outputs already use in more than ``tau`` images'
worth of cells (the official hard threshold).

Solver.  The official one is a modular approximation solved with CPU graph cuts: from a random labelling,
``n_iter`` rounds over the outputs one at a time; for output j the diversity term is replaced by the modular
cost ``2 gamma' rho(A u_-j)[i]`` per cell given to input i, which leaves a Potts labelling problem solved by
an alpha-beta-swap graph cut.  Ours keeps that outer structure (the same random start, rounds, sequential
order over the outputs and modular cost, batched over the partitions) and replaces the graph cut by an
on-device approximation of the same subproblem: checkerboard ICM (cells of one colour are independent given
the other colour, so each half-sweep is an exact minimisation over that colour), ``sweeps`` sweeps from two
starts, the output's current labelling and the cell-wise minimiser of the unary costs, keeping whichever of
the two results and the unchanged current labelling has the lowest subproblem energy (so no output step
increases its subproblem energy).  From the second round on, like the official solver, an output that uses two
or more inputs may also give a cell half-half to two of its (up to) three most used inputs, at the mean of
their unary costs minus 5e-4.  The smoothness of such cells is the objective's ``||z_p - z_q||^2 / 2`` (the
official graph cut's table rounds its 0.75 and 0.25 between non-matching cells up to 1).  After the
next-to-last round, outputs that use exactly the same set of inputs are pushed apart by one ``gamma'`` on one
input each (the official ``set_resolve``).  The official early stop (relative change < 1e-6) is dropped: it
would need a device sync per round; all ``n_iter`` rounds run.

    x~_j = sum_i up(z_j)[i] x_i,    target_j = sum_i (c_j[i] / k^2) onehot(y_i)      (area shares)
    loss = soft CE(f(x~), target)  [+ clean_lam CE(f(x), y)]

Defaults: the official CIFAR-100 command (grid 4, m_part 20, Dirichlet alpha 2, beta 0.32, gamma 1,
tau 0.83, eta 0.05, omega 0.001, 4 rounds, set_resolve, clean_lam 1).

Deliberate deviations from the official code: the solver above; the loss is soft-target cross-entropy
(official: BCE on softmax outputs) and the clean term ``clean_lam * CE`` on the saliency forward's logits
(official: ``2 clean_lam CE / classes`` on the BCE scale); the saliency forward runs in train mode (official:
eval mode when clean_lam = 0, see ``gradient_saliency``); the last, smaller partition is padded to m slots
that no output uses (the official code solves it separately: same result).

Cost.  A step's passes (``saliency_guided``), with the default ``clean_lam = 1`` as in the official code: the
saliency forward, one full backward that gives both the saliency and the clean loss's weight gradients (the
official code's single ``backward``), then the mixed batch's forward and backward: about 6 forward-units
against a plain step's 3.  The solver is a sequential loop over rounds and outputs (4 x 20 output steps of
a few dozen small operations each): on the CPU it runs on one intra-op thread (``serial_on_cpu``: same
results), where parallel regions on tensors this small cost more than the work (``bmm`` splits even a batch
of 2 across threads).  The whole mix took 58 ms (median) of a 1.9 s step on r18 at 32 px, batch 32, 2 CPU
threads (61 ms on an idle machine with both threads; several times more on a busy one).  On a GPU those
operations are kernel launches, the step's main cost (16x vanilla on an H200 at 5b521f1, eager).  Since then:

* fewer operations per output step, with the same labels to the bit (``output_energy``'s smoothness through
  the grid's Laplacian, ICM's neighbour term made once per solve and its update in one ``baddbmm``, the
  half-half candidates in one gather, the diversity gate in one ``threshold``, per-output lists instead of
  slice copies): 26,093 -> 19,796 operator calls per step (r18, batch 32, CPU: ``python tools/bench.py
  --methods comixup --models r18 --steps 2 --warmup 1 --loops 0 --profile DIR`` at 329c867 and 970be50,
  vanilla's step 1,387).  By hand, the solver's labels and objective equal the former code's on
  12 problems (padded partitions, grids 2-8, two rounds each);
* on a GPU in eager mode the whole solve (:func:`improve_labelling`) is recorded once per batch shape and
  replayed as one CUDA graph (``cuda_graph``, default true; :mod:`mixbench.methods.solver_graph`): one launch
  of the recording instead of one per kernel.  Not yet measured on a GPU.

Under ``compile=true`` one output's subproblem is compiled instead (:meth:`CoMixup.compile_parts`, two graphs:
without and with half-half cells), so that each of the 80 calls a step is one compiled call, replayed as a
CUDA graph in ``compile_mode=reduce-overhead``; ``tests/test_compile_parts.py`` checks that the compiled step
trains as the eager one.  With ``compile_mode=reduce-overhead`` the H200 ran the step in 88.8 ms against 182.6
ms eager at 5b521f1, 19.7x vanilla's CUDA-graph step: the per-output bookkeeping around the 80 compiled calls
stays eager (results/bench/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixPreview, device_scalar, in_layout_of, soft_cross_entropy
from mixbench.methods.gradient_saliency import check_grid, input_gradient_saliency, pool_saliency
from mixbench.methods.registry import register_method
from mixbench.methods.saliency_guided import SaliencyGuidedMixMethod, serial_on_cpu, upsample_cells
from mixbench.methods.solver_graph import SolverGraph
from mixbench.rng import MixRandom

UNAVAILABLE_COST = (
    1e3  # unary cost of padding inputs and of mixed labels an output may not use (finite: no NaN)
)
MIXED_CELL_BONUS = 5e-4  # the official solver's tie-break in favour of half-half cells
PRIOR_EPS = 1e-8
PEAK_WINDOW = 8  # box filter of the saliency peaks that define the compatibility matrix


@dataclass
class AssignmentProblem:
    """The joint labelling of G partitions of m inputs (and m outputs) on k x k grids (P = k^2 cells)."""

    cost: torch.Tensor  # (G, P, m) unary cost of each input per cell (row-major): -saliency - eta' log alpha
    compatibility: torch.Tensor  # (G, m, m) the matrix A
    valid: torch.Tensor  # (G, m) bool: slot holds a real image (the last partition may be padded)
    beta: float  # beta' = beta / k^2
    gamma: float  # gamma' = gamma / k^2
    threshold: float  # tau' = tau k^2

    @property
    def grid(self) -> int:
        return math.isqrt(self.cost.shape[1])


@dataclass
class GridGraph:
    """The 4-neighbourhood of a k x k grid, cells in row-major order."""

    adjacency: torch.Tensor  # (P, P) 0/1
    degree: torch.Tensor  # (P, 1) number of neighbours
    laplacian: torch.Tensor  # (P, P) diag(degree) - adjacency
    edges: torch.Tensor  # (E, 2) cell pairs, each edge once
    colours: tuple[torch.Tensor, torch.Tensor]  # (P, 1) bool checkerboard colour masks


def grid_graph(grid: int, device: torch.device | str = "cpu") -> GridGraph:
    index = torch.arange(grid * grid, device=device).view(grid, grid)
    edges = torch.cat(
        [
            torch.stack([index[:-1].flatten(), index[1:].flatten()], dim=1),
            torch.stack([index[:, :-1].flatten(), index[:, 1:].flatten()], dim=1),
        ]
    )
    # cells at Manhattan distance 1 (comparisons on the device: assigning a Python number through an index
    # tensor would copy it from the host, a sync on an accelerator; see mixbench/engine/kernel_syncs.py)
    row, column = index.flatten() // grid, index.flatten() % grid
    distance = (row[:, None] - row[None, :]).abs() + (column[:, None] - column[None, :]).abs()
    adjacency = (distance == 1).float()
    rows, columns = torch.meshgrid(
        torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij"
    )
    even = ((rows + columns) % 2 == 0).reshape(-1, 1)
    degree = adjacency.sum(dim=1, keepdim=True)
    laplacian = torch.diag(degree.squeeze(1)) - adjacency
    return GridGraph(adjacency, degree, laplacian, edges, (even, ~even))


# ------------------------------------------------------------------------------------------ energies


def output_energy(labels: torch.Tensor, unary: torch.Tensor, graph: GridGraph, beta: float) -> torch.Tensor:
    """Energy of outputs' labellings (..., P, m) with entries 0, 1/2 or 1: unary (broadcastable) + mixed-cell
    bonus + smoothness.

    The smoothness ``sum_{p~q} ||z_p - z_q||^2 / 2`` is taken as ``sum_p z_p . (L z)_p / 2`` with the grid's
    Laplacian ``L``: one product instead of gathering both ends of every edge.  Every term is a multiple of
    1/4, so both forms are exact in float32 (and in TF32 matrix products), hence equal to the bit.
    """
    linear = (labels * unary).sum(dim=(-2, -1))
    largest = labels.amax(dim=-1)  # 1 on single cells, 0.5 on half-half ones, 0 on unused (padding) outputs
    mixed = (largest == 0.5).sum(dim=-1, dtype=labels.dtype)
    flat = labels.reshape(-1, *labels.shape[-2:])
    spread = torch.bmm(graph.laplacian.expand(flat.shape[0], -1, -1), flat).view(labels.shape)
    twice_smooth = (labels * spread).sum(dim=(-2, -1))
    return linear - MIXED_CELL_BONUS * mixed + beta / 2 * twice_smooth  # beta/2 exact: the same bits


def gated_usage(others: torch.Tensor, compatibility: torch.Tensor, threshold: float) -> torch.Tensor:
    """``rho(A u)`` of usages ``others`` (G, ..., m): weighted by compatibility, kept above the threshold."""
    flat = others.reshape(others.shape[0], -1, others.shape[-1])
    weighted = torch.bmm(flat, compatibility.transpose(1, 2)).view(others.shape)
    return F.threshold(weighted, threshold, 0.0)  # weighted where above the threshold, else 0: one kernel


def objective(labels: torch.Tensor, problem: AssignmentProblem) -> torch.Tensor:
    """(G,) Co-Mixup's objective E(z) of labellings (G, J, P, m), in its thresholded form."""
    graph = grid_graph(problem.grid, labels.device)
    per_output = output_energy(labels, problem.cost.unsqueeze(1), graph, problem.beta).sum(dim=1)
    usage = labels.sum(dim=2)
    others = usage.sum(dim=1, keepdim=True) - usage
    penalty = gated_usage(others, problem.compatibility, problem.threshold)
    return per_output + problem.gamma * (usage * penalty).sum(dim=(1, 2))


# ------------------------------------------------------------------------------------------ the solver


@dataclass
class CandidateBasis:
    """What :func:`label_candidates` needs that does not change during a solve (built once, on the device)."""

    single: torch.Tensor  # (G, m, m) every input alone
    unavailable: torch.Tensor  # (G, m) UNAVAILABLE_COST on padding inputs, 0 elsewhere
    identity: torch.Tensor  # (m, m)
    pair_ranks: torch.Tensor  # (pairs, 2) ranks (0 = most used) of each pair's inputs: (0,1), (0,2), (1,2)
    second_rank: torch.Tensor  # (pairs,) rank of each pair's second input: used means offered
    mixed_bonus: torch.Tensor  # () -MIXED_CELL_BONUS
    refused: torch.Tensor  # () UNAVAILABLE_COST
    neighbour_cost: dict[int, torch.Tensor]  # K candidates -> (P, K) beta deg_p ||v_k||^2 / 2, for ICM


def candidate_basis(valid: torch.Tensor, neighbour_weight: torch.Tensor) -> CandidateBasis:
    """The basis of a solve; ``neighbour_weight`` (P, 1) is ``beta / 2`` times each cell's degree."""
    groups, slots = valid.shape
    device = valid.device
    identity = torch.eye(slots, device=device)
    ranks = min(3, slots)
    pair_ranks = torch.triu_indices(ranks, ranks, offset=1, device=device).t()  # (0,1), (0,2), (1,2)
    single_norms = torch.ones(slots, device=device)  # ||v||^2 of a one-hot vector, of a half-half one
    mixed_norms = torch.cat([single_norms, torch.full((len(pair_ranks),), 0.5, device=device)])
    return CandidateBasis(
        single=identity.expand(groups, slots, slots),
        unavailable=UNAVAILABLE_COST * (~valid).to(identity.dtype),
        identity=identity,
        pair_ranks=pair_ranks,
        second_rank=pair_ranks[:, 1],
        mixed_bonus=torch.full((), -MIXED_CELL_BONUS, device=device),
        refused=torch.full((), UNAVAILABLE_COST, device=device),
        neighbour_cost={len(norms): neighbour_weight * norms for norms in (single_norms, mixed_norms)},
    )


def label_candidates(
    usage: torch.Tensor, basis: CandidateBasis, with_mixed: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label vectors an output may give a cell, (G, K, m), and their extra cost (G, K).

    Every input alone; with ``with_mixed``, half-half pairs of the output's most used inputs: the pair of the
    top two when it uses two inputs, the three pairs of the top three when it uses three or more (a pair is
    offered when the usage of its second input, by rank, is positive).  The extra cost is the mixed cells'
    bonus, or ``UNAVAILABLE_COST`` for padding inputs and for pairs the output may not use.
    """
    groups, slots = usage.shape
    if not with_mixed or slots < 2:
        return basis.single, basis.unavailable
    top = usage.topk(min(3, slots), dim=1)
    pairs = top.indices[:, basis.pair_ranks]  # (G, pairs, 2) inputs
    mixed = basis.identity[pairs].mean(dim=2)  # (G, pairs, m): one half each
    allowed = top.values[:, basis.second_rank] > 0
    mixed_cost = torch.where(allowed, basis.mixed_bonus, basis.refused)
    return torch.cat([basis.single, mixed], dim=1), torch.cat([basis.unavailable, mixed_cost], dim=1)


def icm(
    labels: torch.Tensor,
    vectors: torch.Tensor,
    candidate_unary: torch.Tensor,
    graph: GridGraph,
    beta: float,
    sweeps: int,
    neighbour_cost: torch.Tensor,
) -> torch.Tensor:
    """Checkerboard ICM on (N, P, m) labellings over candidate label ``vectors`` (N, K, m).

    ``candidate_unary`` (N, P, K) is each candidate's unary cost per cell.  Each half-sweep gives every cell
    of one colour its best candidate given its neighbours (exact: same-colour cells are not neighbours).
    With ``sum_q ||v - z_q||^2 / 2 = deg ||v||^2 / 2 - v . sum_q z_q + const``, a cell's cost is linear in v;
    ``neighbour_cost`` (P, K) is the first term, ``beta deg ||v||^2 / 2`` (:func:`candidate_basis`).
    """
    own = candidate_unary + neighbour_cost
    coupling = beta * vectors.transpose(1, 2)
    adjacency = graph.adjacency.expand(labels.shape[0], -1, -1)
    index_shape = (*labels.shape[:2], vectors.shape[-1])
    for _ in range(sweeps):
        for colour in graph.colours:
            # own - neighbours @ coupling in one call.  Each entry of the product has one or two non-zero
            # terms (one-hot or half-half vectors), so no summation order changes it; the labels matched the
            # former two-call form to the bit in the checks by hand (a BLAS that added the terms into ``own``
            # one at a time could round a half-half candidate's cost differently in the last bit)
            local = torch.baddbmm(own, torch.bmm(adjacency, labels), coupling, alpha=-1)
            choice = local.argmin(dim=-1, keepdim=True).expand(index_shape)
            labels = torch.where(colour, vectors.gather(1, choice), labels)
    return labels


def resolve_duplicates(usage: torch.Tensor, valid_outputs: torch.Tensor) -> torch.Tensor:
    """(G, J, m) extra unit costs separating outputs that use exactly the same inputs (official set_resolve).

    For every such pair (j1 < j2) whose common set has two inputs or more, j1 pays for the first input of the
    set and j2 for the second.
    """
    support = usage > 0
    outputs, slots = support.shape[1:]
    same = (support.unsqueeze(2) == support.unsqueeze(1)).all(dim=-1)
    same = same & valid_outputs.unsqueeze(2) & valid_outputs.unsqueeze(1)
    same = same & torch.ones(outputs, outputs, dtype=torch.bool, device=usage.device).triu(1)
    several = support.sum(dim=-1) > 1
    first = support.to(usage.dtype).argmax(dim=-1)
    index = torch.arange(slots, device=usage.device)
    second = (support & (index != first.unsqueeze(-1))).to(usage.dtype).argmax(dim=-1)
    pays_first = (same.any(dim=2) & several).to(usage.dtype).unsqueeze(-1)
    pays_second = (same.any(dim=1) & several).to(usage.dtype).unsqueeze(-1)
    extra = F.one_hot(first, slots) * pays_first + F.one_hot(second, slots) * pays_second
    return extra.clamp(max=1.0)


def random_labelling(problem: AssignmentProblem, generator: torch.Generator) -> torch.Tensor:
    """(G, m, P, m) one-hot labellings with labels uniform over each partition's real inputs."""
    groups, cells, slots = problem.cost.shape
    available = problem.valid.sum(dim=1).view(groups, 1, 1)
    draws = torch.rand(groups, slots, cells, generator=generator, device=problem.cost.device)
    labels = (draws * available).long().clamp(max=slots - 1)
    one_hot = F.one_hot(labels, slots).to(problem.cost.dtype)
    return one_hot * problem.valid.view(groups, slots, 1, 1)


def solve_assignment(
    problem: AssignmentProblem,
    generator: torch.Generator,
    rounds: int,
    sweeps: int,
    set_resolve: bool,
    solve_output: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """(G, m, P, m) labellings of the m outputs of every partition (see the module docstring): a random
    start (:func:`random_labelling`), then :func:`improve_labelling`."""
    start = random_labelling(problem, generator)
    return improve_labelling(
        problem.cost,
        problem.compatibility,
        problem.valid,
        start,
        problem.beta,
        problem.gamma,
        problem.threshold,
        rounds,
        sweeps,
        set_resolve,
        solve_output or _solve_output,
    )


def improve_labelling(
    cost: torch.Tensor,
    compatibility: torch.Tensor,
    valid: torch.Tensor,
    start: torch.Tensor,
    beta: float,
    gamma: float,
    threshold: float,
    rounds: int,
    sweeps: int,
    set_resolve: bool,
    solve_output: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The solver's rounds over the outputs from the labelling ``start`` (G, m, P, m), which is not written.

    Tensors and fixed Python values only, no random draw and no host sync: on a GPU the whole solve is
    replayed as one CUDA graph (:class:`~mixbench.methods.solver_graph.SolverGraph`, :class:`CoMixup`).
    ``solve_output`` is :func:`_solve_output`, or the same function compiled under ``compile=true``.
    """
    # inference mode: no autograd bookkeeping on the solver's thousands of small operations (~15% of its time
    # on the CPU, measured by hand at batch 32); the labels are stacked outside it: an ordinary tensor
    with torch.inference_mode():
        problem = AssignmentProblem(cost, compatibility, valid, beta, gamma, threshold)
        graph = grid_graph(problem.grid, cost.device)
        basis = candidate_basis(valid, beta / 2 * graph.degree)
        # values as device tensors of the solver's dtype: a Python number would be converted on every use
        gamma_value = device_scalar(gamma, cost.device, cost.dtype)
        real_output = valid.to(cost.dtype)
        # per-output lists, not slices of one tensor: no copy into the stacked tensors per output step
        labels = list(start.unbind(dim=1))
        start_usage = start.sum(dim=2)
        usage = list(start_usage.unbind(dim=1))
        total = start_usage.sum(dim=1)
        extra = torch.zeros_like(start[:, :, 0])
        for round_index in range(rounds):
            for output in range(len(labels)):
                others = total - usage[output]
                penalty = gated_usage(others, compatibility, threshold)
                # extra + 2 penalty (2 penalty is exact, so the fused form rounds as the two operations did)
                unary = cost + torch.add(extra[:, output], penalty, alpha=2).mul(gamma_value).unsqueeze(1)
                new = solve_output(
                    labels[output], usage[output], unary, beta, graph, basis, round_index > 0, sweeps
                )
                labels[output] = new * real_output[:, output].view(-1, 1, 1)
                usage[output] = labels[output].sum(dim=1)
                total = others + usage[output]
            if set_resolve and round_index == rounds - 2:
                extra = resolve_duplicates(torch.stack(usage, dim=1), valid)
    return torch.stack(labels, dim=1)  # outside inference mode: an ordinary tensor, usable anywhere


def _solve_output(
    current: torch.Tensor,
    usage: torch.Tensor,
    unary: torch.Tensor,
    beta: float,
    graph: GridGraph,
    basis: CandidateBasis,
    with_mixed: bool,
    sweeps: int,
) -> torch.Tensor:
    """The best of: ``current``, ICM from ``current``, ICM from the unary minimiser (per partition)."""
    vectors, extra_cost = label_candidates(usage, basis, with_mixed)
    candidate_unary = torch.baddbmm(extra_cost.unsqueeze(1), unary, vectors.transpose(1, 2))
    index_shape = (*current.shape[:2], vectors.shape[-1])
    fresh = vectors.gather(1, candidate_unary.argmin(dim=-1, keepdim=True).expand(index_shape))
    twice = (torch.cat([current, fresh]), torch.cat([vectors, vectors]), torch.cat([candidate_unary] * 2))
    refined = icm(*twice, graph, beta, sweeps, basis.neighbour_cost[vectors.shape[1]])
    options = torch.cat([current.unsqueeze(0), refined.view(2, *current.shape)])  # (3, G, P, m)
    energies = output_energy(options, unary, graph, beta)
    best = energies.argmin(dim=0).view(1, -1, 1, 1).expand(1, *current.shape)
    return options.gather(0, best).squeeze(0)


# ------------------------------------------------------------------------------------------ building it


def saliency_peaks(maps: torch.Tensor) -> torch.Tensor:
    """(B, 2) row and column of each map's most salient ``PEAK_WINDOW``-square window (stride 1)."""
    window = min(PEAK_WINDOW, *maps.shape[-2:])
    smoothed = F.avg_pool2d(maps.unsqueeze(1), kernel_size=window, stride=1).flatten(1)
    columns = maps.shape[-1] - window + 1
    index = smoothed.argmax(dim=1)
    return torch.stack([index // columns, index % columns], dim=1).to(maps.dtype)


def compatibility_matrix(peaks: torch.Tensor, valid: torch.Tensor, omega: float) -> torch.Tensor:
    """(G, m, m) ``(1 - omega) I + omega A_dist``; ``A_dist`` is normalised to sum m within each partition."""
    distances = (peaks.unsqueeze(2) - peaks.unsqueeze(1)).abs().sum(dim=-1)
    distances = distances * (valid.unsqueeze(2) & valid.unsqueeze(1)).to(peaks.dtype)
    count = valid.sum(dim=1).to(peaks.dtype).view(-1, 1, 1)
    distances = (
        distances / distances.sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(peaks.dtype).tiny) * count
    )
    identity = torch.eye(peaks.shape[1], device=peaks.device)
    return (1 - omega) * identity + omega * distances


def dirichlet_prior(rng: MixRandom, valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """(G, m) one Dirichlet(alpha, ..., alpha) draw over the real inputs of each partition (0 on padding)."""
    draws = torch.as_tensor(rng.numpy.standard_gamma(alpha, size=tuple(valid.shape)), dtype=torch.float32)
    if valid.device.type == "cuda":  # pinned: the copy does not wait for the queued kernels
        draws = draws.pin_memory()
    draws = draws.to(valid.device, non_blocking=True) * valid.to(torch.float32)
    return draws / draws.sum(dim=1, keepdim=True)


def partition(tensor: torch.Tensor, groups: int, slots: int) -> torch.Tensor:
    """(G, m, ...) view of a batch padded with zeros to G * m samples."""
    padding = groups * slots - tensor.shape[0]
    padded = torch.cat([tensor, tensor.new_zeros(padding, *tensor.shape[1:])]) if padding else tensor
    return padded.reshape(groups, slots, *tensor.shape[1:])


def compose(x_groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(G, m, C, H, W) outputs: every cell p of output j is ``sum_i z_jp[i] x_i`` on that cell."""
    groups, slots, channels, height, width = x_groups.shape
    grid = math.isqrt(labels.shape[2])
    cell_h, cell_w = height // grid, width // grid
    cells = x_groups.reshape(groups, slots, channels, grid, cell_h, grid, cell_w).permute(0, 3, 5, 1, 2, 4, 6)
    cells = cells.reshape(groups, grid * grid, slots, channels * cell_h * cell_w)
    mixed = torch.einsum("gjpi,gpif->gjpf", labels, cells)
    mixed = mixed.reshape(groups, labels.shape[1], grid, grid, channels, cell_h, cell_w).permute(
        0, 1, 4, 2, 5, 3, 6
    )
    return mixed.reshape(groups, labels.shape[1], channels, height, width)


@dataclass
class CoMixed:
    """A Co-Mixup batch: outputs, and the share of every input (by batch index) in each of them."""

    x: torch.Tensor  # (B, C, H, W)
    shares: torch.Tensor  # (B, k, k, B): share of input i in each cell of output o
    problem: AssignmentProblem
    labels: torch.Tensor  # (G, m, P, m) the solver's labelling of each partition's outputs, cells row-major

    @property
    def weights(self) -> torch.Tensor:
        """(B, B) area share of input i in output o; rows sum to 1."""
        return self.shares.mean(dim=(1, 2))

    def targets(self, y: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
        """(B, classes) soft targets: the area shares of the inputs' labels, optionally smoothed."""
        target = self.weights @ F.one_hot(y, num_classes).to(self.weights.dtype)
        return target * (1 - label_smoothing) + label_smoothing / num_classes


@register_method
class CoMixup(SaliencyGuidedMixMethod):
    name = "comixup"

    def __init__(
        self,
        alpha: float = 2.0,
        grid: int = 4,
        m_part: int = 20,
        beta: float = 0.32,
        gamma: float = 1.0,
        tau: float = 0.83,
        eta: float = 0.05,
        omega: float = 0.001,
        n_iter: int = 4,
        set_resolve: bool = True,
        clean_lam: float = 1.0,
        sweeps: int = 2,
        cuda_graph: bool = True,
    ) -> None:
        super().__init__(clean_lam)
        if grid < 1 or m_part < 2 or n_iter < 1:
            raise ValueError(
                f"comixup needs grid >= 1, m_part >= 2, n_iter >= 1; got {grid}, {m_part}, {n_iter}"
            )
        self.alpha, self.grid, self.m_part = alpha, int(grid), int(m_part)
        self.beta, self.gamma, self.tau, self.eta, self.omega = beta, gamma, tau, eta, omega
        self.n_iter, self.set_resolve, self.sweeps = int(n_iter), bool(set_resolve), int(sweeps)
        self.solve_output: Callable[..., torch.Tensor] = _solve_output  # compiled by compile_parts
        # on a GPU the whole solve is one CUDA graph replay (off under compile=true: compile_parts)
        self.solver = SolverGraph(improve_labelling)
        self.solver.enabled = bool(cuda_graph)

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        """Under ``compile=true``: one output's subproblem (:func:`_solve_output`, a few dozen small
        operations run 4 x 20 times a step) is compiled once, for the two shapes of the solver (without and
        with half-half cells): fused kernels, or one CUDA graph per call in the modes that replay them,
        instead of as many launches.  Its arguments keep their shapes from step to step (the batch's
        partitions).  The whole-solve recording of eager GPU runs is then off."""
        super().compile_parts(compiler)
        self.solve_output = compiler(_solve_output)

    def solver_graphs(self) -> list[SolverGraph]:
        return [self.solver]

    def mixed_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, saliency_maps: torch.Tensor
    ) -> tuple[torch.Tensor, Logs]:
        """Soft CE on the area-share targets (the step: ``SaliencyGuidedMixMethod``)."""
        mixed = self.mix_with_saliency(x, saliency_maps)
        logits = model(mixed.x)
        loss = soft_cross_entropy(logits, mixed.targets(y, logits.shape[1], self.label_smoothing))
        weights = mixed.weights.detach()
        logs = {
            "lam": weights.amax(dim=1).mean(),  # share of each output's main input
            "inputs_per_output": (weights > 0).sum(dim=1).to(torch.float32).mean(),
        }
        return loss, logs

    def build_problem(self, saliency_maps: torch.Tensor) -> AssignmentProblem:
        """The labelling problem of a batch with these saliency maps (B, H, W); draws the Dirichlet prior."""
        batch_size = saliency_maps.shape[0]
        slots = min(self.m_part, batch_size)
        groups = math.ceil(batch_size / slots)
        cells = self.grid**2
        present = torch.ones(batch_size, dtype=torch.bool, device=saliency_maps.device)
        valid = partition(present, groups, slots)
        cell_saliency = pool_saliency(saliency_maps, self.grid).flatten(1)  # (B, P)
        saliency = partition(cell_saliency, groups, slots).transpose(1, 2)  # (G, P, m)
        prior = dirichlet_prior(self.rng, valid, self.alpha)
        cost = -saliency - self.eta / cells * torch.log(prior + PRIOR_EPS).unsqueeze(1)
        cost = torch.where(valid.unsqueeze(1), cost, torch.full_like(cost, UNAVAILABLE_COST))
        peaks = partition(saliency_peaks(saliency_maps), groups, slots)
        return AssignmentProblem(
            cost=cost,
            compatibility=compatibility_matrix(peaks, valid, self.omega),
            valid=valid,
            beta=self.beta / cells,
            gamma=self.gamma / cells,
            threshold=self.tau * cells,
        )

    def mix_with_saliency(self, x: torch.Tensor, saliency_maps: torch.Tensor) -> CoMixed:
        """The Co-Mixup outputs of ``x`` given its saliency maps (B, H, W)."""
        batch_size, _, height, width = x.shape
        if batch_size < 2:
            raise ValueError("comixup mixes several images: it needs a batch of at least 2")
        check_grid(height, width, self.grid)
        with torch.autocast(x.device.type, enabled=False):
            problem = self.build_problem(saliency_maps.float())
            with serial_on_cpu(x.device):
                labels = self.solver(
                    problem.cost,
                    problem.compatibility,
                    problem.valid,
                    random_labelling(problem, self.rng.torch),
                    problem.beta,
                    problem.gamma,
                    problem.threshold,
                    self.n_iter,
                    self.sweeps,
                    self.set_resolve,
                    self.solve_output,
                )
            groups, slots = problem.valid.shape
            outputs = compose(partition(x.float(), groups, slots), labels).flatten(0, 1)[:batch_size]
            outputs = in_layout_of(outputs, x)
            block_diagonal = torch.einsum("gjpi,gf->gjpfi", labels, torch.eye(groups, device=x.device))
            shares = block_diagonal.reshape(groups * slots, self.grid, self.grid, groups * slots)
        return CoMixed(
            x=outputs, shares=shares[:batch_size, :, :, :batch_size], problem=problem, labels=labels
        )

    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """Inputs, their saliency, the mixed outputs and each output's main input with its share per cell.

        ``lam`` is the area share of each output's main input.
        """
        maps = input_gradient_saliency(model, x, y).maps
        with torch.no_grad():
            mixed = self.mix_with_saliency(x, maps)
            weights = mixed.weights
            main = weights.argmax(dim=1)
            main_share = mixed.shares.gather(3, main.view(-1, 1, 1, 1).expand(-1, self.grid, self.grid, 1))
            rows = {
                "inputs": x,
                "saliency": maps.unsqueeze(1),
                "outputs": mixed.x,
                "main input of output": x[main],
                "its share per cell": upsample_cells(main_share.squeeze(-1), *x.shape[-2:]),
            }
        used = (weights > 0).sum(dim=1).float().mean().item()
        note = f"{self.grid}x{self.grid} cells, partitions of {self.m_part}; {used:.1f} inputs per output"
        return MixPreview(rows=rows, lam=weights.amax(dim=1).float().cpu(), note=note)
