"""The embedded offline dataset: scikit-learn's handwritten digits (UCI "Optical Recognition of Handwritten
Digits", 1,797 real 8x8 grey images of 10 classes, shipped inside scikit-learn, so no download).

Each image (grey levels 0..16) is scaled to 0..255, resized bilinearly to ``image_size`` and repeated over
three channels, so every backbone and every method runs on it unchanged.  The split is fixed: scikit-learn's
stratified 25% test split with ``random_state=0`` (``train_test_split``; 1,347 train / 450 test images, in
the order it returns them), whatever the run's seed.

Why the split is a file (``digits_split.txt``) and the images are read without scikit-learn's API: importing
``sklearn.model_selection`` costs about 1.3 s, paid by every fresh process that trains on digits (the
quickstart's jobs, each job of a sweep) for a split that never changes.  The file holds the indices
``train_test_split`` returns (:func:`write_split` writes it; a test compares it with scikit-learn's own
split), and the images come from the very file ``sklearn.datasets.load_digits`` parses (``digits.csv.gz`` of
the installed scikit-learn; a test compares them too).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixbench.data.base import ArraySplit

TEST_FRACTION = 0.25
SPLIT_SEED = 0
SPLIT_FILE = Path(__file__).with_name("digits_split.txt")


def load(root: str | None = None, split: str = "train", image_size: int = 16) -> ArraySplit:
    """The ``train`` or ``test`` split as uint8 ``N x 3 x image_size x image_size``; ``root`` is unused."""
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not '{split}'")
    images, labels = read_digits()
    chosen = torch.as_tensor(read_split()[split])
    grey = torch.as_tensor(images[chosen.numpy()], dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    resized = F.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    pixels = resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return ArraySplit(images=pixels, labels=torch.as_tensor(labels[chosen.numpy()]))


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (``N x 8 x 8`` float, grey levels 0..16) and labels, from scikit-learn's data file."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the digits dataset ships with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def read_split() -> dict[str, list[int]]:
    """``{"train": [...], "test": [...]}``: the image indices of each split, in order."""
    parts = {}
    for line in SPLIT_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, indices = line.split(":", 1)
            parts[name] = [int(index) for index in indices.split()]
    return parts


def sklearn_split() -> dict[str, list[int]]:
    """The split as scikit-learn computes it (imports ``sklearn.model_selection``)."""
    from sklearn.model_selection import train_test_split

    _, labels = read_digits()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return {"train": train.tolist(), "test": test.tolist()}


def write_split(path: Path = SPLIT_FILE) -> None:
    """(Re)write the split file from scikit-learn: ``python -c "from mixbench.data.digits import
    write_split; write_split()"``."""
    split = sklearn_split()
    header = (
        "# The digits split: sklearn.model_selection.train_test_split(indices, test_size=0.25, "
        "random_state=0,\n# stratify=labels), written by mixbench.data.digits.write_split.\n"
    )
    body = "".join(f"{name}: {' '.join(map(str, split[name]))}\n" for name in ("train", "test"))
    path.write_text(header + body)


def check(root: str | None = None, **options) -> None:
    """The digits ship with scikit-learn: always available."""
