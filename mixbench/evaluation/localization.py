"""Weakly supervised object localisation (WSOL) from class activation maps: CAMs, CAM boxes, IoU, top-1 /
GT-known localisation and MaxBoxAcc-v2 (../shared/reference/RECIPES.md, "Evaluation protocols", WSOL on
CUB-200-2011 as in AlignMixup's Table 5).

**CAM** (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016). For the last
convolutional features ``F`` of shape ``(K, h, w)`` of a network whose head is global average pooling
followed by a linear classifier ``W`` of shape ``(num_classes, K)``, the map of class ``c`` is::

    M_c(y, x) = sum_k W[c, k] * F[k, y, x]

It is upsampled bilinearly (``align_corners=False``) to the image size and min-max normalised per image::

    S = (M - min M) / (max M - min M)        (S = 0 where M is constant, as in wsolevaluation)

The classifier bias only shifts ``M`` by a constant, which the normalisation removes; so does any positive
scale (wsolevaluation averages over ``k`` instead of summing).

**Conventions** (every function of this module):

* A box is ``(x0, y0, x1, y1)`` in integer pixel indices of the (resized) image, **both ends inclusive**:
  the box covers columns ``x0..x1`` and rows ``y0..y1``, so its area is ``(x1-x0+1)(y1-y0+1)``. This is the
  area convention of wsolevaluation's ``calculate_multiple_iou``. The empty box is :data:`EMPTY_BOX`
  ``(0, 0, -1, -1)`` (area 0, IoU 0 with everything); it is the box of a map with no pixel above threshold.
* A pixel is foreground at threshold ``t`` when ``S > t`` (strict), like the binary threshold
  (``cv2.THRESH_BINARY``) of wsolevaluation and of the CAM-derived box code. wsolevaluation also quantises
  ``S`` to ``uint8`` (``floor(255 S) > floor(255 t)``); we compare the float maps (in float64).
* Connected components are **8-connected** by default (``connectivity=4`` is available). wsolevaluation
  takes the outer contours of ``cv2.findContours``, whose border following treats foreground as 8-connected,
  so its components are the 8-connected ones; the original CAM release computes boxes with a compiled
  OpenCV program whose connectivity we have not checked.
* "Largest" component means the most pixels; ties go to the component met first in raster order.
  (wsolevaluation picks the contour of largest ``cv2.contourArea``, the polygon through the border pixel
  centres, which can rank thin components differently.)

**Scores.** ``IoU(A, B) = |A ∩ B| / |A ∪ B|`` in pixels. With ``b`` the box of the largest component of
``S > 0.15`` and ``G`` the image's ground-truth boxes:

* GT-known localisation: ``max_{g in G} IoU(b, g) >= 0.5``, with ``S`` the CAM of the ground-truth class;
* top-1 localisation: GT-known correct and the predicted class equals the label. Since the CAM of the
  predicted class *is* the CAM of the ground-truth class whenever the prediction is right, both scores are
  exact from the ground-truth-class CAMs alone (:class:`CamLocalization`).

**MaxBoxAcc** (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020; the
v2 metric is in their journal version, arXiv:2007.04178, and in the ``box_v2_metric`` of
github.com/clovaai/wsolevaluation)::

    BoxAcc(t, delta) = (1/N) sum_n 1[ max_{b in B_n(t), g in G_n} IoU(b, g) >= delta ]
    MaxBoxAcc(delta) = max_t BoxAcc(t, delta)
    MaxBoxAcc-v2     = mean over delta in {0.3, 0.5, 0.7} of MaxBoxAcc(delta)

where ``B_n(t)`` holds the box of every connected component of ``S_n > t`` (v2, ``multi_contour=True``) or
only the largest one (the CVPR version, delta = 0.5 alone). The CAM is that of the ground-truth class
(wsolevaluation's ``CAMComputer`` passes the targets). Thresholds ``t`` sweep ``np.arange(0, 1, interval)``:
the official code defaults to ``interval = 0.001`` (``cam_curve_interval`` in ``config.py`` and
``inference.py``) and its README's example call uses 0.01; we default to 0.01 (100 thresholds, ten times
cheaper; pass ``cam_threshold_sweep(0.001)`` for the official grid). Scores are fractions in [0, 1],
not percentages.

**Ground-truth boxes.** CUB-200-2011's ``bounding_boxes.txt`` gives ``(x, y, width, height)`` in original
pixels; :func:`cub_box_to_resized` maps them to the inclusive box of an image resized whole to ``S x S``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

EMPTY_BOX = (0, 0, -1, -1)
"""The box of an empty mask: ``x1 < x0`` gives it zero area, hence IoU 0 with every box."""

CAM_THRESHOLD = 0.15
"""The fixed CAM threshold of the top-1 localisation protocol (AlignMixup's Table 5)."""

IOU_THRESHOLD = 0.5
"""The IoU a box needs for top-1 / GT-known localisation."""

V2_IOU_THRESHOLDS = (0.3, 0.5, 0.7)
"""The IoU thresholds ``delta`` averaged by MaxBoxAcc-v2."""


# --------------------------------------------------------------------------------------------- CAMs


def minmax_normalize(cams: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of ``(B, H, W)`` maps to [0, 1]: ``(M - min M) / (max M - min M)``.

    A constant map becomes all zeros (wsolevaluation's ``normalize_scoremap``).
    """
    flat = cams.reshape(cams.shape[0], -1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (cams - low) / safe, torch.zeros_like(cams))


def compute_cams(
    features: torch.Tensor,
    fc_weight: torch.Tensor,
    class_idx: torch.Tensor,
    image_size: int | tuple[int, int] | None = None,
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Class activation maps (Zhou et al., CVPR 2016) of shape ``(B, H, W)``.

    ``M_b = sum_k W[c_b, k] F_b[k]`` for features ``F`` of shape ``(B, K, h, w)`` (the last conv layer,
    before global average pooling), classifier weight ``W`` of shape ``(num_classes, K)`` and one class
    ``c_b`` per image: the label for :class:`CamLocalization` and :class:`MaxBoxAcc` (which take
    ground-truth-class maps and get top-1 localisation from the predictions), or the prediction
    (``logits.argmax(1)``) to see what the model localises. With ``image_size`` (``S`` or ``(H, W)``) the maps
    are upsampled bilinearly (``align_corners=False``); with ``normalize`` each map is then min-max normalised
    to [0, 1]. Computed in float32 whatever the features' dtype (e.g. under autocast).
    """
    if features.ndim != 4:
        raise ValueError(f"features must be (B, K, h, w), got shape {tuple(features.shape)}")
    if fc_weight.ndim != 2 or fc_weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"fc_weight must be (num_classes, {features.shape[1]}), got shape {tuple(fc_weight.shape)}"
        )
    class_idx = torch.as_tensor(class_idx, device=features.device).long().reshape(-1)
    if class_idx.numel() != features.shape[0]:
        raise ValueError(f"need one class per image: {class_idx.numel()} for {features.shape[0]} images")
    weights = fc_weight[class_idx].float()  # (B, K)
    cams = torch.einsum("bk,bkhw->bhw", weights, features.float())
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        cams = F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalize(cams) if normalize else cams


# --------------------------------------------------------------------------------------------- boxes


def box_iou(boxes_a, boxes_b) -> np.ndarray:
    """IoU matrix ``(N, M)`` of inclusive pixel boxes ``(x0, y0, x1, y1)``.

    ``area = max(0, x1 - x0 + 1) * max(0, y1 - y0 + 1)``; the intersection is the same formula applied to
    ``(max x0, max y0, min x1, min y1)``; ``IoU = inter / (area_a + area_b - inter)``, and 0 when the union
    is empty (two empty boxes).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)

    def extent(lo, hi):
        return np.clip(hi - lo + 1, 0, None)

    area_a = extent(a[:, 0], a[:, 2]) * extent(a[:, 1], a[:, 3])
    area_b = extent(b[:, 0], b[:, 2]) * extent(b[:, 1], b[:, 3])
    inter_w = extent(np.maximum(a[:, None, 0], b[None, :, 0]), np.minimum(a[:, None, 2], b[None, :, 2]))
    inter_h = extent(np.maximum(a[:, None, 1], b[None, :, 1]), np.minimum(a[:, None, 3], b[None, :, 3]))
    inter = inter_w * inter_h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _structure(connectivity: int) -> np.ndarray:
    """A 3-D structuring element joining pixels within each 2-D slice of a stack, never across slices."""
    if connectivity == 8:
        plane = np.ones((3, 3), dtype=bool)
    elif connectivity == 4:
        plane = ndimage.generate_binary_structure(2, 1)
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane
    return structure


def _stack_component_boxes(
    masks: np.ndarray, connectivity: int, with_areas: bool = True
) -> tuple[np.ndarray, ...]:
    """Connected components of every 2-D mask of a ``(N, H, W)`` stack, labelled in one call.

    Returns ``boxes (n, 4)`` (inclusive), ``owner (n,)`` (the mask each component lies in) and
    ``areas (n,)`` (pixels; ``None`` unless ``with_areas``), components in scipy's label order: masks in
    order, and within a mask the raster order of each component's first pixel.
    """
    labels, count = ndimage.label(masks, structure=_structure(connectivity))
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros((0, 4), dtype=np.int64), empty, empty
    spans = np.array(
        [
            (s[0].start, s[2].start, s[1].start, s[2].stop - 1, s[1].stop - 1)
            for s in ndimage.find_objects(labels)
        ],
        dtype=np.int64,
    )
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:] if with_areas else None
    return spans[:, 1:], spans[:, 0], areas


def _largest_per_owner(boxes: np.ndarray, owner: np.ndarray, areas: np.ndarray, n: int) -> np.ndarray:
    """``(n, 4)``: for each mask, the box of its largest component (first in label order on ties)."""
    out = np.tile(np.asarray(EMPTY_BOX, dtype=np.int64), (n, 1))
    if len(boxes):
        order = np.lexsort((np.arange(len(areas)), -areas, owner))  # by owner, area desc., label order
        first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        out[owner[first]] = boxes[first]
    return out


def component_boxes(mask, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(n, 4)`` and pixel counts ``(n,)`` of the connected components of a 2-D boolean mask, in raster
    order of each component's first pixel."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    boxes, _, areas = _stack_component_boxes(mask[None], connectivity)
    return boxes, areas


def largest_component_box(mask, connectivity: int = 8) -> np.ndarray:
    """Tight inclusive box ``(x0, y0, x1, y1)`` of the largest connected component of a 2-D mask;
    :data:`EMPTY_BOX` when the mask is empty."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    boxes, owner, areas = _stack_component_boxes(mask[None], connectivity)
    return _largest_per_owner(boxes, owner, areas, 1)[0]


def _scoremaps(cams) -> np.ndarray:
    """``(B, H, W)`` float64 maps in [0, 1] from a tensor or an array; refuses anything else."""
    if isinstance(cams, torch.Tensor):
        cams = cams.detach().to("cpu", torch.float64).numpy()
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim != 3:
        raise ValueError(f"CAMs must be (B, H, W), got shape {cams.shape}")
    if not np.isfinite(cams).all() or cams.min(initial=0.0) < 0 or cams.max(initial=0.0) > 1:
        raise ValueError("CAMs must be finite and normalised to [0, 1] (see minmax_normalize)")
    return cams


def cam_boxes(cams, threshold: float = CAM_THRESHOLD, connectivity: int = 8) -> np.ndarray:
    """``(B, 4)`` boxes: for each normalised map of ``(B, H, W)`` cams, the box of the largest connected
    component of ``S > threshold`` (:data:`EMPTY_BOX` if no pixel exceeds it)."""
    maps = _scoremaps(cams)
    boxes, owner, areas = _stack_component_boxes(maps > threshold, connectivity)
    return _largest_per_owner(boxes, owner, areas, len(maps))


def _gt_list(gt_boxes: Sequence, n: int) -> list[np.ndarray]:
    if len(gt_boxes) != n:
        raise ValueError(f"need the ground-truth boxes of each image: {len(gt_boxes)} lists for {n} maps")
    out = [np.asarray(g, dtype=np.float64).reshape(-1, 4) for g in gt_boxes]
    if any(len(g) == 0 for g in out):
        raise ValueError("every image needs at least one ground-truth box")
    return out


def best_iou(boxes, gt_boxes: Sequence) -> np.ndarray:
    """``(B,)``: for each image ``b``, ``max_g IoU(boxes[b], g)`` over its ground-truth boxes ``gt_boxes[b]``
    (each an array ``(n_b, 4)`` or one box)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    gts = _gt_list(gt_boxes, len(boxes))
    return np.array([box_iou(box, gt).max() for box, gt in zip(boxes, gts, strict=True)], dtype=np.float64)


def cub_box_to_resized(box_xywh, image_size: tuple[float, float], size: int) -> np.ndarray:
    """CUB ``(x, y, width, height)`` in original pixels -> inclusive ``(x0, y0, x1, y1)`` after resizing the
    whole ``image_size = (width, height)`` image to ``size x size``. Accepts one box or ``(n, 4)``.

    Rule: the annotation is the continuous rectangle ``[x, x + w) x [y, y + h)`` (pixel ``i`` spans
    ``[i, i + 1)``); scaled by ``sx = size / width``, ``sy = size / height`` it becomes
    ``[x sx, (x + w) sx)`` horizontally, and the box is the pixels it touches::

        x0 = floor(x sx),  x1 = ceil((x + w) sx) - 1,  y0 = floor(y sy),  y1 = ceil((y + h) sy) - 1

    clipped to ``[0, size - 1]``. (wsolevaluation stores ``(x, y, x + w, y + h)`` and truncates each scaled
    coordinate with ``int()``; its ``x1`` is the same or one pixel larger.)
    """
    boxes = np.asarray(box_xywh, dtype=np.float64)
    single = boxes.ndim == 1
    boxes = boxes.reshape(-1, 4)
    width, height = (float(v) for v in image_size)
    if width <= 0 or height <= 0 or size < 1:
        raise ValueError(f"image_size and size must be positive, got {image_size} and {size}")
    x, y, w, h = boxes.T
    eps = 1e-9  # a product that should be an integer must not floor/ceil to its neighbour
    x0 = np.floor(x * size / width + eps)
    y0 = np.floor(y * size / height + eps)
    x1 = np.ceil((x + w) * size / width - eps) - 1
    y1 = np.ceil((y + h) * size / height - eps) - 1
    out = np.clip(np.stack([x0, y0, x1, y1], axis=1), 0, size - 1).astype(np.int64)
    return out[0] if single else out


# --------------------------------------------------------------------------------------------- scores


class CamLocalization:
    """Top-1 and GT-known localisation at one CAM threshold, accumulated over batches.

    ``update(cams, gt_boxes, preds, targets)`` takes the normalised CAMs of the **ground-truth** class
    ``(B, H, W)``, each image's ground-truth boxes (inclusive, in CAM pixels), the predicted classes and the
    labels. An image is GT-known correct when the box of the largest component of ``S > cam_threshold``
    has IoU ``>= iou_threshold`` with one of its boxes, and top-1 correct when, in addition, the prediction
    is right (then the predicted-class CAM is the ground-truth-class CAM). ``compute()`` returns the
    fractions ``top1_loc`` and ``gt_known_loc`` and the image ``count``.
    """

    def __init__(
        self,
        cam_threshold: float = CAM_THRESHOLD,
        iou_threshold: float = IOU_THRESHOLD,
        connectivity: int = 8,
    ) -> None:
        self.cam_threshold = float(cam_threshold)
        self.iou_threshold = float(iou_threshold)
        self.connectivity = connectivity
        self.count = 0
        self.top1_correct = 0
        self.gt_known_correct = 0

    def update(self, cams, gt_boxes: Sequence, preds, targets) -> np.ndarray:
        """Accumulate one batch; returns its per-image best IoU ``(B,)``."""
        boxes = cam_boxes(cams, self.cam_threshold, self.connectivity)
        ious = best_iou(boxes, gt_boxes)
        preds = np.asarray(torch.as_tensor(preds).cpu()).reshape(-1)
        targets = np.asarray(torch.as_tensor(targets).cpu()).reshape(-1)
        if len(preds) != len(ious) or len(targets) != len(ious):
            raise ValueError(f"need one prediction and one label per map ({len(ious)} maps)")
        located = ious >= self.iou_threshold
        self.count += len(ious)
        self.gt_known_correct += int(located.sum())
        self.top1_correct += int((located & (preds == targets)).sum())
        return ious

    def compute(self) -> dict[str, float | int]:
        if self.count == 0:
            raise ValueError("no image was accumulated")
        return {
            "top1_loc": self.top1_correct / self.count,
            "gt_known_loc": self.gt_known_correct / self.count,
            "count": self.count,
        }


def cam_threshold_sweep(interval: float = 0.01) -> np.ndarray:
    """The threshold sweep ``np.arange(0, 1, interval)`` (wsolevaluation; its default interval is 0.001)."""
    return np.arange(0, 1, interval)


class MaxBoxAcc:
    """BoxAcc over a CAM-threshold sweep, MaxBoxAcc per IoU threshold and MaxBoxAcc-v2, accumulated over
    batches (Choe et al., CVPR 2020 and arXiv:2007.04178; equations in the module docstring).

    ``update(cams, gt_boxes)`` takes normalised ground-truth-class CAMs ``(B, H, W)`` and each image's
    ground-truth boxes. For every threshold ``t`` the boxes are those of all connected components of
    ``S > t`` (``multi_contour=True``, v2) or of the largest one only; an image is correct at ``(t, delta)``
    when its best IoU over (component boxes x ground-truth boxes) is ``>= delta``; a threshold that leaves
    no foreground counts as wrong.

    ``compute()`` returns ``box_acc`` (array ``(len(iou_thresholds), len(cam_thresholds))``),
    ``max_box_acc`` and ``best_threshold`` (dicts keyed by ``delta``; the smallest best threshold on ties),
    ``max_box_acc_v2`` (the mean of ``max_box_acc``) and ``count``; accuracies are fractions.
    """

    def __init__(
        self,
        cam_thresholds: Sequence[float] | np.ndarray | None = None,
        iou_thresholds: Sequence[float] = V2_IOU_THRESHOLDS,
        multi_contour: bool = True,
        connectivity: int = 8,
    ) -> None:
        thresholds = cam_threshold_sweep() if cam_thresholds is None else cam_thresholds
        self.cam_thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
        if not len(self.cam_thresholds) or not len(self.iou_thresholds):
            raise ValueError("need at least one CAM threshold and one IoU threshold")
        self.multi_contour = multi_contour
        self.connectivity = connectivity
        self.count = 0
        self.num_correct = np.zeros((len(self.iou_thresholds), len(self.cam_thresholds)), dtype=np.int64)

    def best_ious(self, cam: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """``(T,)``: one map's best IoU at each threshold (0 where nothing exceeds the threshold)."""
        masks = cam[None] > self.cam_thresholds[:, None, None]  # (T, H, W)
        boxes, owner, areas = _stack_component_boxes(masks, self.connectivity, not self.multi_contour)
        best = np.zeros(len(self.cam_thresholds))
        if not self.multi_contour:
            boxes = _largest_per_owner(boxes, owner, areas, len(self.cam_thresholds))
            owner = np.arange(len(self.cam_thresholds))
        if len(boxes):
            np.maximum.at(best, owner, box_iou(boxes, gt).max(axis=1))
        return best

    def update(self, cams, gt_boxes: Sequence) -> np.ndarray:
        """Accumulate one batch; returns its best IoUs ``(B, T)``."""
        maps = _scoremaps(cams)
        gts = _gt_list(gt_boxes, len(maps))
        ious = np.stack([self.best_ious(cam, gt) for cam, gt in zip(maps, gts, strict=True)])
        self.num_correct += (ious[None] >= self.iou_thresholds[:, None, None]).sum(axis=1)
        self.count += len(maps)
        return ious

    def compute(self) -> dict:
        if self.count == 0:
            raise ValueError("no image was accumulated")
        box_acc = self.num_correct / self.count
        best = box_acc.argmax(axis=1)
        deltas = [float(d) for d in self.iou_thresholds]
        max_box_acc = {d: float(box_acc[i, best[i]]) for i, d in enumerate(deltas)}
        return {
            "box_acc": box_acc,
            "max_box_acc": max_box_acc,
            "best_threshold": {d: float(self.cam_thresholds[best[i]]) for i, d in enumerate(deltas)},
            "max_box_acc_v2": float(np.mean(list(max_box_acc.values()))),
            "count": self.count,
        }


__all__ = [
    "CAM_THRESHOLD",
    "EMPTY_BOX",
    "IOU_THRESHOLD",
    "V2_IOU_THRESHOLDS",
    "CamLocalization",
    "MaxBoxAcc",
    "best_iou",
    "box_iou",
    "cam_boxes",
    "cam_threshold_sweep",
    "component_boxes",
    "compute_cams",
    "cub_box_to_resized",
    "largest_component_box",
    "minmax_normalize",
]
