"""ImageNet-1k (ILSVRC-2012) as class folders, read with ``torchvision.datasets.ImageFolder``.

On-disk layout under ``<root>`` (the config passes ``data/imagenet``; ``<root>/imagenet`` is also accepted)::

    train/<wnid>/*.JPEG      1000 class folders, as extracted from ILSVRC2012_img_train.tar (+ per-class tars)
    val/<wnid>/*.JPEG        the 50,000 validation images moved into the same 1000 class folders

The validation archive ships flat (``val/ILSVRC2012_val_*.JPEG``); move the images into class folders
with the usual ``valprep.sh`` script (one ``mkdir``/``mv`` line per image) before use.

Labels are the indices of the sorted wnid folder names (``ImageFolder``'s rule), identical for both splits.
Split ``"train"`` is the training set; ``"val"`` and ``"test"`` both mean the validation set.
Items are ``(PIL RGB image, int label)``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torchvision.datasets import ImageFolder

from .base import DatasetMissingError, open_rgb

SPLITS = ("train", "val", "test")


def _hint(folder: Path) -> str:
    return (
        f"fix: extract ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar into {folder} as "
        f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (move the val images into class folders with the "
        f"usual valprep.sh script)"
    )


def rgb_loader(path: str) -> Image.Image:
    """Open an image file and return it in RGB (ImageNet holds a few CMYK and greyscale JPEGs); a file that
    cannot be decoded is a one-line :class:`~mixbench.data.base.CorruptImageError` naming it."""
    return open_rgb(path)


def _folder(root: str | Path) -> Path:
    root = Path(root).expanduser().absolute()
    nested = root / "imagenet"
    return nested if not (root / "train").is_dir() and nested.is_dir() else root


def _split_dir(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"ImageNet split must be one of {SPLITS}, got {split!r}")
    return "train" if split == "train" else "val"


def check(root: str | Path, split: str | None = None) -> Path:
    """Return the folder holding ``train/`` and ``val/``; raise a one-line error naming what is missing."""
    folder = _folder(root)
    for name in (_split_dir(split),) if split else ("train", "val"):
        directory = folder / name
        if not directory.is_dir():
            raise DatasetMissingError(f"ImageNet not found: missing folder {directory}; {_hint(folder)}")
        if not any(entry.is_dir() for entry in directory.iterdir()):
            raise DatasetMissingError(
                f"ImageNet folder {directory} has no class (wnid) folders; {_hint(folder)}"
            )
    return folder


def load(root: str | Path, split: str) -> ImageFolder:
    """An ``ImageFolder`` over ``train/`` or ``val/`` yielding ``(PIL RGB, label)``."""
    folder = check(root, split)
    return ImageFolder(str(folder / _split_dir(split)), loader=rgb_loader)
