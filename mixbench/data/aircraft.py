"""FGVC-Aircraft 2013b (100 variants), read with ``torchvision.datasets.FGVCAircraft``.

On-disk layout (the extracted ``fgvc-aircraft-2013b.tar.gz``), ``<root>/fgvc-aircraft-2013b/data/``::

    variants.txt                         one variant name per line (label = line index)
    images_variant_trainval.txt          "<image id> <variant name>" (names may contain spaces)
    images_variant_test.txt
    images/<image id>.jpg

Split ``"train"`` is torchvision's ``"trainval"`` (6,667 images); ``"val"`` and ``"test"`` both mean the
official test split (3,333 images). Items are ``(PIL RGB image, int label)``.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import FGVCAircraft

from .base import DatasetMissingError

FOLDER = "fgvc-aircraft-2013b"
SPLITS = {"train": "trainval", "val": "test", "test": "test"}


def check(root: str | Path, split: str = "train", download: bool = False) -> Path:
    """Return the dataset folder (downloading it when asked) or raise a one-line error."""
    root = Path(root).expanduser().absolute()
    folder = root / FOLDER
    if download and not folder.is_dir():
        try:
            FGVCAircraft(str(root), split="test", download=True)
        except Exception as error:
            raise DatasetMissingError(
                f"FGVC-Aircraft download into {root} failed "
                f"({type(error).__name__}: {' '.join(str(error).split())}); "
                f"fix: retry on a machine with internet or extract fgvc-aircraft-2013b.tar.gz there"
            ) from error
    labels = folder / "data" / f"images_variant_{SPLITS[split]}.txt"
    for path in (folder, folder / "data" / "variants.txt", labels, folder / "data" / "images"):
        if not path.exists():
            raise DatasetMissingError(
                f"FGVC-Aircraft not found: missing {path}; fix: set data.download=true on a machine with "
                f"internet, or extract fgvc-aircraft-2013b.tar.gz (robots.ox.ac.uk/~vgg/data/fgvc-aircraft) "
                f"under data.root"
            )
    return folder


def load(root: str | Path, split: str, download: bool = False) -> FGVCAircraft:
    if split not in SPLITS:
        raise ValueError(f"FGVC-Aircraft split must be one of {tuple(SPLITS)}, got {split!r}")
    folder = check(root, split, download)
    dataset = FGVCAircraft(str(folder.parent), split=SPLITS[split], annotation_level="variant")
    dataset.targets = list(dataset._labels)  # same attribute name as ImageFolder / CUB200
    return dataset
