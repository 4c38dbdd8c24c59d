"""Data path: device-side crop/flip, the device and worker loaders, the digits split, the PIL policies.

Everything runs on tiny in-memory splits (8x8 images) on the CPU; labels are used as image ids so that
batches can be traced back to the images they hold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mixbench.data import digits
from mixbench.data.base import ArraySplit
from mixbench.data.loaders import (
    ArrayImageDataset,
    DeviceTensorLoader,
    EpochShardSampler,
    Normalizer,
    WorkerLoader,
    random_crop_flip,
    shard_indices,
)
from mixbench.data.transforms import POLICIES, PCALighting, eval_transform, train_transform

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py


def normalizer() -> Normalizer:
    return Normalizer(MEAN, STD, CPU, channels_last=False)


def split(n: int, size: int = 8, seed: int = 0) -> ArraySplit:
    """n random uint8 images; label i = image i (an id)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ArraySplit(images=images, labels=torch.arange(n))


def labels_of(loader) -> list[list[int]]:
    return [y.tolist() for _, y in loader]


# ----------------------------------------------------------------------------------- random_crop_flip


def numpy_reflect_pad(x: torch.Tensor, pad: int) -> np.ndarray:
    return np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def matching_windows(out: torch.Tensor, padded: np.ndarray, pad: int) -> list[tuple[int, int, bool]]:
    """Every (offset_y, offset_x, flipped) whose window of ``padded`` equals ``out`` (C,H,W)."""
    _, height, width = out.shape
    target = out.numpy()
    found = []
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            window = padded[:, oy : oy + height, ox : ox + width]
            for flipped in (False, True):
                candidate = window[:, :, ::-1] if flipped else window
                if np.array_equal(candidate, target):
                    found.append((oy, ox, flipped))
    return found


def test_random_crop_flip_outputs_are_windows_of_the_reflect_padded_input_possibly_flipped() -> None:
    pad, height, width = 4, 8, 10
    x = torch.rand(48, 3, height, width, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(x, pad=pad, flip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = numpy_reflect_pad(x, pad)
    chosen = []
    for i in range(len(x)):
        found = matching_windows(out[i], padded[i], pad)
        assert len(found) == 1, f"sample {i} is not exactly one window of its padded input: {found}"
        chosen.append(found[0])
    offsets = {(oy, ox) for oy, ox, _ in chosen}
    assert len(offsets) > 5, "crop offsets do not vary across samples"
    assert {oy for oy, _ in offsets} != {pad} and {ox for _, ox in offsets} != {pad}
    assert any(oy != ox for oy, ox in offsets), "vertical and horizontal offsets are not drawn independently"
    assert {flipped for *_, flipped in chosen} == {False, True}, "flip is not drawn per sample"


def test_random_crop_flip_without_pad_or_flip_is_identity() -> None:
    x = torch.rand(5, 3, 8, 8)
    assert torch.equal(random_crop_flip(x, pad=0, flip=False, generator=torch.Generator()), x)


def test_random_crop_flip_with_flip_only_flips_whole_samples() -> None:
    x = torch.rand(32, 3, 6, 6)
    out = random_crop_flip(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, s.flip(2)) for o, s in zip(out, x, strict=True)]
    kept = [torch.equal(o, s) for o, s in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_random_crop_flip_is_reproducible_from_the_generator() -> None:
    x = torch.rand(16, 3, 8, 8)
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, 4, True, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------- DeviceTensorLoader


def device_loader(data: ArraySplit, batch_size: int, train: bool, **kw) -> DeviceTensorLoader:
    return DeviceTensorLoader(data, batch_size, normalizer(), CPU, train=train, **kw)


def test_train_epoch_yields_len_full_batches_of_distinct_images() -> None:
    loader = device_loader(split(50), batch_size=8, train=True)
    loader.set_epoch(3)
    batches = list(loader)
    assert len(loader) == 6 and len(batches) == 6  # 50 // 8, last partial batch dropped
    for x, y in batches:
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.shape == (8,)
    seen = [i for _, y in batches for i in y.tolist()]
    assert len(set(seen)) == 48
    assert seen != sorted(seen), "training order is not shuffled"


def test_eval_yields_every_image_once_in_order_normalised() -> None:
    data = split(21)
    loader = device_loader(data, batch_size=8, train=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(y) for _, y in batches] == [8, 8, 5]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(21))
    x = torch.cat([x for x, _ in batches])
    pixel = data.images[13, 1, 2, 5].item()
    assert x[13, 1, 2, 5].item() == pytest.approx((pixel / 255 - MEAN[1]) / STD[1], abs=1e-5)
    expected = (data.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, expected)


def test_set_epoch_same_seed_replays_batches_different_seed_reorders() -> None:
    loader = device_loader(split(40), batch_size=8, train=True)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader.set_epoch(seed)
        return list(loader)

    first, again, other = epoch(11), epoch(11), epoch(12)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert [y.tolist() for _, y in first] != [y.tolist() for _, y in other]


def test_train_batches_are_augmented_windows_of_their_images() -> None:
    data = split(16)
    loader = device_loader(data, batch_size=4, train=True)
    loader.set_epoch(0)
    x, y = next(iter(loader))
    raw = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    raw = raw.round()
    padded = numpy_reflect_pad(data.images.float(), 4)
    for sample, image_id in zip(raw, y.tolist(), strict=True):
        assert matching_windows(sample, padded[image_id], 4), "a train sample is not a crop of its own image"


@pytest.mark.parametrize("n,batch_size", [(48, 8), (51, 2)])
def test_two_ranks_read_disjoint_shards_that_cover_the_data(n: int, batch_size: int) -> None:
    data = split(n)
    ranks = []
    for rank in range(2):
        loader = device_loader(data, batch_size, train=True, rank=rank, world_size=2)
        loader.set_epoch(7)
        ids = [i for _, y in loader for i in y.tolist()]
        assert len(ids) == len(loader) * batch_size == (n + 1) // 2 // batch_size * batch_size
        ranks.append(ids)
    assert len(ranks[0]) == len(ranks[1])
    overlap = set(ranks[0]) & set(ranks[1])
    padding = 2 * ((n + 1) // 2) - n  # shards are padded with repeats to equal length
    assert len(overlap) <= padding
    assert set(ranks[0]) | set(ranks[1]) == set(range(n))


def test_shard_indices_pads_with_repeats_and_splits_evenly() -> None:
    order = torch.tensor([4, 0, 3, 1, 2])
    shards = [shard_indices(order, r, 2) for r in range(2)]
    assert [len(s) for s in shards] == [3, 3]
    assert sorted(torch.cat(shards).tolist()) == [0, 1, 2, 3, 4, 4]


@pytest.mark.parametrize("train", [True, False])
def test_resize_to_gives_requested_size(train: bool) -> None:
    loader = device_loader(split(8), batch_size=4, train=train, resize_to=12)
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 12, 12)
    assert torch.isfinite(x).all()


def test_channels_last_normaliser_returns_channels_last() -> None:
    images = split(2).images
    out = Normalizer(MEAN, STD, CPU, channels_last=True)(images)
    assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------- WorkerLoader


def test_worker_loader_yields_normalised_float_batches() -> None:
    data = split(10)
    dataset = ArrayImageDataset(data, eval_transform("crop_flip", 8))
    loader = WorkerLoader(dataset, 4, normalizer(), CPU, train=False, num_workers=0)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and x.shape == (10, 3, 8, 8)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    expected = (data.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(x, expected)


def test_worker_loader_train_drops_last_and_replays_order_with_same_seed() -> None:
    dataset = ArrayImageDataset(split(10), train_transform("crop_flip", 8))
    loader = WorkerLoader(dataset, 4, normalizer(), CPU, train=True, num_workers=0)
    loader.set_epoch(2)
    first = labels_of(loader)
    loader.set_epoch(2)
    again = labels_of(loader)
    assert len(first) == len(loader) == 2 and all(len(b) == 4 for b in first)
    assert first == again
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32


def test_epoch_shard_sampler_is_a_seeded_permutation() -> None:
    sampler = EpochShardSampler(30, shuffle=True)
    sampler.set_epoch(4)
    a = list(sampler)
    b = list(sampler)
    sampler.set_epoch(5)
    c = list(sampler)
    assert a == b and sorted(a) == list(range(30)) and a != c and a != sorted(a)
    assert list(EpochShardSampler(7, shuffle=False)) == list(range(7))
    shards = []
    for rank in range(3):
        s = EpochShardSampler(30, shuffle=True, rank=rank, world_size=3)
        s.set_epoch(4)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == 10
    assert sorted(sum(shards, [])) == list(range(30))


# ------------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digit_splits() -> dict[str, ArraySplit]:
    return {name: digits.load(split=name, image_size=32) for name in ("train", "test")}


def test_digits_split_sizes_classes_and_format(digit_splits) -> None:
    train, test = digit_splits["train"], digit_splits["test"]
    assert len(train) == 1347 and len(test) == 450
    for part in (train, test):
        assert part.images.dtype == torch.uint8 and tuple(part.images.shape[1:]) == (3, 32, 32)
        assert set(part.labels.tolist()) == set(range(10))
        assert torch.equal(part.images[:, 0], part.images[:, 2])  # grey repeated over channels
        assert part.images.max() > 200  # scaled from 0..16 to 0..255
    # stratified: each class has about a quarter of its images in the test split
    for c in range(10):
        n_test, n_all = (
            int((test.labels == c).sum()),
            int((train.labels == c).sum() + (test.labels == c).sum()),
        )
        assert abs(n_test - 0.25 * n_all) <= 1


def test_the_shipped_digits_split_and_images_are_scikit_learns() -> None:
    """The split file is what ``train_test_split`` returns (indices and order), and the images read from the
    data file are ``load_digits``'s: the cheap path of :mod:`mixbench.data.digits` changes nothing."""
    from sklearn.datasets import load_digits

    assert digits.read_split() == digits.sklearn_split()
    images, labels = digits.read_digits()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    split = digits.read_split()
    assert sorted(split["train"] + split["test"]) == list(range(1797))


def test_digits_split_ignores_global_seeds(digit_splits) -> None:
    torch.manual_seed(1234)
    np.random.seed(4321)
    again = digits.load(split="test", image_size=32)
    assert torch.equal(again.images, digit_splits["test"].images)
    assert torch.equal(again.labels, digit_splits["test"].labels)


def test_digits_image_size_option() -> None:
    small = digits.load(split="test", image_size=16)
    assert tuple(small.images.shape) == (450, 3, 16, 16) and small.images.dtype == torch.uint8


def test_digits_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="val"):
        digits.load(split="val")


# -------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_gives_uint8_3_by_size_by_size(policy: str) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    size = 24
    for transform in (train_transform(policy, size), eval_transform(policy, size)):
        out = transform(image)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
        assert tuple(out.shape) == (3, size, size)


def test_unknown_policy_raises_with_valid_names() -> None:
    for builder in (train_transform, eval_transform):
        with pytest.raises(ValueError, match="crop_flip"):
            builder("autoaugment", 32)


def test_pca_lighting_clamps_into_uint8_range_instead_of_wrapping() -> None:
    image = torch.zeros(3, 1, 3, dtype=torch.uint8)
    image[:, 0, 1], image[:, 0, 2] = 128, 255
    changed = False
    for seed in range(20):
        torch.manual_seed(seed)
        out = PCALighting(std=3.0)(image)  # large noise: shifts beyond +-128 occur
        assert out.dtype == torch.uint8 and out.shape == image.shape
        low, mid, high = out[:, 0, 0].int(), out[:, 0, 1].int(), out[:, 0, 2].int()
        assert (low <= mid).all() and (mid <= high).all(), "lighting wrapped around instead of clamping"
        assert ((low == 0) | (high == 255)).all(), "a shift moved both ends of the range"
        changed |= not torch.equal(out, image)
    assert changed


def test_pca_lighting_shift_is_constant_per_channel() -> None:
    torch.manual_seed(0)
    image = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    out = PCALighting(std=0.1)(image)
    for channel in out:
        assert (channel == channel[0, 0]).all()
    assert not torch.equal(out, image)
