"""Input-gradient saliency, shared by Puzzle Mix (Kim et al., ICML 2020) and Co-Mixup (Kim et al., ICLR 2021).

    S(x)[h, w] = || d CE(f(x), y) / d x[:, h, w] ||_2        (L2 norm over the colour channels)
    pooled to a k x k grid by averaging, then normalised to sum 1 per image.

Both official codes back-propagate the clean batch's mean cross-entropy into the input with
``loss.backward()`` and read ``x.grad`` (so the parameters' ``.grad`` fill up too and must be zeroed), and
take ``sqrt(mean_c g^2)``.  Here:

* ``torch.autograd.grad`` returns the gradients instead of accumulating them: the parameters' ``.grad`` are
  never touched, so the trainer's own backward of the total loss is the only one that writes them (with a
  clean term, it carries the saliency backward's weight gradients there, see below);
* the loss is the *sum* of the per-sample cross-entropies and the norm is the L2 norm over channels: both
  differ from the official ``mean`` and ``sqrt(mean_c)`` by a constant factor, which the per-image
  normalisation removes (the sum keeps the raw gradients B times larger, away from fp16's underflow);
* the forward runs in the mode the model is in (train mode during a training step: BatchNorm uses the clean
  batch's statistics and updates its running averages on it, as the official code does when ``clean_lam > 0``;
  with ``clean_lam = 0`` the official code switches to eval mode for this forward).

Weight gradients.  A backward into the input alone computes, at every layer, the gradient of its input and
not that of its weights (``torch.autograd.grad`` prunes what the requested input does not need): about one
forward's cost, against about two for a full backward.  Without a clean term (``clean_lam = 0``) that is all
the saliency needs; the official code runs a full ``loss.backward()`` there and zeroes the weight gradients
it made.

With a clean term (``clean_lam > 0``) the official code keeps those weight gradients: its one backward of
``c * mean CE`` gives the saliency (``x.grad``) and the clean loss's weight gradients together, and the
mixed loss's backward adds to them.  ``parameters=`` does the same here: the backward of ``sum CE`` returns
``d(sum CE)/dx`` and ``d(sum CE)/dθ`` in one pass, and :func:`add_parameter_gradients` hands
``clean_lam / B * d(sum CE)/dθ`` (the gradient of ``clean_lam * mean CE``) to the trainer's backward of the
total loss, so the clean term costs no second backward through the saliency forward.  This holds because
the gradient of ``sum CE`` at the logits, ``softmax - onehot(y)``, is ``B`` times that of ``mean CE``:
with label smoothing the two differ, and the methods keep the graph instead (``keep_graph``), so that the
logits serve in the clean loss's own backward without a third forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GradientSaliency:
    """Saliency maps of a clean batch, the logits of the forward that produced them, and (when asked) the
    gradients of the summed cross-entropy with respect to the parameters."""

    maps: torch.Tensor  # (B, H, W) float32, detached: L2 norm over channels of d(sum CE)/dx
    logits: torch.Tensor  # (B, classes); attached to the graph only when computed with keep_graph=True
    parameter_grads: tuple[torch.Tensor | None, ...] = ()  # d(sum CE)/dθ of each of ``parameters``
    features: torch.Tensor | None = None  # detached hidden state at ``capture_stage``, when asked


def input_gradient_saliency(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    keep_graph: bool = False,
    parameters: Sequence[torch.Tensor] = (),
    capture_stage: int | None = None,
) -> GradientSaliency:
    """Saliency of ``x`` for labels ``y``: one forward and one backward.

    The backward computes the input's gradient and those of ``parameters`` only (none by default: no weight
    gradient is computed); a parameter the forward does not use gets ``None``.  With ``capture_stage``, the
    forward also records the staged network's hidden state at that stage (``features``, detached: a wrapper
    such as SUMix reads the clean batch's features from this forward instead of running another).
    """
    captured: list[torch.Tensor] = []

    def capture(hidden: torch.Tensor) -> torch.Tensor:
        captured.append(hidden)
        return hidden

    stage_call = {} if capture_stage is None else {"mix_stage": capture_stage, "mix_fn": capture}
    with torch.enable_grad():
        x_leaf = x.detach().requires_grad_(True)
        logits = model(x_leaf, **stage_call)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        grad, *parameter_grads = torch.autograd.grad(
            loss, [x_leaf, *parameters], retain_graph=keep_graph, allow_unused=bool(parameters)
        )
    maps = grad.detach().float().pow(2).sum(dim=1).sqrt()
    return GradientSaliency(
        maps=maps,
        logits=logits if keep_graph else logits.detach(),
        parameter_grads=tuple(parameter_grads),
        features=captured[0].detach() if captured else None,
    )


class _AddParameterGradients(torch.autograd.Function):
    """Identity on a scalar loss whose backward also gives each parameter ``grad_output * its gradient``."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, grads: tuple[torch.Tensor, ...], *parameters: torch.Tensor):
        ctx.grads = grads
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (grad_output, None, *(grad_output * grad for grad in ctx.grads))


def add_parameter_gradients(
    loss: torch.Tensor, parameters: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
) -> torch.Tensor:
    """``loss`` (same value) whose backward also adds ``grads`` (already computed) to the ``parameters``.

    For a loss term whose gradient is known before the trainer's backward: the trainer's ``loss.backward()``
    (scaled, accumulated, all-reduced as usual) carries ``grad_output * grads[i]`` into parameter ``i``
    through autograd, as if the term had been differentiated there.  ``None`` entries are skipped.
    """
    pairs = [(p, g) for p, g in zip(parameters, grads, strict=True) if g is not None]
    if not pairs:
        return loss
    return _AddParameterGradients.apply(loss, tuple(g for _, g in pairs), *(p for p, _ in pairs))


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
