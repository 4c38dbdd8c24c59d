"""Top-1 / top-5 accuracy and CE loss of a network on a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.metrics import topk_correct


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast_dtype: torch.dtype | None
) -> dict[str, float]:
    """``{"top1": %, "top5": %, "loss": mean CE}`` over the whole loader, in eval mode."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = loss_sum = None
    count = 0
    for x, y in loader:
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(x)
        top1, top5 = topk_correct(logits.float(), y)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        correct1 = top1 if correct1 is None else correct1 + top1
        correct5 = top5 if correct5 is None else correct5 + top5
        loss_sum = loss if loss_sum is None else loss_sum + loss
        count += y.shape[0]
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader is empty")
    return {
        "top1": 100.0 * float(correct1) / count,
        "top5": 100.0 * float(correct5) / count,
        "loss": float(loss_sum) / count,
    }
