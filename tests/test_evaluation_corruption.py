"""Corruption: the released CIFAR-C layout (a cut-down fake with n = 3 images per severity) loads the right
severity slice and labels, missing or misshapen files fail with one-line errors, a fake Tiny-ImageNet-C
folder loads with wnid labels, generated corruptions are seeded per image, keep dtype and shape, differ
across severities and equal a direct ``imagecorruptions.corrupt`` call, the replaced functions equal the
package's own ones once their removed names are patched back, and the mean corruption accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixbench.evaluation.corruption import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    CorruptionSetLayoutError,
    DatasetMissingError,
    corruption_seed,
    generate_corruptions,
    load_cifar_c,
    load_tiny_imagenet_c,
    mean_corruption_accuracy,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PER_SEVERITY = 3


def fake_cifar_c(root: Path, corruptions=("fog", "snow")) -> Path:
    """``root/CIFAR-100-C`` in the released layout; image ``i`` of severity ``s`` is filled with
    ``10 s + i`` (plus the corruption's offset)."""
    folder = root / "CIFAR-100-C"
    folder.mkdir(parents=True)
    labels = np.tile(np.array([7, 42, 99], dtype=np.int64), 5)
    np.save(folder / "labels.npy", labels)
    values = np.array([10 * s + i for s in range(1, 6) for i in range(PER_SEVERITY)], dtype=np.uint8)
    for offset, corruption in enumerate(corruptions):
        images = np.broadcast_to(values[:, None, None, None] + offset, (5 * PER_SEVERITY, 32, 32, 3))
        images = images.copy()
        images[:, 0, 0, 1] = 0  # mark channel 1 of pixel (0, 0) to check the HWC -> CHW transpose
        np.save(folder / f"{corruption}.npy", images)
    return folder


def test_release_names():
    assert (
        len(BENCHMARK_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4 and len(set(ALL_CORRUPTIONS)) == 19
    )
    assert EXTRA_CORRUPTIONS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def test_cifar_c_loader_returns_the_severity_slice_and_labels(tmp_path: Path):
    folder = fake_cifar_c(tmp_path)
    for severity in (1, 3, 5):
        images, labels = load_cifar_c(folder, "fog", severity)
        assert images.dtype == torch.uint8 and images.shape == (PER_SEVERITY, 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == [7, 42, 99]
        assert images[:, 0, 5, 5].tolist() == [10 * severity + i for i in range(PER_SEVERITY)]
        assert images[:, 1, 0, 0].tolist() == [0] * PER_SEVERITY and images[:, 2, 0, 0].min() > 0
    images, _ = load_cifar_c(folder, "snow", 2)
    assert images[:, 0, 5, 5].tolist() == [21, 22, 23]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_cifar_c_missing_folder_file_and_wrong_shape_are_one_line_errors(tmp_path: Path):
    with pytest.raises(DatasetMissingError) as error:
        load_cifar_c(tmp_path / "nowhere", "fog", 1)
    assert "nowhere" in one_line(error) and "labels.npy" in one_line(error)
    folder = fake_cifar_c(tmp_path)
    with pytest.raises(DatasetMissingError) as error:
        load_cifar_c(folder, "frost", 1)
    assert "frost.npy" in one_line(error)
    np.save(folder / "frost.npy", np.zeros((5 * PER_SEVERITY, 32, 32), dtype=np.uint8))
    with pytest.raises(CorruptionSetLayoutError) as error:
        load_cifar_c(folder, "frost", 1)
    assert "frost.npy" in one_line(error) and "(15, 32, 32, 3)" in one_line(error)
    np.save(folder / "frost.npy", np.zeros((5 * PER_SEVERITY, 32, 32, 3), dtype=np.float32))
    with pytest.raises(CorruptionSetLayoutError, match="uint8"):
        load_cifar_c(folder, "frost", 1)
    np.save(folder / "labels.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(CorruptionSetLayoutError) as error:
        load_cifar_c(folder, "fog", 1)
    assert "labels.npy" in one_line(error) and "(5 n,)" in one_line(error)
    with pytest.raises(ValueError, match="unknown corruption"):
        load_cifar_c(folder, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        load_cifar_c(folder, "fog", 6)


def test_tiny_imagenet_c_loader(tmp_path: Path):
    root = tmp_path / "Tiny-ImageNet-C"
    colours = {"n01443537": (200, 0, 0), "n01629819": (0, 200, 0)}
    for wnid, colour in colours.items():
        folder = root / "fog" / "2" / wnid
        folder.mkdir(parents=True)
        for name in ("b.JPEG", "a.JPEG"):
            Image.new("RGB", (64, 64), colour).save(folder / name, quality=95)
    images, labels = load_tiny_imagenet_c(root, "fog", 2)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 64, 64)
    assert labels.tolist() == [0, 0, 1, 1]  # sorted wnids by default
    assert images[:2, 0].float().mean() > 150 and images[2:, 1].float().mean() > 150
    _, labels = load_tiny_imagenet_c(root, "fog", 2, {"n01443537": 17, "n01629819": 3})
    assert labels.tolist() == [17, 17, 3, 3]
    with pytest.raises(ValueError, match="n01629819"):
        load_tiny_imagenet_c(root, "fog", 2, {"n01443537": 0})
    with pytest.raises(DatasetMissingError) as error:
        load_tiny_imagenet_c(root, "fog", 3)
    assert "fog/3" in one_line(error)


def sample_images(size: int = 32, count: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    smooth = torch.rand(count, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)
    return (images * 200 + 20).round().to(torch.uint8)


@pytest.mark.parametrize(
    "corruption", ["gaussian_noise", "impulse_noise", "motion_blur", "glass_blur", "fog"]
)
def test_generated_corruptions_are_seeded_keep_dtype_and_shape_and_differ_across_severities(corruption):
    images = sample_images()
    first = generate_corruptions(images, corruption, 3, seed=11)
    assert first.source == "generated" and first.working_size == (32, 32)
    assert first.images.dtype == torch.uint8 and first.images.shape == images.shape
    assert torch.equal(first.images, generate_corruptions(images, corruption, 3, seed=11).images)
    assert not torch.equal(first.images, generate_corruptions(images, corruption, 5, seed=11).images)
    assert not torch.equal(first.images, images)
    # per-image seeds: changing image 0 leaves the results of the others as they were
    changed = images.clone()
    changed[0] = 255 - changed[0]
    assert torch.equal(first.images[1:], generate_corruptions(changed, corruption, 3, seed=11).images[1:])


def test_generated_noise_differs_across_seeds_and_leaves_the_global_rng_alone():
    images = sample_images()
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = generate_corruptions(images, "impulse_noise", 2, seed=1)
    assert np.random.random() == expected_next
    assert not torch.equal(first.images, generate_corruptions(images, "impulse_noise", 2, seed=2).images)


def assert_equal_to_direct_calls(package, images, corruption: str, severity: int, seed: int) -> None:
    """Each generated image equals ``package.corrupt`` on that image under the seed it was made with."""
    generated = generate_corruptions(images, corruption, severity, seed=seed).images
    for index in range(images.shape[0]):
        np.random.seed(corruption_seed(seed, corruption, severity, index))
        image = np.ascontiguousarray(images[index].permute(1, 2, 0).numpy())
        expected = package.corrupt(image, corruption_name=corruption, severity=severity)
        assert np.array_equal(generated[index].permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("corruption", ["gaussian_noise", "shot_noise", "motion_blur", "snow", "frost"])
def test_generated_equals_a_direct_imagecorruptions_call(corruption):
    import imagecorruptions

    assert_equal_to_direct_calls(imagecorruptions, sample_images(), corruption, severity=4, seed=5)


@pytest.mark.parametrize("corruption", ["glass_blur", "gaussian_blur", "fog"])
def test_adapted_functions_equal_the_package_with_the_removed_names_patched_back(corruption, monkeypatch):
    import imagecorruptions
    from imagecorruptions import corruptions as package
    from skimage.filters import gaussian

    def gaussian_with_multichannel(image, sigma, multichannel=False):
        return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None)

    monkeypatch.setattr(package, "gaussian", gaussian_with_multichannel)
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    assert_equal_to_direct_calls(imagecorruptions, sample_images(count=2), corruption, severity=2, seed=9)


def test_small_images_are_corrupted_at_32_px_and_come_back_at_their_size():
    images = sample_images(size=16, count=2)
    result = generate_corruptions(images, "zoom_blur", 3, seed=0)
    assert result.working_size == (32, 32) and result.images.shape == (2, 3, 16, 16)
    assert not torch.equal(result.images, images)
    # zoom blur is deterministic: the same as corrupting the 2x bilinear upsample and box-averaging back
    import imagecorruptions

    up = Image.fromarray(images[0].permute(1, 2, 0).numpy()).resize((32, 32), Image.BILINEAR)
    direct = imagecorruptions.corrupt(np.asarray(up), corruption_name="zoom_blur", severity=3)
    down = np.asarray(Image.fromarray(direct).resize((16, 16), Image.BOX))
    assert np.array_equal(result.images[0].permute(1, 2, 0).numpy(), down)


def test_generate_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        generate_corruptions(torch.rand(1, 3, 32, 32), "fog", 1, seed=0)


def test_missing_package_error_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_imagecorruptions(name, *args, **kwargs):
        if name == "imagecorruptions":
            raise ImportError("No module named 'imagecorruptions'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imagecorruptions)
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[eval\]"'):
        generate_corruptions(sample_images(count=1), "fog", 1, seed=0)


def test_mean_corruption_accuracy():
    results = {"fog": {1: 80.0, 2: 60.0}, "snow": {1: 50.0, 2: 30.0}}
    assert mean_corruption_accuracy(results) == pytest.approx(55.0)
    assert mean_corruption_accuracy({"fog": {s: 40.0 + s for s in range(1, 6)}}) == pytest.approx(43.0)
    with pytest.raises(ValueError, match="same severities"):
        mean_corruption_accuracy({"fog": {1: 80.0, 2: 60.0}, "snow": {1: 50.0}})
    with pytest.raises(ValueError, match="empty"):
        mean_corruption_accuracy({})
