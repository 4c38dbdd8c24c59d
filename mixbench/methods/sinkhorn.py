"""Entropic optimal transport between two point sets with uniform weights, solved by Sinkhorn in log space.

For a batch of cost matrices ``C`` (B, n, m) and regularisation ``eps`` the plan is

    P = argmin_{P >= 0, P 1 = 1/n, P^T 1 = 1/m}  <P, C> - eps * H(P)
      = exp((-C + u 1^T + 1 v^T) / eps)

with dual potentials ``u`` (B, n) and ``v`` (B, m) found by alternating the two marginal constraints
(Cuturi 2013; log-domain updates as in Peyré & Cuturi, "Computational Optimal Transport", 2019, Sec. 4.4):

    u <- eps * (log(1/n) - logsumexp_j((-C_ij + v_j) / eps))          (rows sum to 1/n)
    v <- eps * (log(1/m) - logsumexp_i((-C_ij + u_i) / eps))          (columns sum to 1/m)

Each iteration ends with the ``v`` update, so the **column** sums of the returned plan are exact whatever
happened before; the row sums are exact only once the iteration has converged.

Stopping rule (AlignMixup's): stop after the first iteration whose change of ``u``, summed over the ``n``
points, is below ``threshold`` -- averaged over the batch (``per_sample=False``: the whole batch stops
together, as in the official code) or for each sample on its own (``per_sample=True``).  The official loop
reads that number on the host every iteration (a device sync per iteration).  Here the iterations run in
blocks of ``check_every`` (all ``max_iter`` in one block when it is 0), keeping every iteration's
potentials, and the rule is applied to a block after it ran, on the device (:func:`stop_in_block`): a sample
(or the batch) takes the potentials of the first iteration that met the rule -- the result the official loop
returns when it breaks, to the bit (later iterations are computed, and discarded).  The host looks at the
"all stopped" flag after each block but the last, to skip the remaining blocks; that is fewer than
``max_iter / check_every`` syncs, none when ``check_every`` is 0.

The log-sum-exps are :func:`finite_logsumexp`: ``torch.logsumexp``'s operations less its guard against
infinite maxima, 6 kernels a call instead of 9.  The loop is launch-bound on a GPU (100 iterations a step),
so an iteration is only its two updates, 16 kernels; the rule costs ~20 kernels per block.  Until
1a4faac the rule was applied every iteration, freezing stopped potentials by masking: 26 kernels an
iteration (32 with ``torch.logsumexp``), 2,609 non-view operations for the official 100 iterations against
1,630 now.  The values are bitwise those of ``torch.logsumexp`` on finite inputs, which these always are
(finite costs, finite potentials): ``tests/test_methods_alignmixup.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class SinkhornResult:
    """The plan (B, n, m), the iterations each sample ran (B,) and whether it met the stopping rule (B,)."""

    plan: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor


def squared_euclidean_cost(points_a: torch.Tensor, points_b: torch.Tensor) -> torch.Tensor:
    """``C[b, i, j] = ||points_a[b, i] - points_b[b, j]||^2`` for (B, n, d) and (B, m, d) inputs.

    Expanded as ``||a||^2 + ||b||^2 - 2 a.b`` with one batched matrix product, so memory is O(B n m),
    never the O(B n m d) of broadcasting the differences; clamped at 0 against rounding.
    """
    squared_a = points_a.pow(2).sum(-1, keepdim=True)
    squared_b = points_b.pow(2).sum(-1).unsqueeze(-2)
    cost = torch.baddbmm(squared_a + squared_b, points_a, points_b.transpose(-2, -1), alpha=-2.0)
    return cost.clamp_min_(0.0)


def finite_logsumexp(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(sum(exp(values), dim))`` for finite ``values``: the max taken out, as ``torch.logsumexp`` does,
    in the same operations and order (so the same bits), without its masking of infinite maxima, which
    would need 3 more kernels per call.  A slice of all ``-inf`` gives NaN here (``-inf`` there)."""
    maxes = values.amax(dim=dim, keepdim=True)
    sums = (values - maxes).exp_().sum(dim=dim)
    return sums.log_().add_(maxes.squeeze(dim))


class StoppingState(NamedTuple):
    """Per group (the whole batch, or each sample with ``per_sample``): whether it has met the stopping rule,
    the iterations it ran, and its samples' potentials at its stopping iteration (the latest ones until it
    stops): ``f`` (B, n), ``g`` (B, m), ``iterations`` and ``stopped`` (groups,)."""

    f: torch.Tensor
    g: torch.Tensor
    iterations: torch.Tensor
    stopped: torch.Tensor


def stop_in_block(
    f_history: torch.Tensor,
    g_history: torch.Tensor,
    threshold: float,
    per_sample: bool,
    start: int,
    state: StoppingState,
) -> StoppingState:
    """The stopping rule applied after a block of L iterations that began at iteration ``start``.

    ``f_history`` (L + 1, B, n) and ``g_history`` (L + 1, B, m) are the potentials before the block and after
    each of its iterations.  A group that had not stopped takes the potentials of the block's first iteration
    whose change of ``f``, summed over the points (and averaged over the batch unless ``per_sample``), is
    below ``threshold``, and stops; without one, it takes the block's last potentials and goes on.
    """
    length, batch = f_history.shape[0] - 1, f_history.shape[1]
    change = (f_history[1:] - f_history[:-1]).abs().sum(-1)  # (L, B)
    if not per_sample:
        change = change.mean(1, keepdim=True)  # (L, 1)
    meets = change < threshold
    met = meets.any(0)
    first = meets.to(torch.uint8).argmax(0)  # argmax returns the first of equal maxima
    taken = torch.where(met, first, length - 1) + 1  # index into the history
    index = taken.expand(batch).view(1, batch, 1)
    f = f_history.gather(0, index.expand(1, batch, f_history.shape[2])).squeeze(0)
    g = g_history.gather(0, index.expand(1, batch, g_history.shape[2])).squeeze(0)
    fresh = ~state.stopped
    keep = fresh.expand(batch).unsqueeze(-1)
    return StoppingState(
        f=torch.where(keep, f, state.f),
        g=torch.where(keep, g, state.g),
        iterations=torch.where(fresh, start + taken, state.iterations),
        stopped=state.stopped | met,
    )


def log_sinkhorn(
    cost: torch.Tensor,
    eps: float = 0.1,
    max_iter: int = 100,
    threshold: float = 0.1,
    per_sample: bool = False,
    check_every: int = 10,
) -> SinkhornResult:
    """Entropic OT plans for a batch of costs (B, n, m) with uniform marginals; see the module docstring."""
    batch, rows, cols = cost.shape
    log_row_weight, log_col_weight = -math.log(rows), -math.log(cols)
    scaled = -cost / eps
    # the potentials divided by eps (f = u / eps, g = v / eps): two fewer element-wise ops per iteration
    f = cost.new_zeros(batch, rows)
    g = cost.new_zeros(batch, cols)
    groups = batch if per_sample else 1
    stopped = torch.zeros(groups, dtype=torch.bool, device=cost.device)
    iterations = torch.zeros(groups, dtype=torch.long, device=cost.device)
    kept_f, kept_g = f, g  # each sample's potentials at its stopping iteration (so far: the latest)
    block = check_every if check_every > 0 else max_iter
    for start in range(0, max_iter, block):
        length = min(block, max_iter - start)
        f_history, g_history = [f], [g]
        for _ in range(length):
            f = log_row_weight - finite_logsumexp(scaled + g.unsqueeze(-2), dim=-1)
            g = log_col_weight - finite_logsumexp(scaled + f.unsqueeze(-1), dim=-2)
            f_history.append(f)
            g_history.append(g)
        kept_f, kept_g, iterations, stopped = stop_in_block(
            torch.stack(f_history),
            torch.stack(g_history),
            threshold / eps,
            per_sample,
            start,
            StoppingState(kept_f, kept_g, iterations, stopped),
        )
        if check_every > 0 and start + length < max_iter and bool(stopped.all()):
            break
    plan = torch.exp(scaled + kept_f.unsqueeze(-1) + kept_g.unsqueeze(-2))
    return SinkhornResult(plan=plan, iterations=iterations.expand(batch), converged=stopped.expand(batch))
