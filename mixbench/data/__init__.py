"""Datasets by name, and the loaders that feed the trainer.

Adding a dataset: a module with ``load(root, split, **options)`` and ``check(root, **options)`` (see
:mod:`mixbench.data.base`), an entry in ``DATASETS`` and a config in ``configs/data/``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from mixbench.config import ConfigError
from mixbench.data.base import ArraySplit, DatasetMissingError
from mixbench.data.loaders import (
    ArrayImageDataset,
    DeviceTensorLoader,
    Normalizer,
    TransformedDataset,
    WorkerLoader,
)
from mixbench.data.transforms import POLICIES, eval_transform, train_transform

# name -> (module under mixbench.data, the config keys passed to load()/check() as options)
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "digits": ("digits", ("image_size",)),
    "cifar10": ("cifar", ("num_classes", "download")),
    "cifar100": ("cifar", ("num_classes", "download")),
    "tiny_imagenet": ("tiny_imagenet", ()),
    "imagenet": ("imagenet", ()),
    "cub200": ("cub200", ()),
    "aircraft": ("aircraft", ()),
    "cars": ("cars", ()),
}


def check_registered_dataset(name: str) -> None:
    """Refuse (:class:`ConfigError`, one line) a dataset name without an entry in ``DATASETS``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data '{name}'; valid: {', '.join(sorted(DATASETS))}")


def check_augment(policy: str) -> None:
    """Refuse (:class:`ConfigError`, one line) an augmentation policy that :mod:`~mixbench.data.transforms`
    does not define."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown schedule.augment '{policy}'; valid: {', '.join(POLICIES)}")


def _module_and_options(data_cfg: Any):
    check_registered_dataset(data_cfg.name)
    module_name, keys = DATASETS[data_cfg.name]
    module = importlib.import_module(f"mixbench.data.{module_name}")
    return module, {key: data_cfg[key] for key in keys}


def check_dataset(data_cfg: Any) -> None:
    """Raise :class:`DatasetMissingError` (one line: where we looked, how to fix) if the files are missing."""
    module, options = _module_and_options(data_cfg)
    module.check(data_cfg.root, **options)


def load_split(data_cfg: Any, split: str) -> ArraySplit | Dataset:
    module, options = _module_and_options(data_cfg)
    return module.load(data_cfg.root, split, **options)


@dataclass
class DataBundle:
    train: DeviceTensorLoader | WorkerLoader
    test: DeviceTensorLoader | WorkerLoader
    num_classes: int
    num_train: int


def build_loaders(
    data_cfg: Any,
    augment: str,
    batch_size: int,
    eval_batch_size: int,
    input_size: int,
    device: torch.device,
    channels_last: bool = False,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
) -> DataBundle:
    """Train and test loaders: device-resident when the data is small and the policy is ``crop_flip``.

    ``rank`` / ``world_size``: this process's shards (see :mod:`mixbench.data.loaders`); the batch sizes are
    per process (the trainer passes the global batch divided by ``world_size``).
    """
    check_augment(augment)
    normalizer = Normalizer(data_cfg.mean, data_cfg.std, device, channels_last)
    train_split, test_split = load_split(data_cfg, "train"), load_split(data_cfg, "test")
    shard = {"rank": rank, "world_size": world_size}
    resident = bool(data_cfg.get("resident", False))
    if (
        isinstance(train_split, ArraySplit)
        and resident
        and augment == "crop_flip"
        and input_size == train_split.images.shape[-1]
    ):
        train = DeviceTensorLoader(train_split, batch_size, normalizer, device, train=True, **shard)
    else:
        dataset = _as_dataset(train_split, train_transform(augment, input_size))
        train = WorkerLoader(dataset, batch_size, normalizer, device, True, num_workers, **shard)
    if isinstance(test_split, ArraySplit) and resident:
        test = DeviceTensorLoader(
            test_split, eval_batch_size, normalizer, device, train=False, resize_to=input_size, **shard
        )
    else:
        dataset = _as_dataset(test_split, eval_transform(augment, input_size))
        test = WorkerLoader(dataset, eval_batch_size, normalizer, device, False, num_workers, **shard)
    return DataBundle(
        train=train, test=test, num_classes=int(data_cfg.num_classes), num_train=len(train_split)
    )


def _as_dataset(split: ArraySplit | Dataset, transform) -> Dataset:
    if isinstance(split, ArraySplit):
        return ArrayImageDataset(split, transform)
    return TransformedDataset(split, transform)


__all__ = [
    "DATASETS",
    "check_augment",
    "check_registered_dataset",
    "DataBundle",
    "DatasetMissingError",
    "ArraySplit",
    "build_loaders",
    "check_dataset",
    "load_split",
]
