"""Input-gradient saliency, shared by Puzzle Mix (Kim et al., ICML 2020) and Co-Mixup (Kim et al., ICLR 2021).

    S(x)[h, w] = || d CE(f(x), y) / d x[:, h, w] ||_2        (L2 norm over the colour channels)
    pooled to a k x k grid by averaging, then normalised to sum 1 per image.

Both official codes back-propagate the clean batch's mean cross-entropy into the input with
``loss.backward()`` and read ``x.grad`` (so the parameters' ``.grad`` fill up too and must be zeroed), and
take ``sqrt(mean_c g^2)``.  Here:

* ``torch.autograd.grad`` is asked for the input's gradient only: the parameters' ``.grad`` are never touched,
  so the trainer's own backward of the mixed loss is the only one that reaches the optimizer;
* the loss is the *sum* of the per-sample cross-entropies and the norm is the L2 norm over channels: both
  differ from the official ``mean`` and ``sqrt(mean_c)`` by a constant factor, which the per-image
  normalisation removes (the sum keeps the raw gradients B times larger, away from fp16's underflow);
* the forward runs in the mode the model is in (train mode during a training step: BatchNorm uses the clean
  batch's statistics and updates its running averages on it, as the official code does when ``clean_lam > 0``;
  with ``clean_lam = 0`` the official code switches to eval mode for this forward).

With ``keep_graph`` the forward's graph is kept, so that the logits can serve in a clean-batch loss (the
``clean_lam`` term of both methods) without a third forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GradientSaliency:
    """Saliency maps of a clean batch and the logits of the forward that produced them."""

    maps: torch.Tensor  # (B, H, W) float32, detached: L2 norm over channels of d(sum CE)/dx
    logits: torch.Tensor  # (B, classes); attached to the graph only when computed with keep_graph=True


def input_gradient_saliency(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, keep_graph: bool = False
) -> GradientSaliency:
    """Saliency of ``x`` for labels ``y``: one forward and one backward into the input only."""
    with torch.enable_grad():
        x_leaf = x.detach().requires_grad_(True)
        logits = model(x_leaf)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_leaf, retain_graph=keep_graph)
    maps = grad.detach().float().pow(2).sum(dim=1).sqrt()
    return GradientSaliency(maps=maps, logits=logits if keep_graph else logits.detach())


def check_grid(height: int, width: int, grid: int) -> None:
    """Raise a ``ValueError`` naming the sizes when a ``grid`` x ``grid`` partition does not fit the image."""
    if grid < 1 or height % grid or width % grid:
        raise ValueError(f"a {grid}x{grid} grid needs image sides divisible by {grid}; got {height}x{width}")


def pool_saliency(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid, grid) cell averages of ``maps`` (B, H, W), normalised to sum 1 per image (official rule).

    An image whose saliency is zero everywhere gets the uniform map (the official code would divide by zero).
    """
    height, width = maps.shape[-2:]
    check_grid(height, width, grid)
    pooled = F.avg_pool2d(maps.unsqueeze(1), kernel_size=(height // grid, width // grid)).squeeze(1)
    total = pooled.sum(dim=(1, 2), keepdim=True)
    uniform = torch.full_like(pooled, 1.0 / grid**2)
    return torch.where(total > 0, pooled / total.clamp_min(torch.finfo(pooled.dtype).tiny), uniform)
