"""CUB-200-2011 (Caltech-UCSD Birds, 200 classes) in its release layout, ``<root>/CUB_200_2011/``::

    images.txt                  <image id> <relative path>          e.g. "1 001.Black_footed_Albatross/x.jpg"
    image_class_labels.txt      <image id> <class id 1..200>
    train_test_split.txt        <image id> <is_training_image 1|0>
    bounding_boxes.txt          <image id> <x> <y> <width> <height>  (pixels, floats)
    images/<class folder>/<file>.jpg

Labels are ``class id - 1`` (0..199). Split ``"train"`` is the official 5,994 training images; ``"test"``
and ``"val"`` both mean the 5,794 test images. Items are ``(PIL RGB image, int label)``; samples are in
image-id order. The boxes are kept reachable through :meth:`CUB200.bounding_box` for localisation.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from .base import DatasetMissingError, open_rgb

FOLDER = "CUB_200_2011"
SPLITS = ("train", "val", "test")
_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt", "images")


def _read_table(path: Path) -> dict[int, list[str]]:
    """``image id -> remaining fields`` of a whitespace-separated CUB metadata file."""
    table = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if fields:
            table[int(fields[0])] = fields[1:]
    return table


class CUB200(Dataset):
    """One split of CUB-200-2011: ``(PIL RGB, label 0..199)`` items, ``targets``, ``bounding_box(i)``."""

    def __init__(self, folder: Path, train: bool) -> None:
        self.folder = Path(folder)
        paths = _read_table(self.folder / "images.txt")
        classes = _read_table(self.folder / "image_class_labels.txt")
        is_train = _read_table(self.folder / "train_test_split.txt")
        boxes = _read_table(self.folder / "bounding_boxes.txt")
        self.image_ids = [i for i in sorted(paths) if (is_train[i][0] == "1") == train]
        self.paths = [self.folder / "images" / paths[i][0] for i in self.image_ids]
        self.targets = [int(classes[i][0]) - 1 for i in self.image_ids]
        self._boxes = {i: tuple(float(v) for v in boxes[i][:4]) for i in self.image_ids if i in boxes}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return open_rgb(self.paths[index]), self.targets[index]

    def bounding_box(self, index: int) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` in pixels of sample ``index`` (a dataset index, not an image id)."""
        return self._boxes[self.image_ids[index]]


def check(root: str | Path) -> Path:
    """Return the ``CUB_200_2011`` folder or raise a one-line :class:`DatasetMissingError`."""
    folder = Path(root).expanduser().absolute() / FOLDER
    for path in [folder] + [folder / name for name in _FILES]:
        if not path.exists():
            raise DatasetMissingError(
                f"CUB-200-2011 not found: missing {path}; fix: download CUB_200_2011.tgz (Caltech, "
                f"https://www.vision.caltech.edu/datasets/cub_200_2011/) and extract it under data.root"
            )
    return folder


def load(root: str | Path, split: str) -> CUB200:
    if split not in SPLITS:
        raise ValueError(f"CUB-200 split must be one of {SPLITS}, got {split!r}")
    return CUB200(check(root), train=split == "train")
