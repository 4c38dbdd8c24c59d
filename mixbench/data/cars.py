"""Stanford Cars (196 classes), read with ``torchvision.datasets.StanfordCars`` (needs scipy for .mat files).

On-disk layout torchvision expects, ``<root>/stanford_cars/``::

    devkit/cars_meta.mat                 class_names (196)
    devkit/cars_train_annos.mat          annotations: fname, class (1..196), bbox_*
    cars_train/<fname>.jpg               8,144 images
    cars_test_annos_withlabels.mat       test annotations *with* labels (a separate release file; note it
    cars_test/<fname>.jpg                lives next to devkit/, not inside it) and 8,041 images

The original Stanford URL is gone, so there is no download. Split ``"train"`` is the training set;
``"val"`` and ``"test"`` both mean the test set. Items are ``(PIL RGB image, int label 0..195)``.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import StanfordCars

from .base import DatasetMissingError

FOLDER = "stanford_cars"
SPLITS = ("train", "val", "test")


def _required(folder: Path, split: str) -> list[Path]:
    if split == "train":
        return [
            folder / "devkit" / "cars_meta.mat",
            folder / "devkit" / "cars_train_annos.mat",
            folder / "cars_train",
        ]
    return [
        folder / "devkit" / "cars_meta.mat",
        folder / "cars_test_annos_withlabels.mat",
        folder / "cars_test",
    ]


def check(root: str | Path, split: str = "train") -> Path:
    """Return the ``stanford_cars`` folder or raise a one-line :class:`DatasetMissingError`."""
    folder = Path(root).expanduser().absolute() / FOLDER
    for path in [folder] + _required(folder, "train" if split == "train" else "test"):
        if not path.exists():
            raise DatasetMissingError(
                f"Stanford Cars not found: missing {path}; fix: the original URL is gone, so copy "
                f"cars_train/, cars_test/, devkit/ and cars_test_annos_withlabels.mat from a mirror into "
                f"{folder}"
            )
    return folder


def load(root: str | Path, split: str) -> StanfordCars:
    if split not in SPLITS:
        raise ValueError(f"Stanford Cars split must be one of {SPLITS}, got {split!r}")
    folder = check(root, split)
    dataset = StanfordCars(str(folder.parent), split="train" if split == "train" else "test")
    dataset.targets = [label for _, label in dataset._samples]  # same attribute name as ImageFolder / CUB200
    return dataset
