"""The images an evaluation reads: a run's test split at its training resolution, as pixels in [0, 1].

Every suite of :mod:`mixbench.evaluation.suites` sees the same thing: the test split of the run's dataset
(``data.root`` of the run, or the one given to ``tools/evaluate.py``), in its fixed order, resized as the
trainer's evaluation resizes it (:func:`mixbench.data.transforms.eval_transform` of the run's augmentation
policy; the embedded and in-memory sets bicubically, as :class:`~mixbench.data.loaders.DeviceTensorLoader`),
and **not normalised**: the attacks measure ``eps`` in pixels, so the normalisation lives inside the model
(:class:`~mixbench.evaluation.attacks.NormalizedModel`) for every suite alike.

``max_images`` keeps the first ``n`` images of that order (a quick look; the record says how many were read).

Localisation (``whole_image=True``) resizes the *whole* image to ``S x S`` instead of the policy's resize and
centre crop, so that no part of an object's box is cut away, and gives each image its ground-truth boxes in
the resized pixels (:func:`boxes_of`): CUB-200-2011's ``bounding_boxes.txt`` (one box per image), or for the
embedded digits the box of each digit's ink (the pixels above 0 of the 8 x 8 original), the only dataset
without annotation files that still has an exact object extent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from mixbench.config import ConfigError
from mixbench.data import ArraySplit, check_dataset, load_split
from mixbench.data.loaders import TransformedDataset
from mixbench.data.transforms import eval_transform
from mixbench.evaluation.localization import cub_box_to_resized

DIGITS_NATIVE_SIZE = 8
BOX_DATASETS = ("cub200", "digits")


@dataclass
class EvaluationImages:
    """The test images of a run: ``batches()`` yields ``(images in [0, 1] float32, labels)`` on a device."""

    dataset: str
    image_size: int
    split: ArraySplit | Dataset
    count: int
    whole_image: bool
    num_workers: int = 4

    def describe(self) -> dict[str, Any]:
        """What was read, for the evaluation record."""
        return {
            "dataset": self.dataset,
            "split": "test",
            "images": self.count,
            "image_size": self.image_size,
            "resize": "whole image" if self.whole_image else "as the trainer evaluates",
        }

    def uint8_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(uint8 (B, 3, S, S), labels)`` on the CPU, in the split's order."""
        if isinstance(self.split, ArraySplit):
            for start in range(0, self.count, batch_size):
                images = self.split.images[start : min(start + batch_size, self.count)]
                yield _resized(images, self.image_size), self.split.labels[start : start + len(images)]
            return
        loader = DataLoader(self.split, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        for images, labels in loader:
            yield images, labels.long()

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(float32 images in [0, 1], labels)`` on ``device``."""
        for images, labels in self.uint8_batches(batch_size):
            yield images.to(device).float().div_(255.0), labels.to(device)

    def batch_count(self, batch_size: int) -> int:
        return -(-self.count // batch_size)


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images at ``size`` (bicubic, as the trainer's resident test loader resizes them)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def whole_image_transform(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize((size, size), interpolation=InterpolationMode.BILINEAR, antialias=True),
        ]
    )


def evaluation_images(
    data_cfg: Any,
    augment: str,
    image_size: int,
    max_images: int | None = None,
    whole_image: bool = False,
    num_workers: int = 4,
) -> EvaluationImages:
    """The run's test split (see the module docstring); a missing dataset raises its one-line
    :class:`~mixbench.data.DatasetMissingError`."""
    check_dataset(data_cfg)
    split = load_split(data_cfg, "test")
    total = len(split)
    count = total if max_images is None else min(int(max_images), total)
    if count < 1:
        raise ConfigError(f"max_images={max_images} reads no image; pass a positive number or null (all)")
    if not isinstance(split, ArraySplit):
        transform = whole_image_transform(image_size) if whole_image else eval_transform(augment, image_size)
        dataset: Dataset = TransformedDataset(split, transform)
        if count < total:
            dataset = Subset(dataset, range(count))
        split = dataset
    return EvaluationImages(str(data_cfg.name), image_size, split, count, whole_image, num_workers)


def boxes_of(data_cfg: Any, image_size: int, count: int) -> list[np.ndarray]:
    """Ground-truth boxes of the first ``count`` test images, inclusive ``(x0, y0, x1, y1)`` in the pixels of
    the whole image resized to ``image_size`` (one ``(n, 4)`` array per image)."""
    name = str(data_cfg.name)
    if name == "digits":
        return [box[None] for box in digit_ink_boxes(image_size)[:count]]
    if name == "cub200":
        split = load_split(data_cfg, "test")
        boxes = []
        for index in range(count):
            with Image.open(split.paths[index]) as image:  # reads the header only
                size = image.size
            boxes.append(cub_box_to_resized(split.bounding_box(index), size, image_size)[None])
        return boxes
    raise ConfigError(
        f"data {name} has no bounding boxes; WSOL runs on {' or '.join(BOX_DATASETS)} "
        "(CUB-200-2011's bounding_boxes.txt; the digits' ink)"
    )


def digit_ink_boxes(image_size: int) -> np.ndarray:
    """``(N, 4)``: the box of each digits test image's ink (grey level > 0 in the 8 x 8 original), scaled to
    ``image_size`` with the rule of :func:`~mixbench.evaluation.localization.cub_box_to_resized`."""
    from mixbench.data.digits import read_digits, read_split

    images, _ = read_digits()
    chosen = images[np.asarray(read_split()["test"])]
    boxes = np.empty((len(chosen), 4), dtype=np.float64)
    for index, image in enumerate(chosen):
        rows = np.flatnonzero(image.max(axis=1) > 0)
        cols = np.flatnonzero(image.max(axis=0) > 0)
        boxes[index] = (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    native = (DIGITS_NATIVE_SIZE, DIGITS_NATIVE_SIZE)
    return cub_box_to_resized(boxes, native, image_size)
