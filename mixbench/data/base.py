"""What every dataset module provides.

A dataset module exposes one function ``load(root, split, **options)`` returning either

* an :class:`ArraySplit` (the whole split as a uint8 tensor ``N x 3 x H x W`` plus int64 labels), for
  small datasets that are kept in (device) memory and augmented per batch on the device, or
* a ``torch.utils.data.Dataset`` whose items are ``(PIL.Image in RGB, int label)``, for large datasets
  read from disk by DataLoader workers (transforms are attached by :mod:`mixbench.data.loaders`);

and ``check(root, **options)`` raising :class:`DatasetMissingError` when the files are not there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not where the config says; the message says where we looked and what to do."""


@dataclass
class ArraySplit:
    """A whole split in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 N x 3 x H x W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]
