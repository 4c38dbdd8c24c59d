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
reads that number on the host every iteration (a device sync per iteration).  Here the rule is evaluated
on the device: a sample (or the batch) that has met it is frozen by masking, so later iterations leave its
potentials unchanged -- the result is the one the official loop returns when it breaks.  The host looks at
the "all frozen" flag only every ``check_every`` iterations, to skip the remaining no-op iterations; that
is at most ``max_iter / check_every`` syncs, none when every sample needs all ``max_iter`` iterations
and ``check_every`` is 0.

The log-sum-exps are :func:`finite_logsumexp`: ``torch.logsumexp``'s operations less its guard against
infinite maxima, 6 kernels a call instead of 9.  The loop is launch-bound on a GPU (26 launches an iteration
instead of 32, 100 iterations a step), and its values are bitwise those of ``torch.logsumexp`` on finite
inputs, which these always are (finite costs, finite potentials): ``tests/test_methods_alignmixup.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    scaled_threshold = threshold / eps
    groups = batch if per_sample else 1
    done = torch.zeros(groups, dtype=torch.bool, device=cost.device)
    iterations = torch.zeros(groups, dtype=torch.long, device=cost.device)
    for iteration in range(max_iter):
        f_next = log_row_weight - finite_logsumexp(scaled + g.unsqueeze(-2), dim=-1)
        g_next = log_col_weight - finite_logsumexp(scaled + f_next.unsqueeze(-1), dim=-2)
        change = (f_next - f).abs().sum(-1)
        if not per_sample:
            change = change.mean(0, keepdim=True)
        active = ~done
        f = torch.where(active.unsqueeze(-1), f_next, f)
        g = torch.where(active.unsqueeze(-1), g_next, g)
        iterations += active
        done |= change < scaled_threshold
        if check_every and (iteration + 1) % check_every == 0 and bool(done.all()):
            break
    plan = torch.exp(scaled + f.unsqueeze(-1) + g.unsqueeze(-2))
    return SinkhornResult(plan=plan, iterations=iterations.expand(batch), converged=done.expand(batch))
