"""Robustness to common corruptions (../shared/reference/RECIPES.md, "Evaluation protocols" and "Corruption
sets"): accuracy on the corrupted test images of Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (ICLR 2019), 19 corruptions x 5 severities.

For corruption ``c`` and severity ``s`` in 1..5, ``A(c, s)`` is the top-1 accuracy on the test set corrupted
by ``c`` at ``s``; :func:`mean_corruption_accuracy` reports::

    mCA = (1 / |C|) * sum_{c in C} (1 / |S|) * sum_{s in S} A(c, s)

over the corruptions ``C`` and severities ``S`` given (every corruption must have the same severities, so
this is also the plain mean of all ``|C| * |S|`` accuracies).  No AlexNet normalisation (that is mCE).

**Released sets** (Zenodo: CIFAR-10-C record 2535967, CIFAR-100-C record 3555552, Tiny-ImageNet-C record
2536630):

* CIFAR-10-C / CIFAR-100-C: a folder with one ``<corruption>.npy`` per corruption, uint8 ``(5 n, 32, 32, 3)``
  holding the ``n = 10,000`` test images at severity 1, then 2, ..., 5 stacked, and ``labels.npy`` of shape
  ``(5 n,)`` (the test labels repeated five times).  :func:`load_cifar_c` infers ``n`` from ``labels.npy``,
  so a cut-down copy in the same layout loads too.
* Tiny-ImageNet-C: JPEG folders ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (64 x 64), read by
  :func:`load_tiny_imagenet_c`.

The release names 19 corruptions: the 15 of the benchmark (:data:`BENCHMARK_CORRUPTIONS`, in the paper's
order: noise, blur, weather, digital) and 4 extra ones held out for validation (:data:`EXTRA_CORRUPTIONS`).

**Generated sets**, for datasets without a release (and the embedded digits): :func:`generate_corruptions`
applies ``imagecorruptions.corrupt`` (Michaelis et al., "Benchmarking Robustness in Object Detection",
2019; the package re-implements Hendrycks' code) to each image.  Those functions draw from numpy's *global*
RNG (``np.random``), so before image ``i`` the global RNG is seeded with :func:`corruption_seed` of
``(seed, corruption, severity, i)`` (the caller's global RNG state is restored afterwards); one image's
result does not depend on the others or on the batch.  Generation holds the global RNG, so it is not
thread-safe.  Results are :class:`GeneratedCorruptions`, labelled ``source = "generated"``; they are not
the released images, and accuracies on them are not comparable with published CIFAR-C numbers.

*Image size.* ``imagecorruptions.corrupt`` refuses images under 32 px.  A smaller image (the embedded
digits below 32 px) is upsampled by the integer factor ``k = ceil(32 / min(H, W))`` (bilinear), corrupted at
``k H x k W`` and downsampled back (box filter, the mean of each ``k x k`` block); ``working_size`` records
``(k H, k W)``.  With that, all 19 corruptions run at 32, 16 and 8 px (checked with imagecorruptions
1.1.2); none is skipped.

*Run against numpy 2 and a recent scikit-image.* With numpy 2 and scikit-image 0.26, three of imagecorruptions
1.1.2's functions fail (``glass_blur`` and ``gaussian_blur`` pass ``multichannel=True``, which scikit-image
removed; ``fog`` uses ``np.float_``, which numpy 2 removed), and ``impulse_noise`` is not reproducible
(scikit-image's ``random_noise`` now seeds its own generator from the OS, ignoring ``np.random``).  The
package's own functions run unchanged; while they run, three names of its ``corruptions`` module point at
adapters (:func:`_compatible`): ``gaussian`` translates ``multichannel=True`` to ``channel_axis=-1``, ``np``
is numpy with ``float_ = float64``, and ``sk.util.random_noise`` gets a seed drawn from the seeded
``np.random``.  The tests check the first three against a direct call of the package with the removed names
patched back in by the test itself.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixbench.data.base import CorruptImageError, DatasetMissingError, open_rgb

__all__ = [
    "ALL_CORRUPTIONS",
    "BENCHMARK_CORRUPTIONS",
    "CorruptImageError",
    "CorruptionSetLayoutError",
    "DatasetMissingError",
    "EXTRA_CORRUPTIONS",
    "GeneratedCorruptions",
    "MIN_CORRUPTION_SIZE",
    "SEVERITIES",
    "corruption_seed",
    "generate_corruptions",
    "load_cifar_c",
    "load_tiny_imagenet_c",
    "mean_corruption_accuracy",
]

#: The 15 corruptions of the benchmark, in the order of Hendrycks & Dietterich (2019), Figure 1.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
#: The 4 extra (validation) corruptions of the release.
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
#: All 19 released corruptions: one ``<name>.npy`` each in CIFAR-10-C / CIFAR-100-C.
ALL_CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
#: The smallest side ``imagecorruptions.corrupt`` accepts; smaller images are upsampled around the call.
MIN_CORRUPTION_SIZE = 32
CIFAR_C_IMAGE_SHAPE = (32, 32, 3)
INSTALL_HINT = 'pip install -e ".[eval]"'
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class CorruptionSetLayoutError(ValueError):
    """A corruption set's file has the wrong shape or type; the one-line message names the file and the layout
    expected."""


def _check_corruption(corruption: str) -> None:
    if corruption not in ALL_CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {', '.join(ALL_CORRUPTIONS)}")


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


# --------------------------------------------------------------------------------------------- released sets


def _cifar_c_missing(root: Path, what: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"CIFAR-C set incomplete: missing {what}; fix: download CIFAR-10-C.tar (zenodo.org/record/2535967) "
        f"or CIFAR-100-C.tar (zenodo.org/record/3555552) and unpack it so that {root}/<corruption>.npy and "
        f"{root}/labels.npy exist"
    )


def load_cifar_c(root: str | Path, corruption: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The released CIFAR-10-C / CIFAR-100-C images of one corruption and severity, uint8 ``(n, 3, 32, 32)``,
    and their labels, int64 ``(n,)``.

    ``root`` is the unpacked folder (``.../CIFAR-100-C``) holding ``<corruption>.npy`` (uint8
    ``(5 n, 32, 32, 3)``, severities 1..5 stacked) and ``labels.npy`` (``(5 n,)``); ``n`` comes from
    ``labels.npy`` (10,000 in the release).  Only the severity's slice is read (memory-mapped).
    """
    _check_corruption(corruption)
    _check_severity(severity)
    folder = Path(root).expanduser().absolute()
    if not folder.is_dir():
        raise _cifar_c_missing(folder, f"folder {folder}")
    labels_path, images_path = folder / "labels.npy", folder / f"{corruption}.npy"
    for path in (labels_path, images_path):
        if not path.is_file():
            raise _cifar_c_missing(folder, f"file {path}")
    labels = np.load(labels_path, mmap_mode="r")
    if labels.ndim != 1 or labels.shape[0] == 0 or labels.shape[0] % 5 or labels.dtype.kind not in "iu":
        raise CorruptionSetLayoutError(
            f"{labels_path} must hold integer labels of shape (5 n,) for 5 severities x n images (50000 in "
            f"the release), got {labels.dtype} {labels.shape}; fix: replace it from the release's archive"
        )
    per_severity = labels.shape[0] // 5
    images = np.load(images_path, mmap_mode="r")
    expected = (5 * per_severity, *CIFAR_C_IMAGE_SHAPE)
    if images.shape != expected or images.dtype != np.uint8:
        raise CorruptionSetLayoutError(
            f"{images_path} must hold uint8 images of shape {expected} (5 severities x {per_severity} images "
            f"x H x W x C, as labels.npy implies), got {images.dtype} {images.shape}; fix: replace it from "
            "the release's archive"
        )
    start = (severity - 1) * per_severity
    severity_images = images[start : start + per_severity].transpose(0, 3, 1, 2).copy()  # out of the mmap
    severity_labels = np.array(labels[start : start + per_severity], dtype=np.int64)
    return torch.from_numpy(severity_images), torch.from_numpy(severity_labels)


def _tiny_c_missing(root: Path, what: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"Tiny-ImageNet-C set incomplete: missing {what}; fix: download Tiny-ImageNet-C.tar "
        f"(zenodo.org/record/2536630) and unpack it so that {root}/<corruption>/<severity>/<wnid>/*.JPEG "
        "exist"
    )


def load_tiny_imagenet_c(
    root: str | Path,
    corruption: str,
    severity: int,
    wnid_to_index: Mapping[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The released Tiny-ImageNet-C images of one corruption and severity, uint8 ``(N, 3, H, W)`` (64 x 64 in
    the release), and their labels, int64 ``(N,)``, from ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``.

    The label of an image is ``wnid_to_index[wnid]`` of its class folder; by default the index of the wnid in
    the sorted class folders found, which matches :mod:`mixbench.data.tiny_imagenet` (sorted wnids) only when
    all 200 folders are present: pass the training set's mapping to be safe.  Images are ordered by wnid,
    then file name.
    """
    _check_corruption(corruption)
    _check_severity(severity)
    base = Path(root).expanduser().absolute()
    folder = base / corruption / str(severity)
    if not folder.is_dir():
        raise _tiny_c_missing(base, f"folder {folder}")
    class_folders = sorted(path for path in folder.iterdir() if path.is_dir())
    if not class_folders:
        raise _tiny_c_missing(base, f"class folders <wnid>/ in {folder}")
    if wnid_to_index is None:
        wnid_to_index = {path.name: index for index, path in enumerate(class_folders)}
    unknown = [path.name for path in class_folders if path.name not in wnid_to_index]
    if unknown:
        raise ValueError(
            f"{folder} holds class folders {', '.join(unknown[:5])} that wnid_to_index lacks; pass the "
            "mapping of the training set's wnids"
        )
    files: list[Path] = []
    labels: list[int] = []
    for class_folder in class_folders:
        class_files = sorted(
            path for path in class_folder.iterdir() if path.suffix.lower() in _IMAGE_EXTENSIONS
        )
        files.extend(class_files)
        labels.extend([wnid_to_index[class_folder.name]] * len(class_files))
    if not files:
        raise _tiny_c_missing(base, f"image files (*.JPEG) in the class folders of {folder}")

    def decode(path: Path) -> np.ndarray:
        return np.asarray(open_rgb(path))

    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(decode, files))
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        sizes = ", ".join(f"{shape[0]}x{shape[1]}" for shape in sorted(shapes)[:3])
        raise CorruptionSetLayoutError(
            f"the images in {folder} differ in size ({sizes}); fix: replace the odd ones from the release "
            "(all are 64x64)"
        )
    images = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    return images, torch.tensor(labels, dtype=torch.int64)


# -------------------------------------------------------------------------------------------- generated sets


@dataclass(frozen=True)
class GeneratedCorruptions:
    """Images corrupted here by :func:`generate_corruptions` (not a released set): uint8 ``(N, 3, H, W)``."""

    images: torch.Tensor
    corruption: str
    severity: int
    seed: int
    working_size: tuple[int, int]
    source: str = "generated"
    generator: str = "imagecorruptions"


def _imagecorruptions():
    try:
        with warnings.catch_warnings():
            # the package imports pkg_resources and scipy.ndimage.interpolation, both deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            # spatter (severities 1-3) divides by the maximum of its liquid layer, which is 0 on some small
            # images: numpy warns, and the package's uint8 cast turns those NaN pixels into 0 (its behaviour)
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            import imagecorruptions
    except ImportError:
        raise ModuleNotFoundError(
            f"generated corruptions need the imagecorruptions package; fix: {INSTALL_HINT}"
        ) from None
    return imagecorruptions


def corruption_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The 32-bit seed of ``np.random`` before corrupting image ``index``: the first word of
    ``np.random.SeedSequence([seed, position of corruption in ALL_CORRUPTIONS, severity, index])``."""
    _check_corruption(corruption)
    entropy = [seed, ALL_CORRUPTIONS.index(corruption), severity, index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class _NumpyWithFloat:
    """numpy as imagecorruptions 1.1.2 expects it: ``np.float_`` (removed in numpy 2) is ``float64``."""

    float_ = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


class _ScikitImageSeededFromNumpy:
    """scikit-image as imagecorruptions 1.1.2 uses it (``sk.util.random_noise``), with ``random_noise``'s
    generator seeded from the (seeded) global ``np.random`` instead of the operating system."""

    def __init__(self, skimage) -> None:
        self._skimage = skimage
        self.util = self

    def random_noise(self, image, **options):
        options.setdefault("rng", int(np.random.randint(0, 2**32, dtype=np.int64)))
        return self._skimage.util.random_noise(image, **options)

    def __getattr__(self, name: str):
        return getattr(self._skimage, name)


def _gaussian_with_multichannel(image, sigma=1, multichannel=None, **options):
    """``skimage.filters.gaussian`` accepting the ``multichannel`` flag scikit-image 0.19 replaced by
    ``channel_axis`` (and later removed)."""
    from skimage.filters import gaussian

    if multichannel is not None:
        options.setdefault("channel_axis", -1 if multichannel else None)
    return gaussian(image, sigma=sigma, **options)


@contextlib.contextmanager
def _compatible(module) -> Iterator[None]:
    """The package's own functions, run against numpy 2 and a recent scikit-image: three names of its
    ``corruptions`` module (``np``, ``sk``, ``gaussian``) point at the adapters above while it runs."""
    import skimage
    import skimage.util

    package = module.corruptions
    adapters = {
        "np": _NumpyWithFloat(),
        "sk": _ScikitImageSeededFromNumpy(skimage),
        "gaussian": _gaussian_with_multichannel,
    }
    saved = {name: getattr(package, name) for name in adapters}
    try:
        for name, adapter in adapters.items():
            setattr(package, name, adapter)
        yield
    finally:
        for name, original in saved.items():
            setattr(package, name, original)


def _corrupt_one(module, image_hwc: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    return module.corrupt(image_hwc, corruption_name=corruption, severity=severity)


def generate_corruptions(
    images: torch.Tensor, corruption: str, severity: int, seed: int
) -> GeneratedCorruptions:
    """Corrupt uint8 images ``(N, 3, H, W)`` with ``corruption`` at ``severity`` (1..5), reproducibly: image
    ``i`` is corrupted with ``np.random`` seeded by ``corruption_seed(seed, corruption, severity, i)``, at
    ``k H x k W`` with ``k = ceil(32 / min(H, W))`` when a side is under 32 px (see the module docstring).
    Returns :class:`GeneratedCorruptions` with uint8 images of the input's shape."""
    _check_corruption(corruption)
    _check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}; convert with "
            "(images * 255).round().to(torch.uint8) before normalising"
        )
    module = _imagecorruptions()
    count, _, height, width = images.shape
    scale = max(1, math.ceil(MIN_CORRUPTION_SIZE / min(height, width)))
    working_size = (scale * height, scale * width)
    source = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    corrupted = np.empty_like(source)
    saved_state = np.random.get_state()
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore", DeprecationWarning)
            # spatter (severities 1-3) divides by the maximum of its liquid layer, which is 0 on some small
            # images: numpy warns, and the package's uint8 cast turns those NaN pixels into 0 (its behaviour)
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            stack.enter_context(_compatible(module))
            for index in range(count):
                image = source[index]
                if scale > 1:
                    image = np.asarray(
                        Image.fromarray(image).resize((working_size[1], working_size[0]), Image.BILINEAR)
                    )
                np.random.seed(corruption_seed(seed, corruption, severity, index))
                result = _corrupt_one(module, np.ascontiguousarray(image), corruption, severity)
                if result.shape != image.shape:
                    raise RuntimeError(
                        f"{corruption} returned shape {result.shape} for an image of shape {image.shape}; "
                        "report this with the imagecorruptions version"
                    )
                if scale > 1:
                    result = np.asarray(Image.fromarray(result).resize((width, height), Image.BOX))
                corrupted[index] = result
    finally:
        np.random.set_state(saved_state)
    return GeneratedCorruptions(
        images=torch.from_numpy(corrupted.transpose(0, 3, 1, 2).copy()),
        corruption=corruption,
        severity=severity,
        seed=seed,
        working_size=working_size,
    )


# -------------------------------------------------------------------------------------------------- summary


def mean_corruption_accuracy(results: Mapping[str, Mapping[int, float]]) -> float:
    """``{corruption: {severity: accuracy}}`` -> the mean over corruptions of the mean over severities (the
    mCA of the module docstring), in the unit of the accuracies.  Every corruption must list the same
    severities; names outside the 19 released ones are allowed (a generated set may use others)."""
    if not results:
        raise ValueError("results is empty; pass {corruption: {severity: accuracy}}")
    severity_sets = {corruption: frozenset(per_severity) for corruption, per_severity in results.items()}
    reference_name, reference = next(iter(severity_sets.items()))
    if not reference:
        raise ValueError(f"corruption {reference_name!r} has no severity; pass {{severity: accuracy}}")
    for corruption, severities in severity_sets.items():
        if severities != reference:
            raise ValueError(
                f"corruption {corruption!r} has severities {sorted(severities)} but {reference_name!r} has "
                f"{sorted(reference)}; evaluate every corruption at the same severities"
            )
    for corruption, per_severity in results.items():
        for severity, accuracy in per_severity.items():
            if not math.isfinite(float(accuracy)):
                raise ValueError(
                    f"accuracy of {corruption!r} at severity {severity} is not finite: {accuracy}"
                )
    per_corruption = [
        math.fsum(per_severity.values()) / len(per_severity) for per_severity in results.values()
    ]
    return math.fsum(per_corruption) / len(per_corruption)
