"""The evaluation suites of ``tools/evaluate.py``: each reads a loaded run and returns its record's results.

A suite is a function ``suite(run, params, progress) -> SuiteResult`` registered in :data:`SUITES` under the
name of its config (``configs/eval/<name>.yaml``, whose values arrive as ``params``).  ``run`` is a
:class:`~mixbench.evaluation.runner.LoadedRun`: the run's networks by label (``online``, and ``ema`` for the
methods that keep one), each taking images in [0, 1] (the normalisation inside,
:class:`~mixbench.evaluation.attacks.NormalizedModel`), and the run's test images
(:mod:`mixbench.evaluation.images`).  Every number a suite returns is a **percentage** (errors, accuracies,
ECE, AUROC, ...), so tables compare them with published numbers as they are.

* ``fgsm``, ``pgd`` (:mod:`.attacks`): top-1 error on clean and on adversarial images
  (``adversarial_error``).
* ``calibration`` (:mod:`.calibration`): ECE over 15 bins, the bin table (fractions, like its edges), a
  reliability diagram ``eval/calibration_<label>.png``.
* ``ood`` (:mod:`.ood`): per OOD set, detection accuracy (optimal threshold and at 0.5), AUROC, AUPR-In,
  AUPR-Out, FPR at 95 % TPR.
* ``corruption`` (:mod:`.corruption`): accuracy per corruption and severity and their mean, on the released
  sets or on generated ones (the record's ``data.corruption_source`` says which).
* ``occlusion`` (:mod:`.occlusion`): accuracy per masked fraction 0..100 %, the curve
  ``eval/occlusion_<label>.png``.
* ``wsol`` (:mod:`.localization`): top-1 / GT-known localisation, MaxBoxAcc per IoU and MaxBoxAcc-v2, CAM
  figure ``eval/cam_<label>.png``.
* ``cost`` (:mod:`mixbench.bench.timing`): the training step's parameters, ms per batch, images/s, peak
  memory and host syncs (no weights read).

Parameters whose name ends in ``root`` say *where* data lies, not *what* is measured: they are recorded under
``data`` and are not part of the protocol an evaluation is matched on (:func:`protocol_of`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from mixbench.atomic import atomic_write
from mixbench.config import ConfigError
from mixbench.data import DatasetMissingError
from mixbench.evaluation import attacks, calibration, corruption, localization, occlusion, ood
from mixbench.evaluation.images import EvaluationImages, boxes_of, evaluation_images
from mixbench.evaluation.loaded_run import LoadedRun

PIXEL_LEVELS = 255.0  # attack radii are given in grey levels: eps = 8 means 8/255
ODIN_DATASETS = ("cifar10", "cifar100")  # in-distribution sets of the ODIN protocol (32 x 32 OOD images)
GENERATED_OOD_SETS = ("uniform", "gaussian")
RELEASED_CORRUPTIONS = {
    "cifar10": "CIFAR-10-C",
    "cifar100": "CIFAR-100-C",
    "tiny_imagenet": "Tiny-ImageNet-C",
}


@dataclass
class SuiteResult:
    """What a suite measured: per-network results, what it read beyond the test split, and for ``cost`` the
    training step's figures."""

    networks: dict[str, dict[str, Any]]
    data: dict[str, Any] = field(default_factory=dict)
    step: dict[str, Any] | None = None


class Progress:
    """A tqdm bar per suite and network, shown on a terminal (``progress=auto``) or when asked."""

    def __init__(self, enabled: bool, prefix: str = "") -> None:
        self.enabled = enabled
        self.prefix = prefix

    def bar(self, iterable: Iterable, total: int | None, description: str) -> Iterator:
        with tqdm(
            iterable,
            total=total,
            desc=f"{self.prefix}{description}",
            disable=not self.enabled,
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            yield from bar


def protocol_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that define what a suite measures (those naming a folder left out)."""
    return {key: value for key, value in params.items() if not str(key).endswith("root")}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _images(run: LoadedRun, params: Mapping[str, Any], whole_image: bool = False) -> EvaluationImages:
    return evaluation_images(
        run.data_cfg,
        str(run.cfg.schedule.augment),
        run.image_size,
        max_images=params.get("max_images"),
        whole_image=whole_image,
        num_workers=run.num_workers,
    )


def _logits(
    network: nn.Module,
    images: EvaluationImages,
    run: LoadedRun,
    batch_size: int,
    progress: Progress,
    label: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every test image, in eval mode under the run's autocast."""
    outputs, targets = [], []
    batches = images.batches(batch_size, run.runtime.device)
    with torch.no_grad(), attacks.evaluation_mode(network):
        for x, y in progress.bar(batches, images.batch_count(batch_size), label):
            with run.runtime.autocast():
                outputs.append(network(x).float())
            targets.append(y)
    return torch.cat(outputs).cpu(), torch.cat(targets).cpu()


def _figure_name(run: LoadedRun, stem: str, label: str) -> Path:
    suffix = "" if run.weights["which"] == "last" else f"@{run.weights['which']}"
    return run.run_dir.eval_dir / f"{stem}_{label}{suffix}.png"


def _relative(run: LoadedRun, path: Path) -> str:
    return str(path.relative_to(run.run_dir.path))


# -------------------------------------------------------------------------------------------- attacks


def _attack_suite(name: str) -> Callable[[LoadedRun, Mapping[str, Any], Progress], SuiteResult]:
    def run_attack(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
        images = _images(run, params)
        options: dict[str, Any] = {"eps": float(params["eps"]) / PIXEL_LEVELS}
        if name == "pgd":
            options.update(
                alpha=float(params["alpha"]) / PIXEL_LEVELS,
                steps=int(params["steps"]),
                random_start=bool(params["random_start"]),
            )
        batch_size = int(params["batch_size"])
        results = {}
        for label, network in run.networks.items():
            if name == "pgd":  # the same random starts for every network of every run
                generator = torch.Generator(device=run.runtime.device).manual_seed(int(params["seed"]))
                options["generator"] = generator
            batches = progress.bar(
                images.batches(batch_size, run.runtime.device), images.batch_count(batch_size), label
            )
            with run.runtime.autocast():
                results[label] = attacks.adversarial_error(
                    network, batches, name, device=run.runtime.device, **options
                )
        return SuiteResult(networks=results, data=images.describe())

    run_attack.__name__ = name
    run_attack.__doc__ = f"{name.upper()} top-1 error (mixbench.evaluation.attacks), eps in grey levels."
    return run_attack


# ---------------------------------------------------------------------------------------- calibration


def calibration_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """ECE over ``bins`` equal-width bins, the bin table and a reliability diagram per network."""
    images = _images(run, params)
    results = {}
    for label, network in run.networks.items():
        logits, labels = _logits(network, images, run, int(params["batch_size"]), progress, label)
        bins = calibration.calibration_bins(logits, labels, int(params["bins"]))
        path = calibration.reliability_diagram(
            bins, _figure_name(run, "calibration", label), f"{run.title} ({label})"
        )
        results[label] = {
            "ece": 100.0 * calibration.expected_calibration_error_of_bins(bins),
            "top1": 100.0 * float((logits.argmax(1) == labels).double().mean()),
            "bins": [
                {
                    "lower": item.lower,
                    "upper": item.upper,
                    "count": item.count,
                    "accuracy": item.accuracy,
                    "confidence": item.mean_confidence,  # bins in fractions, like their edges
                }
                for item in bins
            ],
            "diagram": _relative(run, path),
        }
    return SuiteResult(networks=results, data=images.describe())


# ------------------------------------------------------------------------------------------------ OOD


def ood_set_names(params: Mapping[str, Any], dataset: str) -> list[str]:
    """The OOD sets to score: ``sets`` as given, or for ``auto`` the ODIN sets (LSUN crop, iSUN,
    Tiny-ImageNet crop) for a CIFAR in-distribution set and the generated noise sets for any other."""
    sets = _plain(params["sets"])
    if sets == "auto":
        return list(ood.OOD_SETS) if dataset in ODIN_DATASETS else list(GENERATED_OOD_SETS)
    if isinstance(sets, str):
        sets = [sets]
    if not sets:
        raise ConfigError("eval.ood.sets is empty; name OOD sets (lsun_crop, isun, ...), folders, or auto")
    return [str(name) for name in sets]


def generated_ood_images(name: str, count: int, size: int, seed: int) -> torch.Tensor:
    """ODIN's synthetic OOD sets, uint8 ``(count, 3, size, size)``, seeded: ``uniform`` draws every pixel
    from U[0, 1], ``gaussian`` from N(0.5, 1) clipped to [0, 1] (Liang et al., ICLR 2018, Sec. 4.1)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (count, 3, size, size)
    if name == "uniform":
        pixels = torch.rand(shape, generator=generator)
    elif name == "gaussian":
        pixels = (torch.randn(shape, generator=generator) + 0.5).clamp_(0, 1)
    else:
        raise ValueError(f"unknown generated OOD set {name!r}; known: {', '.join(GENERATED_OOD_SETS)}")
    return (pixels * 255).round_().to(torch.uint8)


def load_ood_sets(params: Mapping[str, Any], dataset: str, size: int, id_count: int) -> dict[str, Any]:
    """``{name: (uint8 images, description)}`` of every set asked for; a missing set raises its one-line
    :class:`~mixbench.evaluation.ood.OodSetMissingError` before any network is evaluated."""
    loaded = {}
    for name in ood_set_names(params, dataset):
        if name in GENERATED_OOD_SETS:
            count = int(params.get("generated_images") or id_count)
            images = generated_ood_images(name, count, size, int(params["seed"]))
            loaded[name] = (images, {"source": "generated", "images": count, "seed": int(params["seed"])})
        else:
            images = ood.load_ood_images(str(params["root"]), name, size)
            folder = ood._set_folder(str(params["root"]), name)
            loaded[Path(name).name] = (images, {"source": str(folder), "images": len(images)})
    return loaded


def ood_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """Max-softmax OOD detection of every set against the test split (mixbench.evaluation.ood)."""
    images = _images(run, params)
    sets = load_ood_sets(params, run.dataset, run.image_size, images.count)
    batch_size = int(params["batch_size"])
    results = {}
    for label, network in run.networks.items():
        id_logits, _ = _logits(network, images, run, batch_size, progress, f"{label} in-distribution")
        id_scores = ood.max_softmax_scores(id_logits)
        per_set = {}
        for name, (ood_images, _) in sets.items():
            ood_split = EvaluationImages(
                name, run.image_size, _array_split(ood_images), len(ood_images), False
            )
            ood_logits, _ = _logits(network, ood_split, run, batch_size, progress, f"{label} {name}")
            metrics = ood.ood_metrics(id_scores, ood.max_softmax_scores(ood_logits))
            per_set[name] = {key: 100.0 * float(metrics[key]) for key in ood.METRICS}
            per_set[name]["images"] = len(ood_images)
        results[label] = {"sets": per_set, "id_images": images.count}
    data = images.describe()
    data["ood_sets"] = {name: description for name, (_, description) in sets.items()}
    data["ood_root"] = str(params["root"])
    return SuiteResult(networks=results, data=data)


def _array_split(images: torch.Tensor):
    from mixbench.data import ArraySplit

    return ArraySplit(images=images, labels=torch.zeros(len(images), dtype=torch.long))


# ----------------------------------------------------------------------------------------- corruption


def corruption_source(params: Mapping[str, Any], dataset: str) -> str:
    """``released`` or ``generated``: ``auto`` reads the released set where one exists (CIFAR-10/100,
    Tiny-ImageNet) and generates corruptions for any other dataset; never a mixture."""
    source = str(params["source"])
    if source == "auto":
        return "released" if dataset in RELEASED_CORRUPTIONS else "generated"
    if source not in ("released", "generated"):
        raise ConfigError(f"eval.corruption.source={source} is unknown; use auto, released or generated")
    if source == "released" and dataset not in RELEASED_CORRUPTIONS:
        raise ConfigError(
            f"no released corruption set exists for data {dataset} (only "
            f"{', '.join(RELEASED_CORRUPTIONS)}); use eval.corruption.source=generated"
        )
    return source


def corruption_names(params: Mapping[str, Any]) -> list[str]:
    names = _plain(params["corruptions"])
    if names == "all":
        return list(corruption.ALL_CORRUPTIONS)
    if names == "benchmark":
        return list(corruption.BENCHMARK_CORRUPTIONS)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in corruption.ALL_CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(
            f"eval.corruption.corruptions: unknown {unknown or 'empty list'}; use all, benchmark or names "
            f"from {', '.join(corruption.ALL_CORRUPTIONS)}"
        )
    return names


def released_corruption_folder(params: Mapping[str, Any], dataset: str) -> Path:
    return Path(str(params["root"])).expanduser() / RELEASED_CORRUPTIONS[dataset]


def check_corruption_set(params: Mapping[str, Any], dataset: str) -> None:
    """Refuse, in one line and before anything runs, a released set that is missing."""
    if corruption_source(params, dataset) != "released":
        return
    folder = released_corruption_folder(params, dataset)
    if dataset == "tiny_imagenet":
        for name in corruption_names(params):
            if not (folder / name).is_dir():
                raise DatasetMissingError(
                    f"Tiny-ImageNet-C not found: missing {folder / name}; download Tiny-ImageNet-C (Zenodo "
                    f"record 2536630) and extract it so that {folder}/<corruption>/<severity>/<wnid>/*.JPEG "
                    "exist, or set eval.corruption.root"
                )
        return
    for name in ["labels", *corruption_names(params)]:
        if not (folder / f"{name}.npy").is_file():
            raise DatasetMissingError(
                f"{RELEASED_CORRUPTIONS[dataset]} not found: missing {folder / (name + '.npy')}; download "
                f"{RELEASED_CORRUPTIONS[dataset]}.tar (Zenodo) and extract it under eval.corruption.root "
                f"({params['root']}), or use eval.corruption.source=generated"
            )


_GENERATED: dict[tuple, torch.Tensor] = {}
GENERATED_CACHE_BYTES = 1 << 30


def generated_corruptions(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """:func:`~mixbench.evaluation.corruption.generate_corruptions`, kept in memory (up to 1 GiB) for the
    other runs of the same command: the images do not depend on the network, and generating them is most of
    the suite's time (about 110 s for the 95 sets of the 450 digits at 16 px on 2 CPU threads)."""
    key = (hashlib.sha256(images.numpy().tobytes()).hexdigest(), tuple(images.shape), name, severity, seed)
    if key not in _GENERATED:
        corrupted = corruption.generate_corruptions(images, name, severity, seed).images
        if sum(t.numel() for t in _GENERATED.values()) + corrupted.numel() <= GENERATED_CACHE_BYTES:
            _GENERATED[key] = corrupted
        return corrupted
    return _GENERATED[key]


def _accuracy(
    network: nn.Module, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], run: LoadedRun
) -> torch.Tensor:
    """Correct predictions (a device tensor) over ``(uint8 images, labels)`` pairs; read by the caller."""
    correct = torch.zeros((), dtype=torch.long, device=run.runtime.device)
    with torch.no_grad():
        for images, labels in pairs:
            x = images.to(run.runtime.device).float().div_(255.0)
            with run.runtime.autocast():
                predictions = network(x).argmax(dim=1)
            correct += (predictions == labels.to(run.runtime.device)).sum()
    return correct


def _chunks(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator:
    for start in range(0, len(labels), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def tiny_wnids(run: LoadedRun) -> dict[str, int]:
    """Tiny-ImageNet's ``wnid -> label`` of the run's dataset (:mod:`mixbench.data.tiny_imagenet`)."""
    from mixbench.data import tiny_imagenet

    wnids = tiny_imagenet.read_wnids(tiny_imagenet.check(run.data_cfg.root))
    return {wnid: index for index, wnid in enumerate(wnids)}


def corruption_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """Accuracy under each corruption and severity and its mean (mixbench.evaluation.corruption)."""
    source = corruption_source(params, run.dataset)
    names = corruption_names(params)
    severities = [int(s) for s in _plain(params["severities"])]
    batch_size = int(params["batch_size"])
    images = _images(run, params)
    clean_images, clean_labels = (
        torch.cat(parts) for parts in zip(*images.uint8_batches(batch_size), strict=True)
    )
    counts: dict[str, dict[str, dict[int, torch.Tensor]]] = {label: {} for label in run.networks}
    totals: dict[tuple[str, int], int] = {}
    folder = released_corruption_folder(params, run.dataset) if source == "released" else None
    cells = [(name, severity) for name in names for severity in severities]
    for name, severity in progress.bar(cells, len(cells), "corruptions"):
        if source == "generated":
            set_images = generated_corruptions(clean_images, name, severity, int(params["seed"]))
            set_labels = clean_labels
        elif run.dataset == "tiny_imagenet":  # labels as the training set numbers its wnids
            set_images, set_labels = corruption.load_tiny_imagenet_c(folder, name, severity, tiny_wnids(run))
        else:
            set_images, set_labels = corruption.load_cifar_c(folder, name, severity)
        if source == "released":
            limit = images.count
            set_images, set_labels = set_images[:limit], set_labels[:limit]
            if set_images.shape[-1] != run.image_size:
                from mixbench.evaluation.images import _resized

                set_images = _resized(set_images, run.image_size)
        totals[(name, severity)] = len(set_labels)
        for label, network in run.networks.items():
            with attacks.evaluation_mode(network):
                correct = _accuracy(network, _chunks(set_images, set_labels, batch_size), run)
            counts[label].setdefault(name, {})[severity] = correct
    results = {}
    for label, network in run.networks.items():
        accuracy = {
            name: {
                str(severity): 100.0 * int(count) / totals[(name, severity)]
                for severity, count in per_severity.items()
            }
            for name, per_severity in counts[label].items()
        }
        with attacks.evaluation_mode(network):
            clean = int(_accuracy(network, _chunks(clean_images, clean_labels, batch_size), run))
        results[label] = {
            "accuracy": accuracy,
            "mean": corruption.mean_corruption_accuracy(accuracy),
            "clean_top1": 100.0 * clean / len(clean_labels),
        }
    data = images.describe()
    data["corruption_source"] = source
    if source == "released":
        data["corruption_set"] = f"{run.dataset}_c"
        data["corruption_folder"] = str(folder)
    else:
        data["corruption_set"] = "generated"
        data["generator"] = "imagecorruptions"
    return SuiteResult(networks=results, data=data)


# ------------------------------------------------------------------------------------------ occlusion


def occlusion_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """Top-1 accuracy per masked fraction of patches, masks filled with the dataset mean (grey)."""
    images = _images(run, params)
    fractions = [float(f) for f in _plain(params["fractions"])]
    batch_size = int(params["batch_size"])
    fill = list(run.data_cfg.mean)  # pixels in [0, 1]: the mean colour, i.e. 0 after normalisation
    results = {}
    for label, network in run.networks.items():
        batches = progress.bar(
            images.batches(batch_size, run.runtime.device), images.batch_count(batch_size), label
        )
        curve = occlusion.occlusion_accuracy(
            network,
            batches,
            seed=int(params["seed"]),
            fractions=fractions,
            patch_size=int(params["patch_size"]),
            fill=fill,
            min_patches_per_side=int(params["min_patches_per_side"]),
            autocast=run.runtime.autocast,
        )
        path = occlusion.occlusion_curve_png(
            {label: curve}, _figure_name(run, "occlusion", label), f"Occlusion: {run.title}"
        )
        rows, cols = occlusion.occlusion_grid(
            run.image_size, run.image_size, int(params["patch_size"]), int(params["min_patches_per_side"])
        )
        results[label] = {
            "accuracy": {f"{fraction:.1f}": value for fraction, value in curve.items()},
            "grid": [rows, cols],
            "curve": _relative(run, path),
        }
    return SuiteResult(networks=results, data=images.describe())


# ----------------------------------------------------------------------------------------------- WSOL


def cam_network(model: nn.Module, label: str, model_name: str) -> tuple[nn.Module, nn.Linear]:
    """The staged CNN and its classifier behind ``NormalizedModel(model)``; refuses (one line) a network
    without class activation maps."""
    inner = model.model if isinstance(model, attacks.NormalizedModel) else model
    classifier = inner.cam_classifier() if hasattr(inner, "cam_classifier") else None
    if classifier is None:
        raise ConfigError(
            f"model {model_name} has no class activation map (its {label} network's head is not global "
            "average "
            "pooling + linear, e.g. a vision transformer); WSOL needs a CNN such as vgg_gap or resnet50"
        )
    return inner, classifier


def wsol_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """CAM localisation: top-1 / GT-known at the CAM threshold, MaxBoxAcc and -v2 over a threshold sweep."""
    images = _images(run, params, whole_image=True)
    gt_boxes = boxes_of(run.data_cfg, run.image_size, images.count)
    batch_size = int(params["batch_size"])
    sweep = localization.cam_threshold_sweep(float(params["threshold_interval"]))
    results = {}
    for label, network in run.networks.items():
        inner, classifier = cam_network(network, label, run.model_name)
        located = localization.CamLocalization(float(params["cam_threshold"]), float(params["iou_threshold"]))
        max_box = localization.MaxBoxAcc(sweep, [float(d) for d in _plain(params["iou_thresholds"])])
        correct = 0
        shown: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        start = 0
        batches = images.batches(batch_size, run.runtime.device)
        with torch.no_grad(), attacks.evaluation_mode(network):
            for x, y in progress.bar(batches, images.batch_count(batch_size), label):
                with run.runtime.autocast():
                    normalised = (x - network.mean) / network.std
                    features = inner.forward_features(normalised, inner.num_stages)
                    logits = inner.head(features)
                predictions = logits.argmax(1)
                cams = localization.compute_cams(features, classifier.weight, y, run.image_size).cpu()
                boxes = gt_boxes[start : start + len(y)]
                start += len(y)
                located.update(cams, boxes, predictions.cpu(), y.cpu())
                max_box.update(cams, boxes)
                correct += int((predictions == y).sum())
                for index in range(min(len(y), int(params["figures"]) - len(shown))):
                    shown.append((x[index].cpu().numpy(), cams[index].numpy(), boxes[index], y[index].item()))
        top = located.compute()
        boxes_scores = max_box.compute()
        figure = _cam_figure(
            shown, float(params["cam_threshold"]), _figure_name(run, "cam", label), run.title
        )
        results[label] = {
            "top1_loc": 100.0 * top["top1_loc"],
            "gt_known_loc": 100.0 * top["gt_known_loc"],
            "max_box_acc_v2": 100.0 * boxes_scores["max_box_acc_v2"],
            "max_box_acc": {f"{d:.1f}": 100.0 * v for d, v in boxes_scores["max_box_acc"].items()},
            "best_threshold": {f"{d:.1f}": v for d, v in boxes_scores["best_threshold"].items()},
            "top1": 100.0 * correct / images.count,
            "figures": [_relative(run, figure)] if figure is not None else [],
        }
    data = images.describe()
    data["boxes"] = "bounding_boxes.txt" if run.dataset == "cub200" else "ink of the 8 x 8 digit (pixels > 0)"
    return SuiteResult(networks=results, data=data)


def _cam_figure(shown: list, threshold: float, path: Path, title: str) -> Path | None:
    """A row of images with their ground-truth-class CAM overlaid, the ground-truth box (green) and the box
    of the largest component above ``threshold`` (red)."""
    if not shown:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(2.0 * len(shown), 2.3), layout="constrained")
    axes_list = figure.subplots(1, len(shown), squeeze=False)[0]
    for axes, (image, cam, gt, label) in zip(axes_list, shown, strict=True):
        axes.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        axes.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        predicted = localization.cam_boxes(cam[None], threshold)[0]
        for box, colour in [(gt[0], "lime"), (predicted, "red")]:
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 >= x0 and y1 >= y0:
                axes.add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color=colour, lw=1.5
                    )
                )
        axes.set_title(f"class {label}", fontsize="small")
        axes.axis("off")
    figure.suptitle(f"CAM (threshold {threshold}): {title}", fontsize="small")
    FigureCanvasAgg(figure)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    return path


# ----------------------------------------------------------------------------------------------- cost


def cost_suite(run: LoadedRun, params: Mapping[str, Any], progress: Progress) -> SuiteResult:
    """The training step of the run's configuration timed by the benchmark (mixbench.bench.timing), at the
    recipe's batch size (or ``batch_size``) and training resolution, on synthetic images: no weights read."""
    from mixbench.bench.timing import bench_row
    from mixbench.provenance import device_name

    cfg = run.training_config(batch_size=params.get("batch_size"))
    row = bench_row(cfg, run.runtime, steps=int(params["steps"]), warmup=int(params["warmup"]))
    if row.status != "ok":
        raise ConfigError(f"the cost of {run.title} could not be measured: {row.note}")
    step = {
        "params": row.model_params,
        "method_params": row.method_params,
        "trained_params": row.model_params + row.method_params,  # what AlignMixup T2's column counts
        "ms_per_batch": row.step_ms,
        "images_per_s": row.images_per_s,
        "peak_memory_mb": row.peak_memory_mb,
        "batch_size": int(cfg.schedule.batch_size),
        "image_size": run.image_size,
        "device": device_name(run.runtime.device),
        "precision": run.runtime.precision,
        "host_syncs_per_step": row.host_syncs_per_step,
    }
    return SuiteResult(networks={}, data={"images": "synthetic", "image_size": run.image_size}, step=step)


SUITES: dict[str, Callable[[LoadedRun, Mapping[str, Any], Progress], SuiteResult]] = {
    "fgsm": _attack_suite("fgsm"),
    "pgd": _attack_suite("pgd"),
    "calibration": calibration_suite,
    "ood": ood_suite,
    "corruption": corruption_suite,
    "occlusion": occlusion_suite,
    "wsol": wsol_suite,
    "cost": cost_suite,
}
"""Suite name -> function; the names of ``configs/eval/`` (``all`` selects every one)."""

READS_WEIGHTS = {name: name != "cost" for name in SUITES}
"""Whether a suite evaluates trained weights (``cost`` times the training step from the configuration)."""
