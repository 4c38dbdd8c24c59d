"""Top-1 / top-5 accuracy and CE loss of a network on a loader (or on its shards over several processes)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.engine.distributed import all_reduce_sum
from mixbench.engine.runtime import Runtime
from mixbench.metrics import topk_correct


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    across_processes: bool = False,
) -> dict[str, float]:
    """``{"top1": %, "top5": %, "loss": mean CE, "images": n}`` over the whole loader, in eval mode.

    ``across_processes``: the loader holds this process's shard of the split (disjoint shards without
    repeats, see :func:`mixbench.data.loaders.evaluation_shard`); the counts and loss sums are added over the
    processes, so every process returns the scores over exactly the whole split, and ``images`` says how
    many images that was.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct1 = correct5 = loss_sum = torch.zeros((), device=device)
    count = 0
    for x, y in loader:
        with runtime.autocast():
            logits = model(x)
        top1, top5 = topk_correct(logits.float(), y)
        correct1 = correct1 + top1
        correct5 = correct5 + top5
        loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum")
        count += y.shape[0]
    model.train(was_training)
    totals = torch.stack(
        [correct1.double(), correct5.double(), loss_sum.double(), torch.tensor(float(count), device=device)]
    )
    if across_processes:
        all_reduce_sum(totals)
    correct1_total, correct5_total, loss_total, images = totals.tolist()
    if images == 0:
        raise ValueError("the evaluation loader is empty")
    return {
        "top1": 100.0 * correct1_total / images,
        "top5": 100.0 * correct5_total / images,
        "loss": loss_total / images,
        "images": int(images),
    }
