"""WSOL scores (mixbench.evaluation.localization) on hand-computed cases: inclusive-box IoU, CAMs of a tiny
feature map, largest / all connected components, top-1 vs GT-known localisation, BoxAcc and MaxBoxAcc-v2
over a threshold sweep, and the CUB (x, y, w, h) -> resized-box rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixbench.evaluation.localization import (
    EMPTY_BOX,
    CamLocalization,
    MaxBoxAcc,
    best_iou,
    box_iou,
    cam_boxes,
    cam_threshold_sweep,
    component_boxes,
    compute_cams,
    cub_box_to_resized,
    largest_component_box,
    minmax_normalize,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------------------ IoU


def test_iou_identical_disjoint_and_half_overlap():
    box = [2, 3, 5, 7]
    assert box_iou(box, box)[0, 0] == 1.0
    assert box_iou([0, 0, 1, 1], [3, 3, 4, 4])[0, 0] == 0.0
    # B is A shifted right by half its width: 4x4 boxes sharing columns 2..3 -> 8 / (16 + 16 - 8)
    assert box_iou([0, 0, 3, 3], [2, 0, 5, 3])[0, 0] == pytest.approx(1 / 3)
    # A is the top half of B: 8 / 16
    assert box_iou([0, 0, 3, 1], [0, 0, 3, 3])[0, 0] == 0.5


def test_iou_counts_both_ends_inclusive():
    """x1 is the last pixel: boxes sharing one column overlap, boxes on adjacent columns do not."""
    # columns 0..1 and 1..2, rows 0..1: the shared column x = 1 holds 2 pixels; areas 4 and 4
    assert box_iou([0, 0, 1, 1], [1, 0, 2, 1])[0, 0] == pytest.approx(2 / 6)
    assert box_iou([0, 0, 1, 1], [2, 0, 3, 1])[0, 0] == 0.0
    # a one-pixel box has area 1 (an exclusive convention would give it 0)
    assert box_iou([4, 4, 4, 4], [4, 4, 5, 5])[0, 0] == pytest.approx(1 / 4)


def test_iou_matrix_shape_and_empty_box():
    ious = box_iou([[0, 0, 3, 3], EMPTY_BOX], [[0, 0, 3, 3], [0, 0, 1, 1], EMPTY_BOX])
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious, [[1.0, 4 / 16, 0.0], [0.0, 0.0, 0.0]])
    # the best IoU over an image's boxes
    np.testing.assert_allclose(best_iou([[0, 0, 3, 3]], [[[9, 9, 9, 9], [0, 0, 3, 1]]]), [0.5])


# ------------------------------------------------------------------------------------------------ CAM


def tiny_features() -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 2.0]]]])  # (1, K=2, 2, 2)
    weight = torch.tensor([[1.0, 1.0], [2.0, -1.0], [0.0, 5.0]])  # (3 classes, K=2)
    return features, weight


def test_cam_is_the_class_weighted_sum_of_the_features_then_min_max_normalised():
    features, weight = tiny_features()
    # class 1: 2 * F0 - F1 = [[2, 3], [6, 6]]
    raw = compute_cams(features, weight, torch.tensor([1]), normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[2.0, 3.0], [6.0, 6.0]]]))
    cam = compute_cams(features, weight, torch.tensor([1]))
    torch.testing.assert_close(cam, torch.tensor([[[0.0, 0.25], [1.0, 1.0]]]))
    # class 2 of the same image, in a batch with class 1: 5 * F1 = [[0, 5], [0, 10]]
    both = compute_cams(features.expand(2, -1, -1, -1), weight, torch.tensor([2, 1]))
    torch.testing.assert_close(both[0], torch.tensor([[0.0, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(both[1], cam[0])


def test_cam_upsampling_is_bilinear_without_aligned_corners():
    """2x2 -> 4x4 with align_corners=False samples the source at 0, 1/4, 3/4, 1 (edges clamped)."""
    features, weight = tiny_features()
    cam = compute_cams(features, weight, torch.tensor([1]), image_size=4)
    row0 = [2.0, 2.25, 2.75, 3.0]  # raw row [2, 3]
    row3 = [6.0, 6.0, 6.0, 6.0]  # raw row [6, 6]
    rows = [row0, [0.75 * a + 0.25 * b for a, b in zip(row0, row3, strict=True)]]
    rows += [[0.25 * a + 0.75 * b for a, b in zip(row0, row3, strict=True)], row3]
    expected = (torch.tensor(rows) - 2.0) / 4.0
    torch.testing.assert_close(cam[0], expected)


def test_constant_map_normalises_to_zeros():
    cams = torch.stack([torch.full((3, 3), 7.0), torch.arange(9.0).reshape(3, 3)])
    out = minmax_normalize(cams)
    assert torch.equal(out[0], torch.zeros(3, 3))
    torch.testing.assert_close(out[1], torch.arange(9.0).reshape(3, 3) / 8)


# ------------------------------------------------------------------------------------------------ boxes


def two_blobs() -> np.ndarray:
    """A 10 x 12 map: blob A (value 1) is an L of 8 pixels, box (1, 1, 5, 4), plus one pixel at (x=6, y=5)
    touching it only diagonally; blob B (value 0.5) is the 3 x 2 rectangle (8, 7, 10, 8), 6 pixels."""
    cam = np.zeros((10, 12))
    cam[1:5, 1] = 1.0  # rows 1..4 of column 1
    cam[4, 1:6] = 1.0  # row 4, columns 1..5
    cam[5, 6] = 1.0  # diagonal neighbour of (x=5, y=4)
    cam[7:9, 8:11] = 0.5
    return cam


def test_largest_component_is_the_bigger_blob_with_8_connectivity():
    mask = two_blobs() > 0.15
    assert tuple(largest_component_box(mask)) == (1, 1, 6, 5)  # the diagonal pixel joins A
    boxes, areas = component_boxes(mask)
    assert boxes.tolist() == [[1, 1, 6, 5], [8, 7, 10, 8]] and areas.tolist() == [9, 6]
    # 4-connectivity splits the diagonal pixel off: A is then (1, 1, 5, 4), still the largest
    assert tuple(largest_component_box(mask, connectivity=4)) == (1, 1, 5, 4)
    boxes4, areas4 = component_boxes(mask, connectivity=4)
    assert boxes4.tolist() == [[1, 1, 5, 4], [6, 5, 6, 5], [8, 7, 10, 8]] and areas4.tolist() == [8, 1, 6]


def test_cam_boxes_threshold_is_strict_and_empty_maps_give_the_empty_box():
    cams = np.stack([two_blobs(), two_blobs()[::-1, ::-1].copy(), np.zeros((10, 12))])
    boxes = cam_boxes(cams, threshold=0.15)
    # the flipped map's largest blob is A mirrored: x -> 11 - x, y -> 9 - y
    assert boxes.tolist() == [[1, 1, 6, 5], [5, 4, 10, 8], list(EMPTY_BOX)]
    single = np.zeros((1, 6, 6))
    single[0, 2:4, 1:5] = 0.5
    assert cam_boxes(single, threshold=0.5).tolist() == [list(EMPTY_BOX)]  # 0.5 is not > 0.5
    assert cam_boxes(single, threshold=0.49).tolist() == [[1, 2, 4, 3]]
    assert cam_boxes(torch.from_numpy(single), threshold=0.49).tolist() == [[1, 2, 4, 3]]


def test_maxboxacc_v2_sees_every_component_and_v1_only_the_largest():
    cams = two_blobs()[None]
    gt = [np.array([[8, 7, 10, 8]])]  # exactly the smaller blob
    v2 = MaxBoxAcc(cam_thresholds=[0.15], iou_thresholds=[0.3, 0.5, 0.7])
    np.testing.assert_allclose(v2.update(cams, gt), [[1.0]])
    assert v2.compute()["max_box_acc_v2"] == 1.0
    v1 = MaxBoxAcc(cam_thresholds=[0.15], iou_thresholds=[0.3, 0.5, 0.7], multi_contour=False)
    np.testing.assert_allclose(v1.update(cams, gt), [[0.0]])
    assert v1.compute()["max_box_acc_v2"] == 0.0


# ------------------------------------------------------------------------------------------------ scores


def test_top1_needs_the_right_class_gt_known_does_not():
    def blob(x0, y0, x1, y1):
        cam = np.zeros((8, 8))
        cam[y0 : y1 + 1, x0 : x1 + 1] = 1.0
        return cam

    cams = np.stack([blob(2, 2, 5, 5), blob(2, 2, 5, 5), blob(0, 0, 3, 1), blob(0, 0, 3, 0)])
    gts = [[[2, 2, 5, 5]], [[2, 2, 5, 5]], [[0, 0, 3, 3]], [[0, 0, 3, 3]]]
    preds, targets = torch.tensor([3, 7, 1, 2]), torch.tensor([3, 4, 1, 2])
    meter = CamLocalization()
    # IoUs 1, 1, 8/16 (exactly the threshold: counts), 4/16
    np.testing.assert_allclose(meter.update(cams[:2], gts[:2], preds[:2], targets[:2]), [1.0, 1.0])
    np.testing.assert_allclose(meter.update(cams[2:], gts[2:], preds[2:], targets[2:]), [0.5, 0.25])
    # image 2 is localised but misclassified: GT-known counts it, top-1 does not
    assert meter.compute() == {"top1_loc": 2 / 4, "gt_known_loc": 3 / 4, "count": 4}


def pyramid() -> np.ndarray:
    """Nested squares on 10 x 10: (1,1,8,8) at 0.3, (3,3,6,6) at 0.6, (4,4,5,5) at 1.0 (64, 16, 4 pixels)."""
    cam = np.zeros((10, 10))
    cam[1:9, 1:9] = 0.3
    cam[3:7, 3:7] = 0.6
    cam[4:6, 4:6] = 1.0
    return cam


def test_threshold_sweep_gives_the_hand_computed_boxacc_and_maxboxacc_v2():
    """Thresholds 0.1 / 0.5 / 0.8 cut the pyramid to boxes of 64 / 16 / 4 pixels.

    image 1, GT (3,3,6,6):  IoU 16/64 = .25,  1,            4/16 = .25
    image 2, GT (2,2,7,7):  IoU 36/64 = .5625, 16/36 = .444, 4/36 = .111
    image 3, an all-zero map (no foreground at any threshold): IoU 0, 0, 0
    """
    meter = MaxBoxAcc(cam_thresholds=[0.1, 0.5, 0.8], iou_thresholds=[0.3, 0.5, 0.7])
    ious = meter.update(np.stack([pyramid(), pyramid()]), [[[3, 3, 6, 6]], [[2, 2, 7, 7]]])
    np.testing.assert_allclose(ious, [[0.25, 1.0, 0.25], [36 / 64, 16 / 36, 4 / 36]])
    meter.update(torch.zeros(1, 10, 10), [np.array([[0, 0, 9, 9]])])  # a second batch
    result = meter.compute()
    assert result["count"] == 3
    expected = np.array([[1, 2, 0], [1, 1, 0], [0, 1, 0]]) / 3  # rows delta .3 / .5 / .7, columns t
    np.testing.assert_allclose(result["box_acc"], expected)
    assert result["max_box_acc"] == pytest.approx({0.3: 2 / 3, 0.5: 1 / 3, 0.7: 1 / 3})
    assert result["best_threshold"] == {0.3: 0.5, 0.5: 0.1, 0.7: 0.5}  # ties: the smallest threshold
    assert result["max_box_acc_v2"] == pytest.approx(4 / 9)


def test_default_sweep_and_refusals():
    sweep = cam_threshold_sweep()
    assert len(sweep) == 100 and sweep[0] == 0.0 and sweep[-1] == pytest.approx(0.99)
    assert len(cam_threshold_sweep(0.001)) == 1000
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MaxBoxAcc().update(np.full((1, 4, 4), 2.0), [[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="ground-truth boxes of each image"):
        best_iou(np.zeros((2, 4)), [[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="no image"):
        CamLocalization().compute()


# ------------------------------------------------------------------------------------------------ CUB


def test_cub_box_conversion_to_a_resized_image():
    # CUB image 1 (500 x 335), box x=60 y=27 w=325 h=304, resized to 224 x 224:
    # x: 60 * 224/500 = 26.88 -> 26;  385 * 224/500 = 172.48 -> ceil - 1 = 172
    # y: 27 * 224/335 = 18.05 -> 18;  331 * 224/335 = 221.33 -> ceil - 1 = 221
    assert cub_box_to_resized([60.0, 27.0, 325.0, 304.0], (500, 335), 224).tolist() == [26, 18, 172, 221]
    # exact halving: columns 2..7 of 448 become 1..3 of 224, rows 4..13 become 2..6
    assert cub_box_to_resized([2, 4, 6, 10], (448, 448), 224).tolist() == [1, 2, 3, 6]
    # no resize: (x, y, w, h) -> (x, y, x + w - 1, y + h - 1); the whole image; clipping at the border
    boxes = cub_box_to_resized([[3, 4, 5, 6], [0, 0, 10, 10], [8, 8, 5, 5]], (10, 10), 10)
    assert boxes.tolist() == [[3, 4, 7, 9], [0, 0, 9, 9], [8, 8, 9, 9]]
    # the whole-image box of any size maps to the whole resized image
    assert cub_box_to_resized([0, 0, 500, 335], (500, 335), 224).tolist() == [0, 0, 223, 223]
