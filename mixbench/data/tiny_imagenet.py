"""Tiny ImageNet (200 classes, 64 x 64 RGB) from the standard ``tiny-imagenet-200.zip`` release.

On-disk layout under ``<root>/tiny-imagenet-200/``::

    wnids.txt                                   one WordNet id per line (200 lines)
    train/<wnid>/images/<wnid>_<i>.JPEG         500 images per class
    val/images/val_<i>.JPEG                     10,000 images, flat ...
    val/val_annotations.txt                     ... labelled here: file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1

The common re-layout (done by :func:`relayout_val`) moves the validation images into class folders,
``val/<wnid>/images/val_<i>.JPEG``; :func:`load` accepts both layouts (and a half-finished move).

Labels: the index of the image's wnid in the *sorted* list of ``wnids.txt`` entries (the file itself is not
sorted), which is also the order of sorted class-folder names, i.e. what ``ImageFolder`` would assign.
Validation labels are read from ``val_annotations.txt`` (in annotation order), so both layouts give the same
order and labels; only without that file are the class folders scanned (sorted wnid, then sorted file).
Greyscale JPEGs (a few hundred in the release) are converted to RGB.

Decoding 100k JPEGs takes a while, so each decoded split is cached as
``tiny-imagenet-200/mixbench-cache-<split>.pt`` (uint8 tensors, written atomically). The cache is trusted as
is: delete it after changing the image files. Split ``"train"`` is the training set; ``"val"`` and ``"test"``
both mean the labelled validation set (the release's ``test/`` images carry no labels).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .base import ArraySplit, DatasetMissingError, open_rgb

FOLDER = "tiny-imagenet-200"
SIZE = 64
SPLITS = ("train", "val", "test")
_EXTENSIONS = (".jpeg", ".jpg", ".png")
_CACHE_VERSION = 1
_log = logging.getLogger(__name__)


def _folder(root: str | Path) -> Path:
    return Path(root).expanduser().absolute() / FOLDER


def _missing(what: str, path: Path) -> DatasetMissingError:
    return DatasetMissingError(
        f"Tiny ImageNet not found: missing {what} {path}; fix: download tiny-imagenet-200.zip from the "
        f"CS231n site (http://cs231n.stanford.edu/tiny-imagenet-200.zip) and unzip it under data.root"
    )


def check(root: str | Path) -> Path:
    """Return the ``tiny-imagenet-200`` folder, or raise a one-line :class:`DatasetMissingError`."""
    folder = _folder(root)
    if not folder.is_dir():
        raise _missing("folder", folder)
    for name in ("wnids.txt", "train", "val"):
        if not (folder / name).exists():
            raise _missing("file" if "." in name else "folder", folder / name)
    return folder


def read_wnids(folder: Path) -> list[str]:
    """The class ids in label order (sorted)."""
    return sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})


def _image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in _EXTENSIONS)


def _read_annotations(folder: Path) -> list[tuple[str, str]]:
    """``(file name, wnid)`` pairs of ``val/val_annotations.txt``, in file order."""
    pairs = []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def _train_samples(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    return [
        (path, label)
        for wnid, label in index.items()
        for path in _image_files(folder / "train" / wnid / "images")
    ]


def _locate_val(val: Path, name: str, wnid: str) -> Path:
    for candidate in (val / "images" / name, val / wnid / "images" / name, val / wnid / name):
        if candidate.is_file():
            return candidate
    raise _missing("validation image", val / "images" / name)


def _val_samples(folder: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    val = folder / "val"
    if (val / "val_annotations.txt").is_file():
        return [(_locate_val(val, name, wnid), index[wnid]) for name, wnid in _read_annotations(folder)]
    samples = []
    for wnid, label in index.items():
        class_dir = val / wnid / "images" if (val / wnid / "images").is_dir() else val / wnid
        samples.extend((path, label) for path in _image_files(class_dir))
    return samples


def _decode(path: Path) -> np.ndarray:
    array = np.asarray(open_rgb(path))
    if array.shape != (SIZE, SIZE, 3):
        raise ValueError(
            f"Tiny ImageNet image {path} is {array.shape[1]}x{array.shape[0]}, expected {SIZE}x{SIZE}"
        )
    return array


def _decode_all(samples: list[tuple[Path, int]]) -> ArraySplit:
    images = np.empty((len(samples), SIZE, SIZE, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        for i, array in enumerate(pool.map(_decode, [path for path, _ in samples])):
            images[i] = array
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return ArraySplit(tensor, torch.tensor([label for _, label in samples], dtype=torch.int64))


def cache_path(root: str | Path, split: str) -> Path:
    return _folder(root) / f"mixbench-cache-{_canonical(split)}.pt"


def _read_cache(path: Path) -> ArraySplit | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("version") != _CACHE_VERSION:
            return None
        return ArraySplit(payload["images"], payload["labels"])
    except Exception as error:  # truncated / foreign file: rebuild it
        _log.warning("ignoring unreadable Tiny ImageNet cache %s (%s)", path, error)
        return None


def _write_cache(path: Path, data: ArraySplit) -> None:
    """Write atomically (temp file in the same folder + os.replace); skip quietly if not writable."""
    try:
        handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as error:
        _log.info("not caching Tiny ImageNet (%s is not writable: %s)", path.parent, error)
        return
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"version": _CACHE_VERSION, "images": data.images, "labels": data.labels}, stream)
        os.replace(temp, path)
    except OSError as error:
        _log.info("not caching Tiny ImageNet (%s)", error)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _canonical(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Tiny ImageNet split must be one of {SPLITS}, got {split!r}")
    return "train" if split == "train" else "val"


def load(root: str | Path, split: str, cache: bool = True) -> ArraySplit:
    """The whole split as uint8 N x 3 x 64 x 64 plus int64 labels (decoded once, then read from the cache)."""
    split = _canonical(split)
    folder = check(root)
    path = cache_path(root, split)
    cached = _read_cache(path) if cache else None
    if cached is not None:
        return cached
    index = {wnid: i for i, wnid in enumerate(read_wnids(folder))}
    samples = _train_samples(folder, index) if split == "train" else _val_samples(folder, index)
    if not samples:
        raise _missing(f"{split} images in", folder / split)
    data = _decode_all(samples)
    if cache:
        _write_cache(path, data)
    return data


def relayout_val(root: str | Path) -> int:
    """Move ``val/images/<file>`` to ``val/<wnid>/images/<file>``; return how many were moved.

    Idempotent: already moved images are skipped; ``val/images`` is removed once empty.
    ``val_annotations.txt`` is kept (labels and order still come from it).
    """
    folder = check(root)
    val = folder / "val"
    if not (val / "val_annotations.txt").is_file():
        raise _missing("file", val / "val_annotations.txt")
    moved = 0
    for name, wnid in _read_annotations(folder):
        source, target = val / "images" / name, val / wnid / "images" / name
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
            moved += 1
    if (val / "images").is_dir() and not any((val / "images").iterdir()):
        (val / "images").rmdir()
    return moved
