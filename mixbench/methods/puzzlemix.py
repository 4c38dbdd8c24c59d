"""Puzzle Mix (Kim et al., "Puzzle Mix: Exploiting Saliency and Local Statistics for Optimal Mixup",
ICML 2020).

Per batch: ``lam ~ Beta(alpha, alpha)``, ``perm = randperm(B)``, a grid size ``k`` drawn from ``grid_sizes``
(those that divide the image) and the gradient saliency of the clean batch (``gradient_saliency.py``),
averaged on the k x k grid and normalised to sum 1: ``s_a`` for each image, ``s_b = s_a[perm]`` its partner's.

Mask.  Every cell p takes a value ``m_p`` in {0, 1/(n-1), ..., 1} (``n_labels`` = 3: {0, 0.5, 1}), the share
of image a there.  The mask minimises

    E(m) = sum_p [ m_p c1_p + (1 - m_p) c0_p + eta / k^2 * -log Binom(m_p (n-1); n-1, lam) ]
         + sum_{p~q} (beta' + w_pq) (m_p - m_q)^2                                   (4-neighbourhood)

with ``beta' = beta / k / 16``.  ``c1_p = s_b(p) + ...`` is the cost of keeping a (b's saliency is lost),
``c0_p = s_a(p) + ...`` that of giving the cell to b.  The dots and ``w_pq`` are the data smoothness term: for
an edge p~q whose sides show sources u and v, ``D_uv = gamma * beta' * mean |x_u(last row of p) - x_v(first
row of q)|`` (pixel units, images average-pooled by ``neigh_size``); as in the official code this 2x2 table is
split into per-side shares added to c1/c0 (``(D_u0 + D_u1)/2`` on the upper/left side, ``(D_0v + D_1v)/2`` on
the lower/right one) and the weight ``w_pq = (D_ab + D_ba - D_aa - D_bb)/2``.  The prior is the official
binomial (n = 3: -log lam^2, -log 2 lam (1-lam), -log (1-lam)^2 for m = 1, 0.5, 0).

Solver.  The official one is an alpha-beta-swap graph cut (pyGCO) on the CPU, one image at a time.  Ours is a
batched block-coordinate descent of the same energy on the device, from n + 1 starts run together (the unary
minimiser, i.e. each cell's best value ignoring smoothness, and the n constant masks), keeping the lowest
final energy.  Each of the ``solver_sweeps`` sweeps updates four blocks in turn: the even rows, the odd rows,
the even columns, the odd columns.  Rows of one parity do not touch each other in a 4-neighbourhood, so given
the other rows each is an independent chain, minimised *exactly* by Viterbi dynamic programming (n values,
pairwise ``(beta' + w)(m - m')^2``, the fixed neighbours' pairwise costs folded into the unary).  Every block
step is an exact minimisation over that block, so the energy never increases; the result is a local minimum
for whole-row and whole-column changes (stronger than single-cell ICM), not a certified global one.  On random
3 x 3 problems it reaches the brute-force minimum in >= 99% of cases (tested), and 2 sweeps converge at 32 px.

Transport.  Each image's salient cells move into the region where the mask shows that image, on a grid of
``min(transport_size, block side)`` px cells (the mask is enlarged to it by nearest neighbours).  Moving
cell i to cell j costs ``t_eps |pos_i - pos_j|^2 / (side - 1)^2 - s(i) [m_j > 0]`` (image b: ``[m_j < 1]``).
The official greedy assignment runs for ``side`` rounds: every source claims its cheapest destination, each
destination goes to its cheapest claimant, and each losing claim costs 1 more from then on; the last round's
winners move, destinations nobody won are left empty (zero).

    x~ = up(m) T_a(x) + (1 - up(m)) T_b(x[perm]),   lam_i = mean(m_i)   (per sample, the final mask)
    loss = mean_i [lam_i CE(f(x~)_i, y_i) + (1 - lam_i) CE(f(x~)_i, y_perm(i))]  [+ clean_lam CE(f(x), y)]

Defaults: the official CIFAR command (alpha 1, n_labels 3, beta 1.2, gamma 0.5, eta 0.2, neigh_size 4,
transport on, t_size 4, t_eps 0.8, clean_lam 0); the official Tiny-ImageNet command uses clean_lam 1.

Deliberate deviations from the official code:

* the solver above replaces the graph cut (on the device, batched, no host round trip);
* a destination goes to its cheapest claimant; the official code compares the claimants with the zeros of the
  non-claimants (ties to the lowest index), so a destination whose claimants all cost >= 0 stays empty, which
  only happens where the image is hidden by the mask or has zero saliency;
* the loss is the mixed cross-entropy shared by every method here (official: BCE on softmax outputs) and the
  clean term ``clean_lam * CE`` on the saliency forward's logits (official: ``2 clean_lam CE / classes`` from
  the same forward, on the BCE scale);
* the saliency forward runs in train mode (official: eval mode when clean_lam = 0), see ``gradient_saliency``;
* the official code un-normalises the batch with the dataset's std before measuring boundary differences.
  Methods do not see the dataset's statistics, so differences of the normalised batch are multiplied by
  ``pixel_std`` (0.25, about CIFAR's per-channel std; the mean cancels in differences);
* the adversarial variant (``adv_p``) is not implemented (off in the official CIFAR and Tiny commands);
* ``neigh_size`` is lowered to the largest divisor of the block side not above it, the transport cell to the
  largest divisor of the image side (the official code assumes power-of-two sides), and grid sizes that do
  not divide the image are skipped.  Images must be square, as in the official code.

Cost: like the official code, the transport builds a dense (cells x cells) cost per image: 256 x 256 at 32 px
and k = 16; 3136 x 3136 at 224 px with k = 16 and 4 px cells (40 MB per image in fp32).  Both images'
transports run as one batch of 2B.  A step's passes (``saliency_guided``): with ``clean_lam = 0`` a forward
and a backward into the input only for the saliency, then the mixed batch's forward and backward, about 5
forward-units against a plain step's 3 (the official code spends 6: its saliency backward also makes the
weight gradients it discards).  On the CPU the mask solver's loop of small operations runs on one intra-op
thread (``serial_on_cpu``: same results); the whole mix (energy, solver, transport) took 15 ms (median) of a
1.5 s step on r18 at 32 px, batch 32, 2 CPU threads.  On a GPU those operations are kernel launches (Puzzle
Mix 3.51x vanilla on an H200 at 5b521f1): under ``compile=true`` the chain solver and the transport's rounds
are compiled (:meth:`PuzzleMix.compile_parts`), one graph per grid size.  With
``compile_mode=reduce-overhead`` the H200 ran the step in 15.7 ms against 39.6 ms eager, 4.02x vanilla's
CUDA-graph step: the block sweep around the compiled solver stays eager (results/bench/README.md).  Since
then, in eager mode on a GPU, the whole block sweep (:func:`minimise_grid_energy`) and the transport's rounds
are each recorded once per grid size and replayed as one CUDA graph (``cuda_graph: true``, the default;
:mod:`mixbench.methods.solver_graph`); not yet measured on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import (
    FORWARD_BACKWARD_INPUT,
    Logs,
    MixedBatch,
    MixPreview,
    in_layout_of,
    mixed_cross_entropy,
)
from mixbench.methods.gradient_saliency import input_gradient_saliency, pool_saliency
from mixbench.methods.registry import register_method
from mixbench.methods.saliency_guided import SaliencyGuidedMixMethod, serial_on_cpu, upsample_cells
from mixbench.methods.solver_graph import SolverGraph

PRIOR_EPS = 1e-8  # inside the official prior's log
SMOOTHNESS_SCALE = 16.0  # beta' = beta / k / 16 (official normalisation)


# ------------------------------------------------------------------------------------------ the energy


@dataclass
class GridEnergy:
    """``E(l) = sum_p unary[p, l_p] + sum_edges w (v[l_p] - v[l_q])^2`` on a batch of k x k grids.

    ``unary`` (B, k, k, L); ``w_down`` (B, k-1, k) weighs the edge between (r, c) and (r+1, c); ``w_right``
    (B, k, k-1) the edge between (r, c) and (r, c+1); ``values`` (L,) the mask value of each label.
    """

    unary: torch.Tensor
    w_down: torch.Tensor
    w_right: torch.Tensor
    values: torch.Tensor

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) energy of integer labellings (B, k, k)."""
        unary = self.unary.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(dim=(1, 2))
        mask = self.values[labels]
        vertical = (self.w_down * (mask[:, 1:] - mask[:, :-1]) ** 2).sum(dim=(1, 2))
        horizontal = (self.w_right * (mask[:, :, 1:] - mask[:, :, :-1]) ** 2).sum(dim=(1, 2))
        return unary + vertical + horizontal

    def transposed(self) -> GridEnergy:
        return GridEnergy(
            unary=self.unary.transpose(1, 2),
            w_down=self.w_right.transpose(1, 2),
            w_right=self.w_down.transpose(1, 2),
            values=self.values,
        )


def label_values(n_labels: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Mask value (share of image a) of each label: 0, 1/(n-1), ..., 1."""
    if n_labels < 2:
        raise ValueError(f"puzzlemix needs n_labels >= 2, got {n_labels}")
    return torch.linspace(0.0, 1.0, n_labels, device=device)


def label_prior(lam: float, n_labels: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """-log of the binomial probability of each label: label l has l of its n-1 parts from image a.

    Computed on the device from ``arange`` (no host-to-device copy, which would wait for queued kernels).
    """
    parts = n_labels - 1
    taken = torch.arange(n_labels, device=device, dtype=torch.float32)
    log_ways = math.lgamma(n_labels) - torch.lgamma(taken + 1) - torch.lgamma(parts - taken + 1)
    probability = log_ways.exp() * torch.pow(lam, taken) * torch.pow(1.0 - lam, parts - taken)
    return -torch.log(probability + PRIOR_EPS)


def vertical_gaps(upper: torch.Tensor, lower: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, k-1, k) mean |upper's last row - lower's first row| across each horizontal block boundary.

    ``upper``/``lower`` (B, C, k*cells, k*cells) are pooled images; a block is ``cells`` pooled pixels high.
    """
    batch, _, height, width = upper.shape
    blocks = height // cells
    difference = upper[:, :, cells - 1 : -1 : cells, :] - lower[:, :, cells::cells, :]
    return difference.abs().mean(dim=1).reshape(batch, blocks - 1, width // cells, cells).mean(dim=-1)


def boundary_penalties(
    image_a: torch.Tensor, image_b: torch.Tensor, cells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Data smoothness tables ``D[u, v]`` for every vertical and horizontal edge, source 0 = b, 1 = a.

    Returns (B, 2, 2, k-1, k) for edges between rows (u: upper side, v: lower side) and (B, 2, 2, k, k-1) for
    edges between columns (u: left side, v: right side).
    """
    sources = (image_b, image_a)
    down = torch.stack([torch.stack([vertical_gaps(u, v, cells) for v in sources], 1) for u in sources], 1)
    flipped = [s.transpose(-1, -2) for s in sources]
    right = torch.stack([torch.stack([vertical_gaps(u, v, cells) for v in flipped], 1) for u in flipped], 1)
    return down, right.transpose(-1, -2)


def _side_shares(table: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source shares of an edge table on its first (upper/left) and second (lower/right) side.

    ``dim`` is the grid axis the edges cross (-2 for vertical edges, -1 for horizontal ones).  Each share is
    (B, 2, k, k): the cost a cell pays for the source index in dim 1, zero-padded where the cell has no edge.
    """
    first = table.mean(dim=2)  # (D_u0 + D_u1) / 2 for the upper/left cell taking source u
    second = table.mean(dim=1)  # (D_0v + D_1v) / 2 for the lower/right cell taking source v
    pad_after = (0, 0, 0, 1) if dim == -2 else (0, 1, 0, 0)
    pad_before = (0, 0, 1, 0) if dim == -2 else (1, 0, 0, 0)
    return F.pad(first, pad_after), F.pad(second, pad_before)


def build_energy(
    saliency_a: torch.Tensor,
    saliency_b: torch.Tensor,
    pooled_a: torch.Tensor,
    pooled_b: torch.Tensor,
    lam: float,
    n_labels: int,
    beta: float,
    gamma: float,
    eta: float,
) -> GridEnergy:
    """Puzzle Mix's energy for masks on the k x k grid of ``saliency_a``/``saliency_b`` (B, k, k, normalised).

    ``pooled_a``/``pooled_b`` are the two images average-pooled by the neighbourhood size, in pixel units.
    """
    grid = saliency_a.shape[-1]
    cells = pooled_a.shape[-1] // grid
    scale = beta / grid / SMOOTHNESS_SCALE
    down, right = boundary_penalties(pooled_a, pooled_b, cells)
    down, right = gamma * scale * down, gamma * scale * right
    shares = [*_side_shares(down, -2), *_side_shares(right, -1)]
    share = torch.stack(shares).sum(0)  # (B, 2, k, k): [:, 0] cell given to b, [:, 1] cell kept for a
    keep_cost = saliency_b + share[:, 1]
    give_cost = saliency_a + share[:, 0]
    values = label_values(n_labels, saliency_a.device)
    prior = eta / grid**2 * label_prior(lam, n_labels, saliency_a.device)
    unary = values * keep_cost.unsqueeze(-1) + (1 - values) * give_cost.unsqueeze(-1) + prior
    w_down = scale + (down[:, 1, 0] + down[:, 0, 1] - down[:, 1, 1] - down[:, 0, 0]) / 2
    w_right = scale + (right[:, 1, 0] + right[:, 0, 1] - right[:, 1, 1] - right[:, 0, 0]) / 2
    return GridEnergy(unary=unary, w_down=w_down, w_right=w_right, values=values)


# ------------------------------------------------------------------------------------------ the solver


def viterbi(unary: torch.Tensor, weights: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Exact minimiser (N, T) of ``sum_t unary[:, t, l_t] + sum_t weights[:, t] * distance[l_t, l_t+1]``.

    ``unary`` (N, T, L), ``weights`` (N, T-1), ``distance`` (L, L).  Ties go to the lowest label.  The
    pairwise costs of every link are one product before the loop (the same products, one launch instead of
    T-1: the eager loop is launch-bound on a GPU).
    """
    cost = unary[:, 0]
    pairwise = weights[:, :, None, None] * distance  # (N, T-1, L, L)
    pointers = []
    for step in range(1, unary.shape[1]):
        total = cost.unsqueeze(2) + pairwise[:, step - 1]
        cost, best_previous = total.min(dim=1)
        cost = cost + unary[:, step]
        pointers.append(best_previous)
    label = cost.argmin(dim=-1)
    path = [label]
    for best_previous in reversed(pointers):
        label = best_previous.gather(1, label.unsqueeze(1)).squeeze(1)
        path.append(label)
    return torch.stack(path[::-1], dim=1)


ChainSolver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _fixed_neighbour_costs(energy: GridEnergy, labels: torch.Tensor) -> torch.Tensor:
    """(B, k, k, L): pairwise cost of each label against the current labels of the cells above and below."""
    mask = energy.values[labels].unsqueeze(-1)
    values = energy.values.view(1, 1, 1, -1)
    squared = (values - mask) ** 2  # (B, k, k, L): each label against each cell's current one, once
    to_above = energy.w_down.unsqueeze(-1) * squared[:, :-1]  # for rows 1..k-1
    to_below = energy.w_down.unsqueeze(-1) * squared[:, 1:]  # for rows 0..k-2
    return F.pad(to_above, (0, 0, 0, 0, 1, 0)) + F.pad(to_below, (0, 0, 0, 0, 0, 1))


def _optimise_rows(
    energy: GridEnergy, labels: torch.Tensor, parity: int, chain_solver: ChainSolver = viterbi
) -> torch.Tensor:
    """``labels`` with every row of the given parity replaced by its exact minimiser given the other rows
    (``chain_solver``: :func:`viterbi`, or the same compiled)."""
    batch, grid, _ = labels.shape
    local = energy.unary + _fixed_neighbour_costs(energy, labels)
    chains = local[:, parity::2]
    rows = chains.shape[1]
    distance = (energy.values.unsqueeze(0) - energy.values.unsqueeze(1)) ** 2
    weights = energy.w_right[:, parity::2].reshape(batch * rows, grid - 1)
    best = chain_solver(chains.reshape(batch * rows, grid, -1), weights, distance)
    updated = labels.clone()
    updated[:, parity::2] = best.reshape(batch, rows, grid)
    return updated


def _stack_energy(energy: GridEnergy, copies: int) -> GridEnergy:
    return GridEnergy(
        unary=energy.unary.repeat(copies, 1, 1, 1),
        w_down=energy.w_down.repeat(copies, 1, 1),
        w_right=energy.w_right.repeat(copies, 1, 1),
        values=energy.values,
    )


def minimise_energy(energy: GridEnergy, sweeps: int, chain_solver: ChainSolver = viterbi) -> torch.Tensor:
    """Block-coordinate descent (exact row chains, then exact column chains) from several starts.

    Starts: the unary minimiser and every constant labelling; all run together, the lowest energy is kept.
    """
    batch, grid, _, n_labels = energy.unary.shape
    constant = torch.arange(n_labels, device=energy.unary.device).repeat_interleave(batch)
    starts = torch.cat([energy.unary.argmin(dim=-1), constant.view(-1, 1, 1).expand(-1, grid, grid)])
    stacked = _stack_energy(energy, n_labels + 1)
    columns_energy = stacked.transposed()
    labels = starts
    for _ in range(sweeps):
        for parity in (0, 1):
            labels = _optimise_rows(stacked, labels, parity, chain_solver)
        columns = labels.transpose(1, 2)
        for parity in (0, 1):
            columns = _optimise_rows(columns_energy, columns, parity, chain_solver)
        labels = columns.transpose(1, 2)
    best = stacked(labels).view(n_labels + 1, batch).argmin(dim=0)
    return labels.view(n_labels + 1, batch, grid, grid)[best, torch.arange(batch, device=best.device)]


def minimise_grid_energy(
    unary: torch.Tensor,
    w_down: torch.Tensor,
    w_right: torch.Tensor,
    values: torch.Tensor,
    sweeps: int,
    chain_solver: ChainSolver,
) -> torch.Tensor:
    """:func:`minimise_energy` of the :class:`GridEnergy` of these tensors: the form a
    :class:`~mixbench.methods.solver_graph.SolverGraph` records (tensors and fixed Python values)."""
    return minimise_energy(GridEnergy(unary, w_down, w_right, values), sweeps, chain_solver)


# --------------------------------------------------------------------------------------- the transport


def cell_distances(rows: int, columns: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, N) squared distances between the cells of a grid (row-major), divided by (side - 1)^2.

    Integer arithmetic until the division: equal distances are exactly equal (ties as in the official table).
    """
    row = torch.arange(rows, device=device).repeat_interleave(columns)
    column = torch.arange(columns, device=device).repeat(rows)
    squared = (row.unsqueeze(1) - row.unsqueeze(0)) ** 2 + (column.unsqueeze(1) - column.unsqueeze(0)) ** 2
    return squared.float() / max(max(rows, columns) - 1, 1) ** 2


def transport_sources(
    shown: torch.Tensor, saliency: torch.Tensor, distances: torch.Tensor, eps: float, rounds: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy assignment of source cells to destination cells; returns (source of each destination, won).

    ``shown`` (B, N) bool: where the mask shows this image; ``saliency`` (B, N).  Every round each source
    claims its cheapest destination, each destination goes to its cheapest claimant (the lowest index among
    equals) and every losing claim costs 1 more from then on.  ``won`` (B, N) says whether the last round gave
    the destination to anyone (an unwon destination is left empty).
    """
    shown = shown.to(saliency.dtype)
    cost = eps * distances - saliency.unsqueeze(2) * shown.unsqueeze(1)  # (B, source, destination)
    batch, cells = saliency.shape
    sources = torch.arange(cells, device=cost.device).expand(batch, cells)
    nobody = torch.full((batch, cells), cells, device=cost.device)
    winner = nobody
    for _ in range(rounds):
        claim, choice = cost.min(dim=2)
        best = torch.full_like(claim, math.inf).scatter_reduce(1, choice, claim, "amin")
        cheapest = torch.where(claim == best.gather(1, choice), sources, nobody)
        winner = nobody.scatter_reduce(1, choice, cheapest, "amin")
        lost = winner.gather(1, choice) != sources
        cost.scatter_add_(2, choice.unsqueeze(2), lost.unsqueeze(2).to(cost.dtype))
    return winner.clamp(max=cells - 1), winner < cells


def move_cells(
    x: torch.Tensor, source: torch.Tensor, won: torch.Tensor, rows: int, columns: int
) -> torch.Tensor:
    """``x`` (B, C, H, W) whose destination cell j holds source cell ``source[:, j]`` (zero where not won)."""
    batch, channels, height, width = x.shape
    cell_h, cell_w = height // rows, width // columns
    cells = x.reshape(batch, channels, rows, cell_h, columns, cell_w).permute(0, 2, 4, 1, 3, 5)
    cells = cells.reshape(batch, rows * columns, channels, cell_h, cell_w)
    moved = cells.gather(1, source.view(batch, -1, 1, 1, 1).expand_as(cells)) * won.view(batch, -1, 1, 1, 1)
    moved = moved.reshape(batch, rows, columns, channels, cell_h, cell_w).permute(0, 3, 1, 4, 2, 5)
    return moved.reshape(batch, channels, height, width)


def largest_divisor_up_to(number: int, limit: int) -> int:
    """The largest divisor of ``number`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, max(min(number, limit), 1) + 1) if number % d == 0)


# ------------------------------------------------------------------------------------------ the method


@dataclass
class PuzzleMixed:
    """A Puzzle Mix batch and what produced it (for previews and tests)."""

    batch: MixedBatch  # lam: per-sample share of image a (the final mask's mean); mask: share of x[perm]
    grid: int
    mask: torch.Tensor  # (B, k, k) share of image a per cell
    saliency: torch.Tensor  # (B, k, k) normalised saliency of image a
    energy: GridEnergy


@register_method
class PuzzleMix(SaliencyGuidedMixMethod):
    name = "puzzlemix"
    provides_clean_forward = True  # mix_with_model hands over the saliency forward's logits

    def __init__(
        self,
        alpha: float = 1.0,
        grid_sizes: tuple[int, ...] | list[int] = (2, 4, 8, 16),
        n_labels: int = 3,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        transport: bool = True,
        transport_size: int = 4,
        t_eps: float = 0.8,
        clean_lam: float = 0.0,
        pixel_std: float = 0.25,
        solver_sweeps: int = 2,
        cuda_graph: bool = True,
    ) -> None:
        super().__init__(clean_lam)
        if not grid_sizes or min(grid_sizes) < 2:
            raise ValueError(f"puzzlemix grid_sizes must be sizes >= 2, got {list(grid_sizes)}")
        label_values(n_labels)  # validates n_labels
        self.alpha = alpha
        self.grid_sizes = tuple(int(k) for k in grid_sizes)
        self.n_labels = int(n_labels)
        self.beta, self.gamma, self.eta = beta, gamma, eta
        self.neigh_size = int(neigh_size)
        self.transport = bool(transport)
        self.transport_size = int(transport_size)
        self.t_eps = t_eps
        self.pixel_std = pixel_std
        self.solver_sweeps = int(solver_sweeps)
        # the solver's two loops of small operations: on a GPU each is one CUDA graph replay per grid size;
        # under compile=true compile_parts compiles the chain solver and the transport instead
        self.chain_solver: ChainSolver = viterbi
        self.mask_solver = SolverGraph(minimise_grid_energy)
        transport_graph = SolverGraph(transport_sources)
        self.mask_solver.enabled = transport_graph.enabled = bool(cuda_graph)
        self.transport_solver: Callable[..., tuple[torch.Tensor, torch.Tensor]] = transport_graph

    def compile_parts(self, compiler: Callable[..., Callable]) -> None:
        """Under ``compile=true``: the exact chain minimisation (:func:`viterbi`, 8 calls a step at 2 sweeps)
        and the transport's greedy rounds (:func:`transport_sources`, one call), each a loop of small
        operations, are compiled: fused kernels, or one CUDA graph per call in the modes that replay them.
        Their shapes follow the grid size drawn each step (one graph per size, ``dynamic=False``: their loops
        run over the grid's side)."""
        super().compile_parts(compiler)
        self.chain_solver = compiler(viterbi, dynamic=False)
        self.transport_solver = compiler(transport_sources, dynamic=False)

    def solver_graphs(self) -> list[SolverGraph]:
        return [
            graph for graph in (self.mask_solver, self.transport_solver) if isinstance(graph, SolverGraph)
        ]

    # -- the step ----------------------------------------------------------------------------------------
    def mixed_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, saliency_maps: torch.Tensor
    ) -> tuple[torch.Tensor, Logs]:
        """Mixed CE with each sample's final mask mean as its lam (the step: ``SaliencyGuidedMixMethod``)."""
        mixed = self.mix_with_saliency(x, y, saliency_maps)
        batch = mixed.batch
        loss = mixed_cross_entropy(model(batch.x), batch.y_a, batch.y_b, batch.lam, self.label_smoothing)
        return loss, {"lam": batch.lam.mean(), "grid": torch.full((), float(mixed.grid), device=x.device)}

    def mix_with_model(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, capture_stage: int | None = None
    ) -> MixedBatch:
        """The mixed batch alone (for wrappers such as SUMix): saliency from ``model``, then the mix.  The
        saliency forward's logits of the clean batch (and, with ``capture_stage``, its hidden state there)
        come with the batch, detached, for the wrapper to reuse."""
        saliency = input_gradient_saliency(model, x, y, capture_stage=capture_stage)
        batch = self.mix_with_saliency(x, y, saliency.maps).batch
        batch.clean_logits, batch.clean_features = saliency.logits, saliency.features
        return batch

    def mix_passes(self) -> dict[str, float]:
        return {FORWARD_BACKWARD_INPUT: 1.0}  # mix_with_model's saliency, without the clean term

    def valid_grid_sizes(self, height: int, width: int) -> list[int]:
        return [k for k in self.grid_sizes if height % k == 0 and width % k == 0]

    def mix_with_saliency(self, x: torch.Tensor, y: torch.Tensor, saliency_maps: torch.Tensor) -> PuzzleMixed:
        """The Puzzle Mix of ``x`` given its saliency maps (B, H, W); draws k, lam and the pairing."""
        batch_size, _, height, width = x.shape
        if batch_size < 2:
            raise ValueError("puzzlemix mixes pairs of images: it needs a batch of at least 2")
        if height != width:
            raise ValueError(
                f"puzzlemix works on square images (k x k grids of square cells), got {height}x{width}"
            )
        sizes = self.valid_grid_sizes(height, width)
        if not sizes:
            raise ValueError(
                f"puzzlemix: none of the grid sizes {list(self.grid_sizes)} divides {height}x{width}"
            )
        grid = self.rng.choice(sizes)
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(batch_size)
        with torch.autocast(x.device.type, enabled=False):
            return self._mix(x.float(), y, saliency_maps.float(), grid, lam, perm)

    def _mix(
        self, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, grid: int, lam: float, perm: torch.Tensor
    ) -> PuzzleMixed:
        height, width = x.shape[-2:]
        block = height // grid
        saliency = pool_saliency(maps, grid)
        neighbourhood = largest_divisor_up_to(block, self.neigh_size)
        pooled = F.avg_pool2d(x * self.pixel_std, neighbourhood)
        energy = build_energy(
            saliency,
            saliency[perm],
            pooled,
            pooled[perm],
            lam,
            self.n_labels,
            self.beta,
            self.gamma,
            self.eta,
        )
        with serial_on_cpu(x.device):
            labels = self.mask_solver(
                energy.unary,
                energy.w_down,
                energy.w_right,
                energy.values,
                self.solver_sweeps,
                self.chain_solver,
            )
            mask = energy.values[labels]
        if self.transport:
            image_a, image_b = self._transport(x, maps, mask, perm, block)
        else:
            image_a, image_b = x, x[perm]
        mask_pixels = upsample_cells(mask, height, width)
        mixed = in_layout_of(mask_pixels * image_a + (1 - mask_pixels) * image_b, x)
        lam_per_sample = mask.mean(dim=(1, 2))
        batch = MixedBatch(x=mixed, y_a=y, y_b=y[perm], lam=lam_per_sample, perm=perm, mask=1 - mask_pixels)
        return PuzzleMixed(batch=batch, grid=grid, mask=mask, saliency=saliency, energy=energy)

    def _transport(
        self, x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor, block: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images with their salient cells moved into the region the mask shows them in."""
        side = x.shape[-1] // largest_divisor_up_to(x.shape[-1], min(self.transport_size, block))
        fine_mask = F.interpolate(mask.unsqueeze(1), size=(side, side), mode="nearest").flatten(1)
        saliency = pool_saliency(maps, side).flatten(1)
        distances = cell_distances(side, side, x.device)
        # both images' problems in one batch of 2B (each row is solved on its own: the same result)
        shown = torch.cat([fine_mask > 0, fine_mask < 1])
        source, won = self.transport_solver(
            shown, torch.cat([saliency, saliency[perm]]), distances, self.t_eps, side
        )
        moved = move_cells(torch.cat([x, x[perm]]), source, won, side, side)
        return moved[: x.shape[0]], moved[x.shape[0] :]

    # -- previews ----------------------------------------------------------------------------------------
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """Sources, image a's saliency and cells, the mask (share of a) and the mixed images."""
        maps = input_gradient_saliency(model, x, y).maps
        with torch.no_grad():
            mixed = self.mix_with_saliency(x, y, maps)
            height, width = x.shape[-2:]
            rows = {
                "source a": x,
                "saliency a": maps.unsqueeze(1),
                f"saliency a ({mixed.grid}x{mixed.grid})": upsample_cells(mixed.saliency, height, width),
                "source b": x[mixed.batch.perm],
                "mask (share of a)": upsample_cells(mixed.mask, height, width),
                "mixed": mixed.batch.x,
            }
        note = f"grid {mixed.grid}x{mixed.grid}, transport {'on' if self.transport else 'off'}"
        return MixPreview(rows=rows, lam=mixed.batch.lam.float().cpu(), note=note)
