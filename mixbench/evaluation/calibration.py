"""Calibration of a classifier (../shared/reference/RECIPES.md, "Evaluation protocols"): expected calibration
error over 15 equal-width confidence bins, the bin table behind it, and the reliability diagram.

For sample ``i`` with logits ``z_i`` and label ``y_i``, the confidence is the largest softmax probability and
the prediction its class::

    conf_i = max_k softmax(z_i)_k          pred_i = argmax_k z_i          correct_i = [pred_i == y_i]

The interval (0, 1] is cut into ``M`` equal-width bins ``I_m = ((m - 1)/M, m/M]``, m = 1..M (M = 15 by
default).  **Bin rule**: a confidence ``c`` falls in the bin with ``lower < c <= upper``; a confidence that
lies exactly on an edge ``m/M`` belongs to the bin *below* it, and ``c = 1`` to the last bin.  With
``B_m`` the samples whose confidence falls in ``I_m``, ``n_m = |B_m|`` and ``N`` the number of samples::

    acc(B_m)  = (1 / n_m) * sum_{i in B_m} correct_i
    conf(B_m) = (1 / n_m) * sum_{i in B_m} conf_i
    ECE       = sum_m (n_m / N) * |acc(B_m) - conf(B_m)|          (empty bins contribute nothing)

This is the ECE of Naeini, Cooper & Hauskrecht, "Obtaining Well Calibrated Probabilities Using Bayesian
Binning" (AAAI 2015), with the bins and the reliability diagram of Guo, Pleiss, Sun & Weinberger, "On
Calibration of Modern Neural Networks" (ICML 2017), whose ``I_m = ((m-1)/M, m/M]`` is the rule above.

torchmetrics (``MulticlassCalibrationError``, 1.9) bins differently, so the two agree except where a
confidence lies exactly on an edge: it calls ``torch.bucketize(confidences, linspace(0, 1, M + 1),
right=True) - 1``, i.e. ``lower <= c < upper``, which puts a confidence on an edge in the bin *above* and
``c = 1`` in an extra bin of its own; it also rounds confidences to float32 and sums in float32.  Here the
softmax, the confidences and every sum are float64 on the CPU (logits on any device are copied once).

The bin table (:class:`CalibrationBin`) is a list of frozen dataclasses; ``dataclasses.asdict`` turns each
into a JSON-ready dict (an empty bin has ``count`` 0 and ``mean_confidence``/``accuracy`` None, never NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mixbench.atomic import atomic_write

DEFAULT_BIN_COUNT = 15
DIAGRAM_DPI = 110

INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class CalibrationBin:
    """One confidence bin ``(lower, upper]``: how many samples fell in it, their mean confidence and the
    fraction of them predicted correctly (both None when ``count`` is 0)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    @property
    def gap(self) -> float | None:
        """``accuracy - mean_confidence``: negative for an over-confident bin; None for an empty bin."""
        if self.count == 0:
            return None
        return self.accuracy - self.mean_confidence


def confidences_and_correctness(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Max-softmax confidence (float64, CPU) and whether the argmax prediction equals the label (bool, CPU)
    for logits ``(N, C)`` and integer labels ``(N,)``, each on any device."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    sample_count, class_count = logits.shape
    if sample_count == 0:
        raise ValueError("calibration needs at least one sample, got logits of shape (0, C)")
    if class_count < 2:
        raise ValueError(f"logits must have at least 2 classes, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if labels.shape != (sample_count,):
        raise ValueError(
            f"labels must have shape ({sample_count},) to match the logits, got {tuple(labels.shape)}"
        )
    if labels.dtype not in INTEGER_DTYPES:
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")

    logits64 = logits.detach().to(device="cpu", dtype=torch.float64)
    labels_cpu = labels.detach().to(device="cpu", dtype=torch.int64)
    if not torch.isfinite(logits64).all():
        raise ValueError("logits must be finite (found NaN or infinity)")
    if labels_cpu.min() < 0 or labels_cpu.max() >= class_count:
        raise ValueError(
            f"labels must lie in [0, {class_count}), got values in "
            f"[{int(labels_cpu.min())}, {int(labels_cpu.max())}]"
        )
    confidences, predictions = logits64.softmax(dim=1).max(dim=1)
    return confidences, predictions.eq(labels_cpu)


def bin_confidences(
    confidences: Tensor, correct: Tensor, n_bins: int = DEFAULT_BIN_COUNT
) -> list[CalibrationBin]:
    """The bin table of confidences in (0, 1] and their correctness flags, both ``(N,)``, with ``n_bins``
    equal-width bins and the rule ``lower < c <= upper`` (see the module docstring).

    For callers that already hold confidences (probabilities rather than logits); :func:`calibration_bins`
    computes them from logits.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if confidences.dim() != 1 or correct.shape != confidences.shape:
        raise ValueError(
            f"confidences and correct must both have shape (N,), got {tuple(confidences.shape)} "
            f"and {tuple(correct.shape)}"
        )
    if confidences.numel() == 0:
        raise ValueError("calibration needs at least one sample")
    if correct.dtype != torch.bool:
        raise ValueError(f"correct must be a bool tensor, got {correct.dtype}")
    confidences64 = confidences.detach().to(device="cpu", dtype=torch.float64)
    correct_cpu = correct.detach().to(device="cpu")
    if not bool(((confidences64 > 0) & (confidences64 <= 1)).all()):
        raise ValueError("confidences must lie in (0, 1]")

    # bucketize with right=False returns i with inner_edges[i-1] < c <= inner_edges[i]: the bin (lower, upper]
    inner_edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    bin_indices = torch.bucketize(confidences64, inner_edges, right=False)
    counts = torch.bincount(bin_indices, minlength=n_bins).tolist()
    confidence_sums = torch.bincount(bin_indices, weights=confidences64, minlength=n_bins).tolist()
    correct_sums = torch.bincount(
        bin_indices, weights=correct_cpu.to(torch.float64), minlength=n_bins
    ).tolist()

    bins = []
    for index, (count, confidence_sum, correct_sum) in enumerate(
        zip(counts, confidence_sums, correct_sums, strict=True)
    ):
        bins.append(
            CalibrationBin(
                lower=index / n_bins,
                upper=(index + 1) / n_bins,
                count=int(count),
                mean_confidence=confidence_sum / count if count else None,
                accuracy=correct_sum / count if count else None,
            )
        )
    return bins


def calibration_bins(logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BIN_COUNT) -> list[CalibrationBin]:
    """The bin table of logits ``(N, C)`` and labels ``(N,)``: ``n_bins`` equal-width bins over (0, 1], a
    max-softmax confidence ``c`` in the bin with ``lower < c <= upper``, each bin's count, mean confidence and
    accuracy (None for an empty bin).  float64 on the CPU; the inputs may live on any device."""
    confidences, correct = confidences_and_correctness(logits, labels)
    return bin_confidences(confidences, correct, n_bins)


def expected_calibration_error_of_bins(bins: Sequence[CalibrationBin]) -> float:
    """``sum_b |accuracy_b - mean_confidence_b| * count_b / N`` over the bin table (N = all counts)."""
    total_count = sum(calibration_bin.count for calibration_bin in bins)
    if total_count == 0:
        raise ValueError("the bin table holds no sample")
    return math.fsum(abs(b.gap) * b.count for b in bins if b.count) / total_count


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = DEFAULT_BIN_COUNT) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) of logits ``(N, C)`` against labels
    ``(N,)`` with ``n_bins`` equal-width bins and the bin rule ``lower < c <= upper``; in [0, 1]."""
    return expected_calibration_error_of_bins(calibration_bins(logits, labels, n_bins))


def reliability_diagram(bins: Sequence[CalibrationBin], path: str | Path, title: str) -> Path:
    """Draw the bin table as a reliability diagram (Guo et al. 2017, Fig. 1) and write it to ``path`` as a
    PNG, atomically (a temporary file in the same folder, then ``os.replace``); returns the path.

    Top: each bin's accuracy as a bar over ``(lower, upper]``, the gap to its mean confidence shaded, the
    diagonal of perfect calibration, the ECE in the legend.  Bottom: the fraction of samples in each bin.
    """
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,
    )  # here: importing the module needs no matplotlib
    from matplotlib.figure import Figure

    if not bins:
        raise ValueError("the bin table is empty")
    total_count = sum(calibration_bin.count for calibration_bin in bins)
    ece = expected_calibration_error_of_bins(bins)
    filled = [calibration_bin for calibration_bin in bins if calibration_bin.count]
    lefts = [calibration_bin.lower for calibration_bin in filled]
    widths = [calibration_bin.upper - calibration_bin.lower for calibration_bin in filled]

    figure = Figure(figsize=(5, 6.2), layout="constrained")
    reliability_axes, histogram_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    reliability_axes.bar(
        lefts,
        [calibration_bin.accuracy for calibration_bin in filled],
        width=widths,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    reliability_axes.bar(
        lefts,
        [calibration_bin.mean_confidence - calibration_bin.accuracy for calibration_bin in filled],
        bottom=[calibration_bin.accuracy for calibration_bin in filled],
        width=widths,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.6,
        label="gap to mean confidence",
    )
    reliability_axes.plot(
        [0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration"
    )
    reliability_axes.set_xlim(0, 1)
    reliability_axes.set_ylim(0, 1)
    reliability_axes.set_ylabel("accuracy")
    reliability_axes.set_title(title)
    reliability_axes.legend(
        loc="upper left", title=f"ECE {100 * ece:.2f}% ({len(bins)} bins)", fontsize="small"
    )

    histogram_axes.bar(
        [calibration_bin.lower for calibration_bin in bins],
        [calibration_bin.count / total_count for calibration_bin in bins],
        width=[calibration_bin.upper - calibration_bin.lower for calibration_bin in bins],
        align="edge",
        color="tab:gray",
        edgecolor="black",
        linewidth=0.6,
    )
    histogram_axes.set_xlabel("confidence (max softmax probability)")
    histogram_axes.set_ylabel(f"fraction of\n{total_count} samples")

    FigureCanvasAgg(figure)
    path = Path(path)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=DIAGRAM_DPI))
    return path
