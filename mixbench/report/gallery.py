"""Figures of mixed batches (``tools/show_mix.py``): one column per sample, one row per stage of the mix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mixbench.data.base import ArraySplit
from mixbench.methods.base import MixPreview


def pick_samples(
    split: ArraySplit, data_cfg, count: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` test images, one per class first (lowest index), normalised like training batches."""
    if not isinstance(split, ArraySplit):
        raise ValueError("show_mix draws from in-memory datasets (digits, CIFAR, Tiny-ImageNet)")
    chosen: list[int] = []
    for label in range(int(split.labels.max()) + 1):
        hits = (split.labels == label).nonzero().flatten()
        if len(hits):
            chosen.append(int(hits[0]))
    chosen += [i for i in range(len(split)) if i not in chosen]
    index = torch.tensor(chosen[:count])
    mean = torch.tensor(data_cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(data_cfg.std).view(1, 3, 1, 1)
    x = (split.images[index].float() / 255.0 - mean) / std
    return x.to(device), split.labels[index].to(device)


def _displayable(row: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1]: images un-normalised, single-channel maps min-max scaled per sample."""
    row = row.detach().float().cpu()
    if row.shape[1] == 3:
        images = row * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        return images.clamp(0, 1).permute(0, 2, 3, 1)
    maps = row[:, :1]
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    scaled = torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), maps.clamp(0, 1))
    return scaled.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)


def draw_preview(
    preview: MixPreview, mean: Sequence[float], std: Sequence[float], title: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {name: _displayable(tensor, mean, std) for name, tensor in preview.rows.items()}
    columns = next(iter(rows.values())).shape[0]
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(1.3 * columns, 1.4 * len(rows) + 0.6), squeeze=False
    )
    for row_index, (name, images) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row_index][column]
            axis.imshow(images[column].numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name, fontsize=8)
            if row_index == len(rows) - 1:
                axis.set_xlabel(f"lam {float(preview.lam[column]):.2f}", fontsize=8)
    figure.suptitle(title + (f"\n{preview.note}" if preview.note else ""), fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
