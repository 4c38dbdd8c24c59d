"""What the saliency-guided methods share: Puzzle Mix (Kim et al., ICML 2020) and Co-Mixup (Kim et al.,
ICLR 2021).

Both build their step the same way::

    S = input-gradient saliency of the clean batch   (one forward, one backward into x: gradient_saliency.py)
    loss = mixed loss of the mix that S guides        (each method's: SaliencyGuidedMixMethod.mixed_loss)
         + clean_lam * CE(f(x), y)                    (when clean_lam > 0, on the saliency forward's logits)

The saliency forward keeps its graph only when ``clean_lam > 0``, so the clean term costs no third forward
pass.  Both mix on a k x k grid of cells: saliency is averaged per cell
(:func:`~mixbench.methods.gradient_saliency.pool_saliency`) and per-cell values (masks, shares) are
enlarged back to the pixels by :func:`upsample_cells`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.base import Logs, MixMethod
from mixbench.methods.gradient_saliency import input_gradient_saliency


def upsample_cells(grid_values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) nearest-neighbour enlargement of a (B, k, k) grid."""
    rows, columns = grid_values.shape[-2:]
    return (
        grid_values.repeat_interleave(height // rows, 1).repeat_interleave(width // columns, 2).unsqueeze(1)
    )


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

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        saliency = input_gradient_saliency(model, x, y, keep_graph=self.clean_lam > 0)
        loss, logs = self.mixed_loss(model, x, y, saliency.maps)
        if self.clean_lam > 0:
            clean = F.cross_entropy(saliency.logits, y, label_smoothing=self.label_smoothing)
            loss = loss + self.clean_lam * clean
            logs["clean_loss"] = clean.detach()
        return loss, logs
