"""What the saliency-guided methods share: Puzzle Mix (Kim et al., ICML 2020) and Co-Mixup (Kim et al.,
ICLR 2021).

Both build their step the same way::

    S = input-gradient saliency of the clean batch   (one forward, one backward into x: gradient_saliency.py)
    loss = mixed loss of the mix that S guides        (each method's: SaliencyGuidedMixMethod.mixed_loss)
         + clean_lam * CE(f(x), y)                    (when clean_lam > 0, on the saliency forward's logits)

Passes per step, in units of one forward of the network on the batch (a full backward is about two, a
backward into the input alone about one):

* ``clean_lam = 0``: saliency forward (1) + backward into the input only (~1, no weight gradients) + the
  mixed batch's forward and backward (3): about 5, i.e. ~1.7x a plain step's 3 (the official code: 6, its
  saliency backward also computes the weight gradients it then discards);
* ``clean_lam > 0`` (as in the official code): saliency forward (1) + one full backward that gives the input's
  gradient and the clean loss's weight gradients together (~2) + mixed forward and backward (3): about 6,
  i.e. ~2x.  The weight gradients reach the optimizer through the trainer's own backward
  (:func:`~mixbench.methods.gradient_saliency.add_parameter_gradients`); the clean term needs neither a third
  forward nor a second backward through the saliency forward.  With label smoothing the clean loss's
  gradient is no multiple of the saliency's, so the saliency forward keeps its graph and the clean loss is
  back-propagated through it by the trainer's backward (about 7 units).

Both mix on a k x k grid of cells: saliency is averaged per cell
(:func:`~mixbench.methods.gradient_saliency.pool_saliency`) and per-cell values (masks, shares) are
enlarged back to the pixels by :func:`upsample_cells`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import (
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_INPUT,
    STEP,
    Logs,
    MixMethod,
)
from mixbench.methods.gradient_saliency import add_parameter_gradients, input_gradient_saliency


def upsample_cells(grid_values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) nearest-neighbour enlargement of a (B, k, k) grid."""
    rows, columns = grid_values.shape[-2:]
    return (
        grid_values.repeat_interleave(height // rows, 1).repeat_interleave(width // columns, 2).unsqueeze(1)
    )


@contextlib.contextmanager
def serial_on_cpu(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the enclosed code when ``device`` is the CPU; the previous count is restored.

    For the methods' solvers: sequential loops of thousands of operations on tensors of a few thousand
    elements.  Some of those operations open a parallel region whatever their size (``bmm`` splits its
    batch across threads, reductions with indices their rows), and waking the other threads costs more than
    the work; on a busy machine a region waits for a thread that another process holds.  One thread gives
    the same results (each element is computed by the same kernel either way).  Elsewhere it does nothing.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SaliencyGuidedMixMethod(MixMethod):
    """Base class: the saliency forward, the subclass's mixed loss, the optional ``clean_lam`` term."""

    def __init__(self, clean_lam: float) -> None:
        super().__init__()
        self.clean_lam = clean_lam

    def mixed_loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, saliency_maps: torch.Tensor
    ) -> tuple[torch.Tensor, Logs]:
        """The loss on the mix guided by ``saliency_maps`` (B, H, W), and its logs."""
        raise TypeError(f"{type(self).__name__} must define mixed_loss()")

    def passes(self) -> dict[str, float]:
        """The saliency's forward and backward (to the input only, or with the clean term's weight gradients)
        and the mixed batch's step; with label smoothing, the trainer's backward of the clean loss through the
        saliency forward adds a backward (a forward + backward less a forward)."""
        if self.clean_lam <= 0:
            return {STEP: 1.0, FORWARD_BACKWARD_INPUT: 1.0}
        if self.label_smoothing > 0:
            return {STEP: 1.0, FORWARD_BACKWARD_INPUT: 1.0, FORWARD_BACKWARD: 1.0, FORWARD: -1.0}
        return {STEP: 1.0, FORWARD_BACKWARD: 1.0}

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        if self.clean_lam <= 0:
            return self.mixed_loss(model, x, y, input_gradient_saliency(model, x, y).maps)
        if self.label_smoothing > 0:  # the clean loss's gradient is no multiple of the saliency's
            saliency = input_gradient_saliency(model, x, y, keep_graph=True)
            loss, logs = self.mixed_loss(model, x, y, saliency.maps)
            clean = F.cross_entropy(saliency.logits, y, label_smoothing=self.label_smoothing)
            logs["clean_loss"] = clean.detach()
            return loss + self.clean_lam * clean, logs
        parameters = [p for p in model.parameters() if p.requires_grad]
        saliency = input_gradient_saliency(model, x, y, parameters=parameters)
        loss, logs = self.mixed_loss(model, x, y, saliency.maps)
        clean = F.cross_entropy(saliency.logits, y)  # detached: its gradient is already in parameter_grads
        logs["clean_loss"] = clean
        # d(clean_lam * mean CE)/dθ = clean_lam / B * d(sum CE)/dθ
        scale = self.clean_lam / x.shape[0]
        grads = [None if g is None else g.mul_(scale) for g in saliency.parameter_grads]
        return add_parameter_gradients(loss + self.clean_lam * clean, parameters, grads), logs
