"""Accuracy and the benchmark's headline metric."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensors are only annotated here: readers of run directories need no torch
    import torch


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (capped at the class count)."""
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, max_k)].any(dim=1).sum() for k in ks]


def median_last_k(values: Sequence[float], k: int = 10) -> float | None:
    """Median of exactly the last ``k`` values; ``None`` while fewer than ``k`` exist.

    The benchmark's primary metric is the median top-1 over exactly the last 10 evaluated epochs (OpenMixup's
    script takes 11 values; we do not).
    """
    if k < 1:
        raise ValueError("the metric window must be at least 1 epoch")
    if len(values) < k:
        return None
    return float(statistics.median(values[-k:]))
