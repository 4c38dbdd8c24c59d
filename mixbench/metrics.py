"""Accuracy and the benchmark's headline metric."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

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


def summarize_history(
    history: Sequence[dict], window: int, labels: Sequence[str] = ("",)
) -> dict[str, float | int | None]:
    """Headline numbers of a run from its per-epoch records, for each evaluated network.

    ``labels`` name the evaluated networks ("" = online, "ema" = the EMA network of learned methods); the
    keys of an evaluated network are prefixed with its label, e.g. ``ema_median_last10_top1``.
    """
    summary: dict[str, float | int | None] = {}
    for label in labels:
        prefix = f"{label}_" if label else ""
        top1 = [record[f"{prefix}top1"] for record in history]
        best_index = max(range(len(top1)), key=top1.__getitem__) if top1 else None
        summary[f"{prefix}median_last{window}_top1"] = median_last_k(top1, window)
        summary[f"{prefix}best_top1"] = top1[best_index] if top1 else None
        summary[f"{prefix}best_epoch"] = history[best_index]["epoch"] if top1 else None
        summary[f"{prefix}last_top1"] = top1[-1] if top1 else None
    return summary
