"""Robustness to occlusion (../shared/reference/RECIPES.md, "Evaluation protocols"): top-1 accuracy when a
random fraction of an image's square patches is masked, for fractions 0%, 10%, ..., 100%.

This is the occlusion curve of the robustness figures of AdAutoMix (Qin et al., "Adversarial AutoMixup",
ICLR 2024) and SUMix (Qin et al., "SUMix: Mixup with Semantic and Uncertain Information", ECCV 2024).

**Grid.** An ``H x W`` image is cut into square patches of ``patch_size`` pixels (16 by default)::

    rows = ceil(H / patch_size)      cols = ceil(W / patch_size)      P = rows * cols

(the last row/column is narrower when the side is not a multiple of the patch).  **Small-image rule**: when
either side would hold fewer than ``min_patches_per_side`` patches (4 by default, i.e. an image under 64 px
with 16 px patches: CIFAR's 32 px, the 8-32 px digits), the image is divided into a
``min_patches_per_side x min_patches_per_side`` grid of near-equal cells instead (pixel ``y`` lies in row
``floor(y * rows / H)``; cell sides differ by at most one pixel), so that 10% steps still mask different
numbers of patches.  Pass ``min_patches_per_side=1`` for the literal 16 px patches at every size.

**Masks.** For a fraction ``f`` in [0, 1] every image gets exactly ``k = round(f * P)`` masked patches
(rounding half up), chosen uniformly without replacement: each image draws one random score per patch from a
``torch.Generator`` and the ``k`` lowest-scoring patches are masked.  The masks of one draw are therefore
*nested* across fractions (the patches masked at 10% are among those masked at 20%), ``f = 0`` masks
nothing and ``f = 1`` everything.  A masked pixel is set to ``fill`` in every channel::

    occluded = where(mask, fill, image)

**Fill.** The loaders yield normalised images ``(x - mean) / std``, so the default ``fill = 0`` is the
per-channel dataset mean (a grey patch), not black.  Pass another value (or one per channel) for images in
another space.

**Curve.** :func:`occlusion_accuracy` seeds one generator per evaluation and draws the patch scores once per
batch, shared by all fractions; the same seed, data order and batch size give the same patches for every
model.  Correct predictions are counted on the device and read once at the end.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mixbench.atomic import atomic_write

__all__ = [
    "DEFAULT_MIN_PATCHES_PER_SIDE",
    "DEFAULT_PATCH_SIZE",
    "OCCLUSION_FRACTIONS",
    "masked_patch_count",
    "occlude",
    "occlusion_accuracy",
    "occlusion_curve_png",
    "occlusion_grid",
    "occlusion_masks",
    "patch_index_map",
]

DEFAULT_PATCH_SIZE = 16
DEFAULT_MIN_PATCHES_PER_SIDE = 4
#: The protocol's fractions 0.0, 0.1, ..., 1.0 (each ``i / 10``, so the keys print as written).
OCCLUSION_FRACTIONS = tuple(step / 10 for step in range(11))
CURVE_DPI = 110


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def occlusion_grid(
    height: int,
    width: int,
    patch_size: int = DEFAULT_PATCH_SIZE,
    min_patches_per_side: int = DEFAULT_MIN_PATCHES_PER_SIDE,
) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid of an ``height x width`` image: ``ceil(side / patch_size)`` per
    side, or a ``min_patches_per_side``-square grid when either side would hold fewer patches than that."""
    for value, name in (
        (height, "height"),
        (width, "width"),
        (patch_size, "patch_size"),
        (min_patches_per_side, "min_patches_per_side"),
    ):
        _check_positive_int(value, name)
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if rows >= min_patches_per_side and cols >= min_patches_per_side:
        return rows, cols
    if height < min_patches_per_side or width < min_patches_per_side:
        raise ValueError(
            f"a {height}x{width} image cannot be divided into a {min_patches_per_side}x"
            f"{min_patches_per_side} grid; pass a smaller min_patches_per_side"
        )
    return min_patches_per_side, min_patches_per_side


def patch_index_map(
    height: int,
    width: int,
    patch_size: int = DEFAULT_PATCH_SIZE,
    min_patches_per_side: int = DEFAULT_MIN_PATCHES_PER_SIDE,
    device: torch.device | str | None = None,
) -> tuple[Tensor, int]:
    """The patch of every pixel, ``(H, W)`` int64 in ``[0, P)`` numbered row-major, and the count ``P``, for
    the grid of :func:`occlusion_grid` (square patches, or near-equal cells by the small-image rule)."""
    rows, cols = occlusion_grid(height, width, patch_size, min_patches_per_side)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    if rows == math.ceil(height / patch_size) and cols == math.ceil(width / patch_size):
        row_of_y, col_of_x = ys // patch_size, xs // patch_size
    else:
        row_of_y, col_of_x = ys * rows // height, xs * cols // width
    return row_of_y[:, None] * cols + col_of_x[None, :], rows * cols


def masked_patch_count(fraction: float, patch_count: int) -> int:
    """``round(fraction * patch_count)``, half up (a 1e-9 tolerance absorbs float error such as
    ``0.7 * 5 = 3.4999999999999996``)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    return min(patch_count, math.floor(fraction * patch_count + 0.5 + 1e-9))


def _patch_scores(batch: int, patch_count: int, generator: torch.Generator) -> Tensor:
    """One uniform score per patch and image, ``(batch, P)``, drawn from ``generator`` (on its device)."""
    return torch.rand(batch, patch_count, generator=generator, device=generator.device)


def _patch_ranks(scores: Tensor) -> Tensor:
    """The rank of each patch's score within its image, ``(batch, P)``: patch masked at k iff rank < k."""
    return scores.argsort(dim=1).argsort(dim=1)


def _pixel_masks(ranks: Tensor, masked_count: int, index_map: Tensor) -> Tensor:
    """``(batch, H, W)`` bool: the pixels of each image's ``masked_count`` lowest-ranked patches."""
    masked_patches = ranks < masked_count
    return masked_patches[:, index_map]


def occlusion_masks(
    batch: int,
    height: int,
    width: int,
    patch: int,
    fraction: float,
    generator: torch.Generator,
    *,
    min_patches_per_side: int = DEFAULT_MIN_PATCHES_PER_SIDE,
    device: torch.device | str | None = None,
) -> Tensor:
    """Patch-aligned occlusion masks, ``(batch, height, width)`` bool (True = masked), on ``device`` (the
    generator's device by default): each image has exactly ``round(fraction * P)`` masked patches of the
    grid of :func:`occlusion_grid`, chosen uniformly from the generator's draw."""
    _check_positive_int(batch, "batch")
    index_map, patch_count = patch_index_map(height, width, patch, min_patches_per_side)
    masked_count = masked_patch_count(fraction, patch_count)
    ranks = _patch_ranks(_patch_scores(batch, patch_count, generator))
    target = generator.device if device is None else torch.device(device)
    return _pixel_masks(ranks.to(target), masked_count, index_map.to(target))


def occlude(images: Tensor, mask: Tensor, fill: float | Sequence[float] | Tensor = 0.0) -> Tensor:
    """``where(mask, fill, images)`` for images ``(B, C, H, W)`` and a mask ``(B, H, W)`` (or ``(H, W)``),
    with ``fill`` one value or one per channel; returns a new tensor of the images' dtype and device."""
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    batch, channels, height, width = images.shape
    if mask.shape not in ((batch, height, width), (height, width)):
        raise ValueError(
            f"mask must have shape ({batch}, {height}, {width}) or ({height}, {width}) to match the images, "
            f"got {tuple(mask.shape)}"
        )
    fill_values = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill_values.dim() == 1 and fill_values.numel() == channels:
        fill_values = fill_values.view(channels, 1, 1)
    elif fill_values.dim() != 0:
        raise ValueError(
            f"fill must be one value or one per channel ({channels}), got shape {fill_values.shape}"
        )
    return torch.where(mask.to(images.device).unsqueeze(-3), fill_values, images)


@torch.no_grad()
def occlusion_accuracy(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    seed: int,
    fractions: Sequence[float] = OCCLUSION_FRACTIONS,
    patch_size: int = DEFAULT_PATCH_SIZE,
    fill: float | Sequence[float] | Tensor = 0.0,
    min_patches_per_side: int = DEFAULT_MIN_PATCHES_PER_SIDE,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[float, float]:
    """``{fraction: top-1 %}`` of ``model`` (in eval mode, restored after) over every ``(images, labels)``
    batch of ``loader`` with each fraction of the patches occluded (see the module docstring).

    The patch scores come from a CPU ``torch.Generator`` seeded with ``seed`` (one draw per batch, shared by
    all fractions), so every model evaluated with the same seed, data order and batch size sees the same
    masks.  ``autocast``: a context factory around the forward pass (e.g. ``Runtime.autocast``).  Correct
    counts stay on the device until the single read at the end.
    """
    if not fractions:
        raise ValueError("fractions is empty; pass e.g. OCCLUSION_FRACTIONS (0.0, 0.1, ..., 1.0)")
    for fraction in fractions:
        masked_patch_count(fraction, 1)  # validates the value
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    correct = None
    image_count = 0
    index_map = patch_count = None
    try:
        for images, labels in loader:
            batch, _, height, width = images.shape
            if correct is None:
                correct = torch.zeros(len(fractions), dtype=torch.int64, device=images.device)
            if index_map is None or index_map.shape != (height, width):
                index_map, patch_count = patch_index_map(
                    height, width, patch_size, min_patches_per_side, device=images.device
                )
            ranks = _patch_ranks(_patch_scores(batch, patch_count, generator)).to(images.device)
            for position, fraction in enumerate(fractions):
                mask = _pixel_masks(ranks, masked_patch_count(fraction, patch_count), index_map)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    logits = model(occlude(images, mask, fill))
                correct[position] += (logits.argmax(dim=1) == labels).sum()
            image_count += batch
    finally:
        model.train(was_training)
    if image_count == 0:
        raise ValueError("the occlusion loader is empty")
    counts = correct.tolist()
    return {
        float(fraction): 100.0 * count / image_count
        for fraction, count in zip(fractions, counts, strict=True)
    }


def occlusion_curve_png(
    curves: Mapping[str, Mapping[float, float]], path: str | Path, title: str = "Robustness to occlusion"
) -> Path:
    """Draw ``{label: {fraction: top-1 %}}`` as one line per label (fraction masked in % on x, top-1 % on y)
    and write it to ``path`` as a PNG, atomically (a temporary file beside it, then ``os.replace``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: importing the module needs none
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves is empty; pass {label: {fraction: top-1 %}}")
    figure = Figure(figsize=(5.5, 4), layout="constrained")
    axes = figure.subplots()
    for label, curve in curves.items():
        if not curve:
            raise ValueError(f"the curve of {label!r} is empty; pass {{fraction: top-1 %}}")
        fractions = sorted(curve)
        axes.plot([100 * f for f in fractions], [curve[f] for f in fractions], marker="o", label=str(label))
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_xlabel("patches masked (%)")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    FigureCanvasAgg(figure)
    path = Path(path)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=CURVE_DPI))
    return path
