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
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError


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


class CorruptImageError(ValueError):
    """An image file of a dataset cannot be decoded; the message is one line naming the file and the fix."""


def open_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` in RGB (greyscale and CMYK files converted), fully decoded now, so that a
    truncated or foreign file fails here with :class:`CorruptImageError` naming it."""
    try:
        with open(path, "rb") as stream, Image.open(stream) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CorruptImageError(
            f"image file {path} cannot be decoded ({reason}); replace it from the dataset's archive, or "
            "delete it"
        ) from None
