"""Batches on the device, from memory or from disk.

* :class:`DeviceTensorLoader` keeps a whole small split (CIFAR, Tiny-ImageNet, digits) on the device as
  uint8 and does the ``crop_flip`` augmentation there, per batch: random crop after 4 px reflect padding
  and horizontal flip, drawn per sample.  Nothing crosses the PCIe bus during training, so the data path
  never limits a GPU (the airbench approach).
* :class:`WorkerLoader` wraps a ``DataLoader`` with workers and pinned memory for datasets read from disk
  (or for augmentations that only exist on PIL images); batches are copied non-blocking.

Both yield ``(x, y)`` with ``x`` float, normalised, on the device (channels_last when asked), and both
shuffle with a generator reseeded each epoch by :meth:`set_epoch`, sharded over ``world_size`` processes:

* training shards (:func:`shard_indices`) cut one shuffled order, the same on every process, into equal
  parts, padded with a few repeats so that every process takes the same number of steps (DDP needs that);
  the augmentation draws differ per process;
* evaluation shards (:func:`evaluation_shard`) hold every test image exactly once over all processes,
  without repeats (sizes differ by at most one), so that summed counts give the accuracy over the split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from mixbench.data.base import ArraySplit
from mixbench.rng import derive_seed


class Normalizer:
    """uint8 batch on the device → float, ``(x/255 - mean) / std``, optional channels_last."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool
    ):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of ``x`` (B,C,H,W) after ``pad`` px reflect padding, and random h-flip."""
    batch, channels, height, width = x.shape
    device = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        offset_y = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        offset_x = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = (offset_y[:, None] + torch.arange(height, device=device))[:, None, :, None]
        cols = (offset_x[:, None] + torch.arange(width, device=device))[:, None, None, :]
        x = padded.gather(2, rows.expand(batch, channels, height, width + 2 * pad))
        x = x.gather(3, cols.expand(batch, channels, height, width))
    if flip:
        flipped = torch.rand(batch, device=device, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The slice of a (shared) order that ``rank`` trains on: every ``world_size``-th index, equal counts.

    The order is padded with its first indices to a multiple of ``world_size``: a few images appear twice
    per epoch, which is harmless for training and keeps the step count equal on every process.
    """
    per_rank = math.ceil(len(order) / world_size)
    padded = torch.cat([order, order[: per_rank * world_size - len(order)]])
    return padded[rank::world_size]


def evaluation_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The slice of ``order`` that ``rank`` evaluates: every ``world_size``-th index, no padding.

    Over all ranks each index appears exactly once (padding would count repeated images twice in the
    accuracy); shard sizes differ by at most one, and a rank may get none when ``len(order) < world_size``.
    """
    return order[rank::world_size]


def shard_size(size: int, rank: int, world_size: int, pad: bool) -> int:
    """Length of :func:`shard_indices` (``pad``) or :func:`evaluation_shard` of an order of ``size``."""
    return math.ceil(size / world_size) if pad else len(range(rank, size, world_size))


class DeviceTensorLoader:
    """A whole split on the device; ``crop_flip`` augmentation and normalisation per batch on the device."""

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        train: bool,
        pad: int = 4,
        flip: bool = True,
        resize_to: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.device = device
        self.train = train
        self.pad, self.flip = pad, flip
        self.resize_to = resize_to
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(0)
        self.epoch_seed = 0

    def set_epoch(self, seed: int) -> None:
        """Reseed shuffling (the same order on every rank, so shards are disjoint) and augmentation (one
        stream per rank when there are several; ``seed`` itself for a single process)."""
        self.epoch_seed = seed
        self.generator.manual_seed(seed if self.world_size == 1 else derive_seed(seed, self.rank))

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if self.train:
            cpu_gen = torch.Generator().manual_seed(self.epoch_seed)
            order = torch.randperm(n, generator=cpu_gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            shard = shard_indices if self.train else evaluation_shard
            order = shard(order, self.rank, self.world_size)
        return order.to(self.device)

    def __len__(self) -> int:
        n = shard_size(len(self.labels), self.rank, self.world_size, pad=self.train)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index].float()
            if self.train:
                x = random_crop_flip(x, self.pad, self.flip, self.generator)
            if self.resize_to is not None and x.shape[-1] != self.resize_to:
                x = F.interpolate(x, size=self.resize_to, mode="bicubic", align_corners=False).clamp(0, 255)
            yield self.normalizer(x), self.labels[index]


class ArrayImageDataset(Dataset):
    """An :class:`ArraySplit` served as PIL images, for CPU-side augmentation policies."""

    def __init__(self, split: ArraySplit, transform) -> None:
        self.split = split
        self.transform = transform
        self.targets = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.split.images[index].permute(1, 2, 0).numpy())
        return self.transform(image), self.targets[index]


class TransformedDataset(Dataset):
    """A dataset of ``(PIL image, label)`` with a transform applied to the image."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.transform(image), int(label)


class EpochShardSampler(Sampler[int]):
    """Shuffles with a per-epoch seed and keeps this rank's shard (a DistributedSampler you reseed).

    ``pad``: training shards of equal length (:func:`shard_indices`); otherwise evaluation shards that hold
    each index exactly once over the ranks (:func:`evaluation_shard`).
    """

    def __init__(
        self, size: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        self.size, self.shuffle = size, shuffle
        self.rank, self.world_size = rank, world_size
        self.pad = pad
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(self.size)
        if self.world_size > 1:
            shard = shard_indices if self.pad else evaluation_shard
            order = shard(order, self.rank, self.world_size)
        return iter(order.tolist())

    def __len__(self) -> int:
        return shard_size(self.size, self.rank, self.world_size, self.pad)


class WorkerLoader:
    """DataLoader workers + pinned memory; uint8 batches normalised on the device after a
    non-blocking copy.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        train: bool,
        num_workers: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.sampler = EpochShardSampler(
            len(dataset), shuffle=train, rank=rank, world_size=world_size, pad=train
        )
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            drop_last=train,
            worker_init_fn=_seed_worker,
        )
        self.normalizer = normalizer
        self.device = device

    def set_epoch(self, seed: int) -> None:
        self.sampler.set_epoch(seed)
        # Worker RNGs (random crops) derive from the DataLoader's base seed, drawn from torch's global
        # generator when the epoch's iterator starts (workers are not persistent, so this happens every
        # epoch); the trainer seeds that generator per epoch (and per rank), so a resumed epoch sees the
        # same crops and the ranks see different ones.

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            yield self.normalizer(images), labels


def _seed_worker(worker_id: int) -> None:
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
