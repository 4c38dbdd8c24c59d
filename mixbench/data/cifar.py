"""CIFAR-10 and CIFAR-100, read through ``torchvision.datasets.CIFAR10`` / ``CIFAR100``.

On-disk layout (the extracted "python version" archives from https://www.cs.toronto.edu/~kriz/cifar.html)::

    <root>/cifar-10-batches-py/     data_batch_1 ... data_batch_5, test_batch, batches.meta
    <root>/cifar-100-python/        train, test, meta

Each batch file is a pickled dict with ``data`` (N x 3072 uint8, channel-major rows: 1024 red, 1024 green,
1024 blue values of a row-major 32 x 32 image) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
torchvision verifies the md5 of every file when the dataset is opened, so a truncated or foreign file is
reported as corrupted.

The whole split is returned as an :class:`~mixbench.data.base.ArraySplit` (uint8 N x 3 x 32 x 32).
Split ``"train"`` is the training set; ``"test"`` and ``"val"`` both mean the official test set.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import download_and_extract_archive

from .base import ArraySplit, DatasetMissingError

SPLITS = ("train", "val", "test")


def _dataset_class(num_classes: int) -> type[CIFAR10]:
    if num_classes == 10:
        return CIFAR10
    if num_classes == 100:
        return CIFAR100
    raise ValueError(f"CIFAR num_classes must be 10 or 100, got {num_classes}")


def _name(num_classes: int) -> str:
    return f"CIFAR-{num_classes}"


def _fix_hint(cls: type[CIFAR10]) -> str:
    return (
        f"fix: set data.download=true on a machine with internet, or extract {cls.filename} "
        f"(the python version) so that this folder exists"
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no message"
    return f"{type(error).__name__}: {text}"


def _download(root: Path, num_classes: int) -> None:
    cls = _dataset_class(num_classes)
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as error:  # no network, proxy refusal, bad archive, read-only disk, ...
        raise DatasetMissingError(
            f"{_name(num_classes)} download from {cls.url} into {root} failed ({_one_line(error)}); "
            f"fix: retry on a machine with internet, or extract {cls.filename} (the python version) "
            f"into {root} and set data.download=false"
        ) from error


def check(root: str | Path, num_classes: int = 10, download: bool = False) -> Path:
    """Return the extracted dataset folder; download it first when asked and it is missing.

    Raises :class:`DatasetMissingError` (one line) when the folder is missing or the download failed.
    """
    cls = _dataset_class(num_classes)
    root = Path(root).expanduser().absolute()
    folder = root / cls.base_folder
    if download and not folder.is_dir():
        _download(root, num_classes)
    if not folder.is_dir():
        raise DatasetMissingError(
            f"{_name(num_classes)} not found: missing folder {folder}; {_fix_hint(cls)}"
        )
    return folder


def load(root: str | Path, split: str, num_classes: int = 10, download: bool = False) -> ArraySplit:
    """The whole ``split`` as uint8 images N x 3 x 32 x 32 and int64 labels."""
    if split not in SPLITS:
        raise ValueError(f"CIFAR split must be one of {SPLITS}, got {split!r}")
    folder = check(root, num_classes, download)
    cls = _dataset_class(num_classes)
    try:
        dataset = cls(str(folder.parent), train=split == "train", download=False)
    except (
        RuntimeError
    ) as error:  # torchvision: "Dataset not found or corrupted" (md5 mismatch / missing file)
        raise DatasetMissingError(
            f"{_name(num_classes)} files in {folder} are incomplete or corrupted (md5 check failed); "
            f"fix: delete the folder and set data.download=true, or extract a fresh {cls.filename} there"
        ) from error
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    return ArraySplit(images, labels)
