"""Out-of-distribution detection with the maximum softmax probability, and the OOD sets on disk.

Protocol (../shared/reference/RECIPES.md, "Evaluation protocols"; AlignMixup, Venkataramanan et al.,
CVPR 2022, Table 4): the baseline of Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples" (ICLR 2017). A classifier scores every image by its maximum softmax probability

    s(x) = max_k softmax(z(x))_k = 1 / sum_j exp(z_j(x) - max_k z_k(x)),

in-distribution (ID) images are the positive class, and a threshold t declares ``s >= t`` in-distribution.
With ``P_in`` and ``P_out`` the empirical distributions of the ID and OOD scores, :func:`ood_metrics` reports,
all as fractions in [0, 1] (not percentages):

* ``detection_accuracy`` = 1 - min_t ½[P_in(s < t) + P_out(s >= t)], minimised over every real t;
* ``detection_accuracy_at_half``: the same quantity at the fixed threshold t = 0.5 (AlignMixup's);
* ``auroc``: area under the ROC curve, ID positive (``sklearn.metrics.roc_auc_score``);
* ``aupr_in``: average precision with ID positive and score s; ``aupr_out``: OOD positive and score -s
  (``sklearn.metrics.average_precision_score``, the step-wise sum ``sum_k (R_k - R_{k-1}) P_k``, not a
  trapezoid);
* ``fpr_at_95_tpr``: P_out(s >= t*) at the largest threshold t* with P_in(s >= t*) >= 0.95, i.e. the smallest
  false-positive rate on ``sklearn.metrics.roc_curve`` whose true-positive rate is at least 0.95; no
  interpolation between ROC points (ODIN's script instead averages the FPRs of its threshold sweep whose
  TPR lies in [0.9495, 0.9505]).

The OOD sets are those of the ODIN release (Liang, Li & Srikant, "Enhancing the Reliability of
Out-of-distribution Image Detection in Neural Networks", ICLR 2018; github.com/facebookresearch/odin): one
folder of images per set under a common root, see :data:`OOD_SETS` and :func:`load_ood_images`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mixbench.data.base import CorruptImageError, open_rgb

__all__ = [
    "FIXED_THRESHOLD",
    "METRICS",
    "OOD_SETS",
    "CorruptImageError",
    "OodSetMissingError",
    "load_ood_images",
    "max_softmax_scores",
    "ood_image_files",
    "ood_metrics",
]

#: The fixed threshold of ``detection_accuracy_at_half`` (AlignMixup's).
FIXED_THRESHOLD = 0.5

#: The keys of :func:`ood_metrics`, in report order; every value is a fraction in [0, 1].
METRICS = (
    "detection_accuracy",
    "detection_accuracy_at_half",
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_95_tpr",
)

#: Set name -> folder under the OOD root, as the ODIN release's archives extract (LSUN.tar.gz,
#: iSUN.tar.gz, Imagenet.tar.gz); 32x32 crops of LSUN (10,000), iSUN (8,925) and Tiny-ImageNet (10,000).
OOD_SETS = {"lsun_crop": "LSUN", "isun": "iSUN", "tinyimagenet_crop": "Imagenet"}

# folder -> (what the set is, where its images land once the archive is extracted)
_LAYOUTS = {
    "LSUN": ("LSUN crop", "LSUN/test/*.jpg"),
    "iSUN": ("iSUN", "iSUN/iSUN_patches/*.jpeg"),
    "Imagenet": ("Tiny-ImageNet crop", "Imagenet/test/*.jpg"),
}

_EXTENSIONS = (".jpg", ".jpeg", ".png")


class OodSetMissingError(ValueError):
    """An OOD set's folder is missing or holds no image; the one-line message names the folder looked at
    and the layout expected there."""


# ---------------------------------------------------------------------------------------------- scores


def max_softmax_scores(logits: torch.Tensor) -> torch.Tensor:
    """The maximum softmax probability ``s = max_k softmax(z)_k`` of each row of ``logits`` (N, K), as a
    float64 tensor (N,) on the logits' device (Hendrycks & Gimpel, ICLR 2017).

    Computed in float64: a confident network's MSP rounds to exactly 1.0 in float32 once the runner-up logit
    is ~17 below the top one (~37 in float64), and such ties erase the ranking AUROC and FPR@95 measure.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor N x K (samples x classes), got {shape}")
    return torch.softmax(logits.detach().to(torch.float64), dim=1).amax(dim=1)


def _as_scores(values: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array of scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds {int((~np.isfinite(array)).sum())} non-finite score(s)")
    return array


def ood_metrics(
    id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """OOD detection metrics of scores where higher means "more in-distribution" (e.g.
    :func:`max_softmax_scores`), ID positive; the keys are :data:`METRICS`, every value a fraction in [0, 1].

    * ``detection_accuracy = 1 - min_t ½[P_in(s < t) + P_out(s >= t)]``. The error is piecewise constant in
      t and only changes when t passes a score, so the minimum over every real t is exact over the
      candidates t in {distinct scores of either set} ∪ {+inf} (t = +inf, or any t <= the lowest score,
      gives ½). These are the points of ``roc_curve(..., drop_intermediate=False)``, where
      ``TPR = P_in(s >= t)`` and ``FPR = P_out(s >= t)``, so the minimum is ``min ½(1 - TPR + FPR)``.
    * ``detection_accuracy_at_half = 1 - ½[P_in(s < 0.5) + P_out(s >= 0.5)]`` (:data:`FIXED_THRESHOLD`).
    * ``auroc = P(s_in > s_out) + ½ P(s_in = s_out)`` (``roc_auc_score``, ID label 1).
    * ``aupr_in``: ``average_precision_score`` with ID label 1 on s; ``aupr_out``: OOD label 1 on -s.
    * ``fpr_at_95_tpr = min {FPR : TPR >= 0.95}`` over the ROC points, no interpolation: the fraction of
      OOD scored at or above the highest threshold that keeps at least 95% of ID (TPR is a correctly
      rounded ratio of integers, so ``>= 0.95`` is exact for any realistic set size, e.g. 9,500/10,000).
    """
    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    scores = np.concatenate([id_array, ood_array])
    is_id = np.concatenate([np.ones(id_array.size, dtype=np.int64), np.zeros(ood_array.size, dtype=np.int64)])

    fpr, tpr, _ = roc_curve(is_id, scores, drop_intermediate=False)
    detection_error = float(np.min(0.5 * (1.0 - tpr + fpr)))
    error_at_half = 0.5 * (
        float(np.mean(id_array < FIXED_THRESHOLD)) + float(np.mean(ood_array >= FIXED_THRESHOLD))
    )
    return {
        "detection_accuracy": 1.0 - detection_error,
        "detection_accuracy_at_half": 1.0 - error_at_half,
        "auroc": float(roc_auc_score(is_id, scores)),
        "aupr_in": float(average_precision_score(is_id, scores)),
        "aupr_out": float(average_precision_score(1 - is_id, -scores)),
        "fpr_at_95_tpr": float(np.min(fpr[tpr >= 0.95])),  # tpr[-1] == 1, never empty
    }


# ---------------------------------------------------------------------------------------------- images


def _set_folder(root: str | Path, name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, str) and name_or_path in OOD_SETS:
        return Path(root) / OOD_SETS[name_or_path]
    path = Path(name_or_path).expanduser()
    return path if path.is_absolute() else Path(root) / path


def _missing(root: str | Path, name_or_path: str | Path, folder: Path, why: str) -> OodSetMissingError:
    layout = _LAYOUTS.get(folder.name) if folder.parent == Path(root) else None
    if layout is not None:
        what, pattern = layout
        hint = (
            f"the ODIN release's {what} ({folder.name}.tar.gz) extracts to {Path(root) / pattern}; download "
            f"it as the README of github.com/facebookresearch/odin says and extract it under {root}, or pass "
            "the folder of the images by path"
        )
    elif isinstance(name_or_path, str) and "/" not in name_or_path and "\\" not in name_or_path:
        hint = (
            f"{name_or_path!r} is neither a known OOD set ({', '.join(sorted(OOD_SETS))}) nor a folder of "
            "images under the OOD root; pass a set name or the path of a folder holding .jpg/.jpeg/.png files"
        )
    else:
        hint = "pass a folder holding .jpg/.jpeg/.png files, directly or in subfolders (ImageFolder layout)"
    return OodSetMissingError(f"no images under {folder} ({why}): {hint}")


def ood_image_files(root: str | Path, name_or_path: str | Path) -> list[Path]:
    """Every image file of an OOD set, sorted by path (so the order is the same on every machine).

    ``name_or_path`` is a key of :data:`OOD_SETS` (the folder ``root/OOD_SETS[name]``), or a folder path,
    absolute or relative to ``root`` (any ImageFolder-style tree: class subfolders are walked, labels
    ignored). Files ending in .jpg/.jpeg/.png (any case) are found recursively; hidden files and folders
    (names starting with ".", e.g. macOS ``._*`` companions) are skipped. Raises :class:`OodSetMissingError`
    when the folder is missing or holds no image.
    """
    folder = _set_folder(root, name_or_path)
    if not folder.is_dir():
        raise _missing(root, name_or_path, folder, "the folder does not exist")
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in _EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )
    if not files:
        raise _missing(root, name_or_path, folder, "no .jpg/.jpeg/.png file in it or its subfolders")
    return files


def load_ood_images(
    root: str | Path, name_or_path: str | Path, image_size: int | tuple[int, int]
) -> torch.Tensor:
    """The images of an OOD set (see :func:`ood_image_files` for ``name_or_path``) as one uint8 tensor
    (N, 3, H, W), in sorted path order.

    Each file is decoded in full and converted to RGB (greyscale/CMYK/palette files too), then resized to
    ``image_size`` (an int for H = W, or ``(H, W)``) with PIL's bilinear filter (which antialiases when
    shrinking; a file already at that size is kept as is). The ODIN sets are 32x32 already. Raises
    :class:`OodSetMissingError` (missing or empty folder) or
    :class:`~mixbench.data.base.CorruptImageError` (a file that cannot be decoded, e.g. truncated; one line
    naming it).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    files = ood_image_files(root, name_or_path)

    def decode(path: Path) -> np.ndarray:
        image = open_rgb(path)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image)

    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1, len(files))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        for index, array in enumerate(pool.map(decode, files)):
            images[index] = array
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
