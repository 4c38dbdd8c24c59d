"""The on-disk dataset readers, on tiny fake trees built in the real release layouts (no downloads)."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from mixbench.data import aircraft, cars, cifar, cub200, imagenet, tiny_imagenet
from mixbench.data.base import ArraySplit, DatasetMissingError

REPO = Path(__file__).resolve().parents[1]


def _jpeg(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format="JPEG")
    return path


def _decoded(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------- CIFAR
def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        pickle.dump(obj, stream)


def _fake_cifar(root: Path, num_classes: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """Write the real batch files; point torchvision's md5 table at them (it checks md5s on open)."""
    cls = CIFAR10 if num_classes == 10 else CIFAR100
    folder = root / cls.base_folder
    label_key = "labels" if num_classes == 10 else "fine_labels"
    rng = np.random.default_rng(num_classes)
    written = {}
    for i, (name, _) in enumerate(cls.train_list + cls.test_list):
        n = 2 + i % 2
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        _pickle(
            folder / name,
            {
                "data": images.reshape(n, 3072),
                label_key: labels,
                "coarse_labels": [0] * n,
                "filenames": [f"{name}_{j}.png" for j in range(n)],
            },
        )
        written[name] = (images, labels)
    names = [f"class{c}" for c in range(num_classes)]
    _pickle(folder / cls.meta["filename"], {cls.meta["key"]: names})
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return written


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_shapes_labels_and_pixels(tmp_path, monkeypatch, num_classes):
    written = _fake_cifar(tmp_path, num_classes, monkeypatch)
    cls = CIFAR10 if num_classes == 10 else CIFAR100
    train_names = [name for name, _ in cls.train_list]
    test_name = cls.test_list[0][0]
    train = cifar.load(tmp_path, "train", num_classes=num_classes)
    test = cifar.load(tmp_path, "test", num_classes=num_classes)
    assert isinstance(train, ArraySplit)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    expected = np.concatenate([written[n][0] for n in train_names])
    assert tuple(train.images.shape) == (len(expected), 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((written[n][1] for n in train_names), [])
    assert torch.equal(test.images, torch.from_numpy(written[test_name][0]))
    assert test.labels.tolist() == written[test_name][1]


def test_cifar_corrupted_files_are_a_one_line_error(tmp_path, monkeypatch):
    _fake_cifar(tmp_path, 10, monkeypatch)
    monkeypatch.undo()  # the real md5 table no longer matches the fake files
    with pytest.raises(DatasetMissingError, match="corrupted") as info:
        cifar.load(tmp_path, "train")
    assert "\n" not in str(info.value)


def test_cifar_download_failure_becomes_missing_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetMissingError) as info:
        cifar.load(tmp_path, "train", num_classes=100, download=True)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "URLError" in message


# --------------------------------------------------------------------------------------------- Tiny ImageNet
TINY_WNIDS = ["n03000000", "n01000000", "n02000000"]  # unsorted in wnids.txt, as in the release
TINY_VAL = [
    ("val_0.JPEG", "n02000000"),
    ("val_1.JPEG", "n03000000"),
    ("val_2.JPEG", "n01000000"),
    ("val_3.JPEG", "n02000000"),
]


def _fake_tiny(root: Path) -> Path:
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for c, wnid in enumerate(TINY_WNIDS):
        for i in range(2):
            _jpeg(
                folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                seed=10 * c + i,
                mode="L" if (c, i) == (0, 1) else "RGB",
            )
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    for i, (name, _) in enumerate(TINY_VAL):
        _jpeg(folder / "val" / "images" / name, seed=100 + i, mode="L" if i == 2 else "RGB")
    lines = [f"{name}\t{wnid}\t0\t0\t63\t63" for name, wnid in TINY_VAL]
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_train_labels_follow_sorted_wnids_and_greyscale_becomes_rgb(tmp_path):
    folder = _fake_tiny(tmp_path)
    train = tiny_imagenet.load(tmp_path, "train", cache=False)
    assert tuple(train.images.shape) == (6, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]  # n01.., n02.., n03..
    grey = folder / "train" / "n03000000" / "images" / "n03000000_1.JPEG"
    assert torch.equal(train.images[5], _decoded(grey))
    assert torch.equal(train.images[5][0], train.images[5][1])


def test_tiny_val_labels_in_both_layouts(tmp_path):
    folder = _fake_tiny(tmp_path)
    expected = [sorted(TINY_WNIDS).index(wnid) for _, wnid in TINY_VAL]
    flat = tiny_imagenet.load(tmp_path, "val", cache=False)
    assert flat.labels.tolist() == expected
    assert torch.equal(flat.images[0], _decoded(folder / "val" / "images" / "val_0.JPEG"))
    assert tiny_imagenet.relayout_val(tmp_path) == len(TINY_VAL)
    assert tiny_imagenet.relayout_val(tmp_path) == 0  # idempotent
    assert not (folder / "val" / "images").exists()
    assert (folder / "val" / "n03000000" / "images" / "val_1.JPEG").is_file()
    moved = tiny_imagenet.load(tmp_path, "test", cache=False)
    assert moved.labels.tolist() == expected and torch.equal(moved.images, flat.images)
    (folder / "val" / "val_annotations.txt").unlink()  # class folders alone also work
    scanned = tiny_imagenet.load(tmp_path, "val", cache=False)
    assert sorted(scanned.labels.tolist()) == sorted(expected)


def test_tiny_cache_round_trip(tmp_path):
    folder = _fake_tiny(tmp_path)
    first = tiny_imagenet.load(tmp_path, "train")
    cache = folder / "mixbench-cache-train.pt"
    assert cache.is_file() and not list(folder.glob("*.tmp"))
    (folder / "train" / "n01000000" / "images" / "n01000000_0.JPEG").unlink()
    second = tiny_imagenet.load(tmp_path, "train")
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    cache.write_bytes(b"not a torch file")  # unreadable cache: rebuilt from the (now 5) images
    assert len(tiny_imagenet.load(tmp_path, "train")) == 5


def test_tiny_unwritable_folder_falls_back_to_no_cache(tmp_path, monkeypatch):
    folder = _fake_tiny(tmp_path)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tiny_imagenet.tempfile, "mkstemp", read_only)
    assert len(tiny_imagenet.load(tmp_path, "val")) == len(TINY_VAL)
    assert not list(folder.glob("mixbench-cache-*"))


# -------------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_class_order_and_rgb(tmp_path):
    for split in ("train", "val"):
        for c, wnid in enumerate(["n02000000", "n01000000"]):
            _jpeg(
                tmp_path / "imagenet" / split / wnid / f"{split}_{c}.JPEG",
                size=(40, 30),
                mode="L" if c == 0 else "RGB",
            )
    train = imagenet.load(tmp_path, "train")
    assert train.class_to_idx == {"n01000000": 0, "n02000000": 1}
    image, label = train[1]
    assert image.mode == "RGB" and image.size == (40, 30) and label == 1
    assert imagenet.load(tmp_path / "imagenet", "val").targets == [0, 1]  # root may be the folder itself


def test_imagenet_flat_val_names_valprep(tmp_path):
    _jpeg(tmp_path / "imagenet" / "train" / "n01000000" / "a.JPEG")
    _jpeg(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetMissingError, match="valprep") as info:
        imagenet.load(tmp_path, "val")
    assert str(tmp_path / "imagenet" / "val") in str(info.value)


# ------------------------------------------------------------------------------------------------------- CUB
def test_cub_split_counts_labels_and_boxes(tmp_path):
    folder = tmp_path / "CUB_200_2011"
    rows = [
        (1, "001.Albatross/a_1.jpg", 1, 1),
        (2, "001.Albatross/a_2.jpg", 1, 0),
        (3, "002.Auklet/b_1.jpg", 2, 1),
        (4, "003.Cormorant/c_1.jpg", 3, 0),
        (5, "003.Cormorant/c_2.jpg", 3, 1),
    ]
    for i, path, _, _ in rows:
        _jpeg(folder / "images" / path, size=(50 + i, 37), seed=i, mode="L" if i == 3 else "RGB")
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (folder / "bounding_boxes.txt").write_text("".join(f"{i} {i}.0 2.5 {10 * i}.0 20.0\n" for i, *_ in rows))
    train, test = cub200.load(tmp_path, "train"), cub200.load(tmp_path, "test")
    assert (len(train), len(test)) == (3, 2)
    assert train.targets == [0, 1, 2] and test.targets == [0, 2]
    image, label = train[1]
    assert image.mode == "RGB" and image.size == (53, 37) and label == 1
    assert train.bounding_box(2) == (5.0, 2.5, 50.0, 20.0)
    assert test.bounding_box(0) == (2.0, 2.5, 20.0, 20.0)


# --------------------------------------------------------------------------------------- Aircraft and Cars
def test_aircraft_variant_labels(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    for image_id in ("0001", "0002", "0003"):
        _jpeg(data / "images" / f"{image_id}.jpg", size=(48, 32))
    (data / "variants.txt").write_text("707-320\nCessna 172\n")
    (data / "images_variant_trainval.txt").write_text("0001 Cessna 172\n0002 707-320\n")
    (data / "images_variant_test.txt").write_text("0003 Cessna 172\n")
    train = aircraft.load(tmp_path, "train")
    assert train.targets == [1, 0] and train[0][0].mode == "RGB"
    assert aircraft.load(tmp_path, "test").targets == [1]


def test_cars_devkit_layout(tmp_path):
    sio = pytest.importorskip("scipy.io")
    folder = tmp_path / "stanford_cars"
    (folder / "devkit").mkdir(parents=True)
    sio.savemat(
        folder / "devkit" / "cars_meta.mat", {"class_names": np.array(["A 2012", "B 2009"], dtype=object)}
    )
    for mat, images, rows in (
        (folder / "devkit" / "cars_train_annos.mat", "cars_train", [("1.jpg", 2), ("2.jpg", 1)]),
        (folder / "cars_test_annos_withlabels.mat", "cars_test", [("8.jpg", 1), ("9.jpg", 1)]),
    ):
        for name, _ in rows:
            _jpeg(folder / images / name, size=(30, 20))
        sio.savemat(mat, {"annotations": np.array(rows, dtype=[("fname", object), ("class", object)])})
    train = cars.load(tmp_path, "train")
    assert train.targets == [1, 0] and train.classes == ["A 2012", "B 2009"] and train[0][0].mode == "RGB"
    assert cars.load(tmp_path, "val").targets == [0, 0]  # (a 1-row .mat squeezes to 0-d: torchvision fails)


# ------------------------------------------------------------------------------------ check() and the CLI
@pytest.mark.parametrize(
    "module, options",
    [
        (cifar, {"num_classes": 10}),
        (cifar, {"num_classes": 100}),
        (tiny_imagenet, {}),
        (imagenet, {}),
        (cub200, {}),
        (aircraft, {}),
        (cars, {}),
    ],
)
def test_check_on_empty_dir_names_the_path(tmp_path, module, options):
    with pytest.raises(DatasetMissingError) as info:
        module.check(tmp_path, **options)
    message = str(info.value)
    assert str(tmp_path) in message and "\n" not in message and "fix" in message


def _prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "tools" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cli_check_on_empty_dir_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "prepare_data.py"),
            "check",
            "tiny_imagenet",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0]


def test_cli_prepares_tiny_imagenet(tmp_path, capsys):
    folder = _fake_tiny(tmp_path)
    cli = _prepare_data()
    assert cli.main(["tiny_imagenet", "--root", str(tmp_path)]) == 0
    assert (folder / "val" / "n02000000" / "images" / "val_0.JPEG").is_file()
    assert (folder / "mixbench-cache-train.pt").is_file() and (folder / "mixbench-cache-val.pt").is_file()
    assert cli.main(["check", "tiny_imagenet", "--root", str(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out
