"""OOD detection (mixbench.evaluation.ood): the metrics on hand-made scores with known answers, agreement with
independent brute-force computations on random scores, and the ODIN-layout image loader on generated files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixbench.data.base import CorruptImageError
from mixbench.evaluation.ood import (
    METRICS,
    OOD_SETS,
    OodSetMissingError,
    load_ood_images,
    max_softmax_scores,
    ood_image_files,
    ood_metrics,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------- hand-made scores


def test_perfect_separation_scores_every_metric_at_its_best() -> None:
    result = ood_metrics(np.array([0.9, 0.8, 0.95]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert tuple(result) == METRICS
    assert result == {
        "detection_accuracy": 1.0,
        "detection_accuracy_at_half": 1.0,
        "auroc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "fpr_at_95_tpr": 0.0,
    }
    assert all(type(value) is float for value in result.values())


def test_reversed_scores_keep_the_trivial_threshold() -> None:
    """OOD all above ID: every threshold between the sets errs more than ½, so the best is a t outside all
    scores (everything declared ID, or everything OOD), detection accuracy ½; AUROC 0; FPR@95 1."""
    result = ood_metrics(np.array([0.1, 0.2, 0.3]), np.array([0.7, 0.8]))
    assert result["detection_accuracy"] == 0.5
    assert result["auroc"] == 0.0
    assert result["fpr_at_95_tpr"] == 1.0
    assert result["detection_accuracy_at_half"] == 0.0


def test_identical_distributions_are_chance() -> None:
    """The same 40 distinct scores on both sides: every threshold errs ½, AUROC is ½, and FPR@95 equals the
    TPR reached, ceil(0.95 * 40) / 40 = 38 / 40."""
    scores = np.random.default_rng(0).permutation(np.linspace(0.01, 0.99, 40))
    result = ood_metrics(scores, scores[::-1].copy())
    assert result["auroc"] == pytest.approx(0.5, abs=1e-12)
    assert result["detection_accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert result["detection_accuracy_at_half"] == pytest.approx(0.5, abs=1e-12)
    assert result["fpr_at_95_tpr"] == pytest.approx(38 / 40, abs=1e-12)


def test_a_small_case_computed_by_hand() -> None:
    """ID {.55,.7,.8,.9,.95}, OOD {.3,.5,.6,.62}.
    Optimal t in (.62, .7]: ½[P_in(s<t) + P_out(s>=t)] = ½[1/5 + 0] = .1, so accuracy .9 (every other interval
    errs more: t <= .55 lets >= 3/4 OOD through at TPR 1, t in (.55, .6] gives ½[1/5 + 2/4], t > .7 loses
    >= 2/5 ID). At t = .5: ½[0/5 + 3/4] = .375, accuracy .625.
    FPR@95: TPR >= .95 of 5 ID needs all 5, t = .55, where .6 and .62 pass: 2/4.
    AUROC: pairs won by ID: .55 beats 2 of 4, the other four ID beat all 4: 18/20."""
    result = ood_metrics(np.array([0.55, 0.7, 0.8, 0.9, 0.95]), np.array([0.3, 0.5, 0.6, 0.62]))
    assert result["detection_accuracy"] == pytest.approx(0.9)
    assert result["detection_accuracy_at_half"] == pytest.approx(0.625)
    assert result["fpr_at_95_tpr"] == pytest.approx(0.5)
    assert result["auroc"] == pytest.approx(0.9)


def test_fpr_at_95_takes_the_first_roc_point_at_or_above_95_percent_without_interpolation() -> None:
    """With 20 ID scores, 19 detected is TPR exactly 0.95 and counts; with 10 ID, TPR jumps .9 -> 1, and the
    FPR is the one at TPR 1 (2/3), not an interpolation towards the FPR at TPR .9 (1/3)."""
    twenty = np.arange(1, 21) / 21  # t = 2/21 keeps 19 of 20
    assert ood_metrics(twenty, np.array([0.5, 1.5, 10.5]) / 21)["fpr_at_95_tpr"] == pytest.approx(1 / 3)
    ten = np.arange(1, 11) / 11  # t = 1/11 keeps all 10; t = 2/11 keeps 9
    assert ood_metrics(ten, np.array([0.5, 1.5, 5.5]) / 11)["fpr_at_95_tpr"] == pytest.approx(2 / 3)


def test_tensors_and_arrays_give_the_same_metrics_and_bad_input_is_refused() -> None:
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.random(30), rng.random(25) * 0.8
    assert ood_metrics(torch.from_numpy(id_scores), torch.from_numpy(ood_scores)) == ood_metrics(
        id_scores, ood_scores
    )
    with pytest.raises(ValueError, match="ood_scores must be a non-empty 1-D"):
        ood_metrics(id_scores, np.array([]))
    with pytest.raises(ValueError, match="id_scores must be a non-empty 1-D"):
        ood_metrics(id_scores.reshape(5, 6), ood_scores)
    with pytest.raises(ValueError, match="non-finite"):
        ood_metrics(np.array([0.5, np.nan]), ood_scores)


def test_max_softmax_scores() -> None:
    """MSP of [log 3, 0] is 3/4, of equal logits 1/K; adding a constant to a row changes nothing; float64
    keeps a 20-logit margin below 1 (float32 would round it to exactly 1)."""
    logits = torch.tensor([[math.log(3.0), 0.0, -math.inf], [2.0, 2.0, 2.0], [20.0, 0.0, 0.0]])
    scores = max_softmax_scores(logits)
    assert scores.dtype == torch.float64 and scores.shape == (3,)
    assert scores[:2].tolist() == pytest.approx([0.75, 1 / 3])
    assert scores[2] < 1.0
    assert torch.allclose(max_softmax_scores(logits[1:] + 7.0), scores[1:])
    with pytest.raises(ValueError, match="N x K"):
        max_softmax_scores(torch.zeros(4))


# ------------------------------------------------------------------------------ independent computations


def _random_scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping ID/OOD scores, rounded to 2 decimals so that ties within and across the sets occur."""
    rng = np.random.default_rng(seed)
    return np.round(rng.beta(4, 2, size=60), 2), np.round(rng.beta(2, 3, size=45), 2)


def _brute_average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """Step-wise AP: sum over the distinct positive scores v of (#positives at v / #positives) x precision
    at threshold v, precision = #positives >= v / #all >= v."""
    everything = np.concatenate([positive, negative])
    return sum(
        np.sum(positive == v) / positive.size * np.sum(positive >= v) / np.sum(everything >= v)
        for v in np.unique(positive)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_brute_force(seed: int) -> None:
    id_scores, ood_scores = _random_scores(seed)
    result = ood_metrics(id_scores, ood_scores)

    # AUROC as the Mann-Whitney pair count, ties counted one half
    greater = (id_scores[:, None] > ood_scores[None, :]).mean()
    ties = (id_scores[:, None] == ood_scores[None, :]).mean()
    assert result["auroc"] == pytest.approx(greater + 0.5 * ties, abs=1e-12)

    # detection accuracy over every midpoint between distinct scores, plus one below and one above them all
    values = np.unique(np.concatenate([id_scores, ood_scores]))
    thresholds = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1] + 1]])
    errors = [0.5 * (np.mean(id_scores < t) + np.mean(ood_scores >= t)) for t in thresholds]
    assert result["detection_accuracy"] == pytest.approx(1 - min(errors), abs=1e-12)

    # FPR@95 as the smallest FPR over thresholds that keep at least 95% of ID
    fprs = [np.mean(ood_scores >= t) for t in values if np.mean(id_scores >= t) >= 0.95]
    assert result["fpr_at_95_tpr"] == pytest.approx(min(fprs), abs=1e-12)

    # AUPR-In: ID positive on s; AUPR-Out: OOD positive on -s (ranking OOD first)
    assert result["aupr_in"] == pytest.approx(_brute_average_precision(id_scores, ood_scores), abs=1e-12)
    assert result["aupr_out"] == pytest.approx(_brute_average_precision(-ood_scores, -id_scores), abs=1e-12)
    # ... hence swapping the roles and negating the scores swaps AUPR-In and AUPR-Out
    swapped = ood_metrics(-ood_scores, -id_scores)
    assert swapped["aupr_in"] == pytest.approx(result["aupr_out"], abs=1e-12)
    assert swapped["aupr_out"] == pytest.approx(result["aupr_in"], abs=1e-12)
    assert swapped["auroc"] == pytest.approx(result["auroc"], abs=1e-12)


# ------------------------------------------------------------------------------------------ the loader

_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def _chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _write_odin_layout(root: Path) -> dict[str, list[Path]]:
    """A few small images per set in the layouts the ODIN archives extract to, listed in creation order
    which is not the sorted one; PNGs are solid colours (lossless), JPEGs are solid too."""
    layouts = {
        "lsun_crop": (root / "LSUN" / "test", ".jpg", (36, 36)),
        "isun": (root / "iSUN" / "iSUN_patches", ".jpeg", (44, 40)),
        "tinyimagenet_crop": (root / "Imagenet" / "test", ".jpg", (32, 32)),
    }
    written = {}
    for name, (folder, suffix, size) in layouts.items():
        folder.mkdir(parents=True)
        paths = []
        for index, stem in enumerate(["c", "a", "b"]):
            path = folder / f"{stem}{suffix}"
            Image.new("RGB", size, _COLOURS[index]).save(path, quality=95)
            paths.append(path)
        (folder / "readme.txt").write_text("not an image")
        written[name] = paths
    return written


def test_loader_reads_the_odin_layouts_sorted_resized_and_deterministic(tmp_path: Path) -> None:
    written = _write_odin_layout(tmp_path)
    for name, paths in written.items():
        assert ood_image_files(tmp_path, name) == sorted(paths)
        images = load_ood_images(tmp_path, name, 32)
        assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
        assert torch.equal(images, load_ood_images(tmp_path, name, 32))
        # sorted order a, b, c holds colours 1, 2, 0 (solid colours survive JPEG and resizing closely)
        means = images.double().mean(dim=(2, 3))
        expected = torch.tensor([_COLOURS[1], _COLOURS[2], _COLOURS[0]], dtype=torch.float64)
        assert torch.allclose(means, expected, atol=3)
    assert load_ood_images(tmp_path, "isun", (16, 24)).shape == (3, 3, 16, 24)
    assert set(OOD_SETS.values()) == {"LSUN", "iSUN", "Imagenet"}


def test_loader_resizes_with_pil_bilinear_and_reads_an_imagefolder_by_path(tmp_path: Path) -> None:
    """An ImageFolder tree (class subfolders, a greyscale PNG, a hidden ._ companion file that is skipped),
    given by absolute path and relative to the root; pixels equal PIL's own bilinear resize."""
    rng = np.random.default_rng(0)
    tree = tmp_path / "custom"
    (tree / "class_b").mkdir(parents=True)
    (tree / "class_a").mkdir()
    noise = Image.fromarray(rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8))
    noise.save(tree / "class_b" / "x.PNG")
    grey = Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8))
    grey.save(tree / "class_a" / "y.png")
    (tree / "class_a" / "._y.png").write_bytes(b"macOS resource fork, not a PNG")

    images = load_ood_images(tmp_path, tree, 10)
    assert images.shape == (2, 3, 10, 10)
    assert torch.equal(images, load_ood_images(tmp_path, "custom", 10))
    expected_grey = _chw(grey.convert("RGB").resize((10, 10), Image.Resampling.BILINEAR))
    expected_noise = _chw(noise.resize((10, 10), Image.Resampling.BILINEAR))
    assert torch.equal(images[0], expected_grey)
    assert torch.equal(images[1], expected_noise)
    assert torch.equal(load_ood_images(tmp_path, tree, (12, 20))[1], _chw(noise))


def test_a_missing_or_empty_set_is_one_line_naming_the_folder_and_the_layout(tmp_path: Path) -> None:
    with pytest.raises(OodSetMissingError) as missing:
        load_ood_images(tmp_path, "lsun_crop", 32)
    message = str(missing.value)
    assert "\n" not in message
    assert message.startswith(f"no images under {tmp_path / 'LSUN'} (the folder does not exist)")
    assert str(tmp_path / "LSUN" / "test" / "*.jpg") in message

    (tmp_path / "iSUN" / "iSUN_patches").mkdir(parents=True)
    (tmp_path / "iSUN" / "iSUN_patches" / "notes.txt").write_text("no image here")
    with pytest.raises(OodSetMissingError) as empty:
        load_ood_images(tmp_path, "isun", 32)
    message = str(empty.value)
    assert "\n" not in message and isinstance(empty.value, ValueError)
    assert message.startswith(f"no images under {tmp_path / 'iSUN'} (no .jpg/.jpeg/.png file")
    assert str(tmp_path / "iSUN" / "iSUN_patches" / "*.jpeg") in message

    with pytest.raises(OodSetMissingError, match="neither a known OOD set") as unknown:
        load_ood_images(tmp_path, "lsun", 32)
    assert "\n" not in str(unknown.value) and str(tmp_path / "lsun") in str(unknown.value)


def test_a_truncated_jpeg_is_one_line_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "Imagenet" / "test"
    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "a.jpg", quality=95)
    Image.fromarray(noise).save(folder / "b.jpg", quality=95)
    broken = folder / "b.jpg"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(CorruptImageError) as failure:
        load_ood_images(tmp_path, "tinyimagenet_crop", 32)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"image file {broken} cannot be decoded (")
