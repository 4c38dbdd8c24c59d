"""Calibration: the ECE equals torchmetrics' on random logits, hand-computed cases (calibrated, all wrong at
confidence 1, two bins), the bin rule ``lower < c <= upper`` on the edges (where torchmetrics bins the other
way), the bin table's invariants, and the reliability diagram written atomically as a PNG."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from mixbench.evaluation.calibration import (
    CalibrationBin,
    bin_confidences,
    calibration_bins,
    expected_calibration_error,
    expected_calibration_error_of_bins,
    reliability_diagram,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_logits(
    seed: int, sample_count: int, class_count: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits whose confidences spread over many bins, and labels that agree with the argmax often."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(sample_count, class_count, generator=generator)
    labels = torch.randint(0, class_count, (sample_count,), generator=generator)
    agree = torch.rand(sample_count, generator=generator) < 0.6
    labels = torch.where(agree, logits.argmax(dim=1), labels)
    return logits, labels


def probabilities_as_logits(rows: list[list[float]]) -> torch.Tensor:
    """float64 logits whose softmax is ``rows`` (to ~1e-16)."""
    return torch.tensor(rows, dtype=torch.float64).log()


@pytest.mark.parametrize(
    ("seed", "class_count", "scale"),
    [(0, 10, 1.0), (1, 10, 3.0), (2, 100, 2.0), (3, 100, 6.0), (4, 2, 2.0)],
)
def test_ece_equals_torchmetrics_on_random_logits(seed: int, class_count: int, scale: float) -> None:
    logits, labels = random_logits(seed, 1500, class_count, scale)
    n_bins = 15
    confidences = logits.double().softmax(dim=1).max(dim=1).values
    distance_to_edges = (confidences * n_bins - (confidences * n_bins).round()).abs() / n_bins
    assert distance_to_edges.min() > 1e-6  # off the edges, where the two bin rules differ (next test)
    bins = calibration_bins(logits, labels, n_bins)
    assert sum(1 for calibration_bin in bins if calibration_bin.count) >= 5  # a spread, not one bin

    reference = MulticlassCalibrationError(num_classes=class_count, n_bins=n_bins, norm="l1")
    expected = float(reference(logits, labels))
    assert expected_calibration_error(logits, labels) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(logits, labels) > 0.01  # a real miscalibration, not 0 against 0


@pytest.mark.parametrize(
    ("n_bins", "edge", "ours", "torchmetrics_value"),
    [
        # confidences (edge, wrong) and (0.7 or 0.95, correct): one bin here, two bins in torchmetrics
        (4, 0.75, abs(0.5 - (0.75 + 0.7) / 2), (0.75 + 0.3) / 2),
        (15, 1.0, abs(0.5 - (1.0 + 0.95) / 2), (1.0 + 0.05) / 2),
    ],
)
def test_edge_confidence_belongs_to_the_bin_below_where_torchmetrics_takes_the_bin_above(
    n_bins: int, edge: float, ours: float, torchmetrics_value: float
) -> None:
    other = 0.7 if edge < 1 else 0.95
    confidences = torch.tensor([edge, other], dtype=torch.float64)
    bins = bin_confidences(confidences, torch.tensor([False, True]), n_bins)
    (filled,) = [calibration_bin for calibration_bin in bins if calibration_bin.count]
    assert (filled.upper, filled.count) == (edge, 2)
    assert expected_calibration_error_of_bins(bins) == pytest.approx(ours, abs=1e-12)

    # torchmetrics takes values in [0, 1] as probabilities; the edges are exact in float32 and its linspace
    probabilities = torch.tensor([[edge, 1 - edge], [1 - other, other]], dtype=torch.float32)
    reference = MulticlassCalibrationError(num_classes=2, n_bins=n_bins, norm="l1")
    assert float(reference(probabilities, torch.tensor([1, 1]))) == pytest.approx(
        torchmetrics_value, abs=1e-6
    )
    assert abs(ours - torchmetrics_value) > 0.04


def test_every_edge_goes_to_the_bin_below_and_just_above_it_to_the_bin_above() -> None:
    n_bins = 15
    edges = [index / n_bins for index in range(1, n_bins + 1)]
    just_above = [math.nextafter(edge, 2.0) for edge in edges[:-1]]
    confidences = torch.tensor(edges + just_above, dtype=torch.float64)
    bins = bin_confidences(confidences, torch.ones(len(confidences), dtype=torch.bool), n_bins)
    # bin 0 holds the edge 1/15; bin b >= 1 holds the edge (b+1)/15 and the value just above b/15
    assert [calibration_bin.count for calibration_bin in bins] == [1] + [2] * (n_bins - 1)
    assert [calibration_bin.upper for calibration_bin in bins] == edges
    assert bins[0].lower == 0.0 and bins[-1].upper == 1.0


def test_perfectly_calibrated_toy_has_zero_ece() -> None:
    rows = [[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2 + [[1.0 - 1e-300, 1e-300]] * 3
    logits = probabilities_as_logits(rows)
    # conf 0.75: 3 of 4 right; conf 0.5 (argmax takes class 0 on the tie): 1 of 2 right; conf 1: all right
    labels = torch.tensor([0, 0, 0, 1, 0, 1, 0, 0, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-12)
    counts = [calibration_bin.count for calibration_bin in calibration_bins(logits, labels)]
    assert (
        counts[7] == 2 and counts[11] == 4 and counts[14] == 3
    )  # 0.5 in (7/15, 8/15], 0.75 in (11/15, 12/15]


def test_all_wrong_at_confidence_one_has_ece_one() -> None:
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    labels = torch.tensor([1, 2, 0])
    assert expected_calibration_error(logits, labels) == 1.0
    last = calibration_bins(logits, labels)[-1]
    assert (last.count, last.mean_confidence, last.accuracy) == (3, 1.0, 0.0)


def test_two_bins_by_hand() -> None:
    rows = [[0.4, 0.35, 0.25], [0.3, 0.45, 0.25], [0.9, 0.05, 0.05], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]
    labels = torch.zeros(5, dtype=torch.int64)  # right, wrong, right, wrong, right
    low, high = calibration_bins(probabilities_as_logits(rows), labels, n_bins=2)
    assert (low.lower, low.upper, low.count) == (0.0, 0.5, 2)
    assert low.mean_confidence == pytest.approx(0.425) and low.accuracy == 0.5
    assert (high.lower, high.upper, high.count) == (0.5, 1.0, 3)
    assert high.mean_confidence == pytest.approx(0.8) and high.accuracy == pytest.approx(2 / 3)
    expected = 2 / 5 * abs(0.5 - 0.425) + 3 / 5 * abs(2 / 3 - 0.8)  # 0.03 + 0.08
    ece = expected_calibration_error(probabilities_as_logits(rows), labels, n_bins=2)
    assert ece == pytest.approx(expected, abs=1e-12) and ece == pytest.approx(0.11, abs=1e-12)


def test_bin_table_invariants() -> None:
    logits, labels = random_logits(7, 400, 10, 1.5)
    bins = calibration_bins(logits, labels)
    assert len(bins) == 15 and sum(calibration_bin.count for calibration_bin in bins) == 400
    assert [calibration_bin.upper for calibration_bin in bins[:-1]] == [b.lower for b in bins[1:]]
    empty = [calibration_bin for calibration_bin in bins if calibration_bin.count == 0]
    assert empty  # 10 classes: no confidence below 1/10, so the first bin is empty
    assert all(b.mean_confidence is None and b.accuracy is None and b.gap is None for b in empty)
    for calibration_bin in bins:
        if calibration_bin.count:
            assert (
                calibration_bin.lower - 1e-12
                < calibration_bin.mean_confidence
                <= calibration_bin.upper + 1e-12
            )
            correct_in_bin = calibration_bin.accuracy * calibration_bin.count
            assert 0 <= calibration_bin.accuracy <= 1 and correct_in_bin == pytest.approx(
                round(correct_in_bin)
            )
    as_dicts = [dataclasses.asdict(calibration_bin) for calibration_bin in bins]
    assert all(not any(isinstance(v, float) and math.isnan(v) for v in row.values()) for row in as_dicts)


def test_low_precision_and_grad_logits_give_the_float64_answer() -> None:
    logits, labels = random_logits(5, 300, 10, 2.0)
    half = logits.to(torch.bfloat16).requires_grad_()
    assert expected_calibration_error(half, labels) == expected_calibration_error(
        half.detach().double(), labels
    )


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.int64), "shape"),
        (torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64), "at least 2 classes"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), "at least one sample"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64), "labels must have shape"),
        (torch.zeros(4, 3), torch.zeros(4), "integer"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"\[0, 3\)"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), "finite"),
    ],
)
def test_bad_inputs_are_refused(logits: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(logits, labels)


def test_reliability_diagram_writes_a_png_and_nothing_else(tmp_path: Path) -> None:
    logits, labels = random_logits(9, 500, 10, 2.0)
    folder = tmp_path / "eval"
    out = folder / "reliability.png"
    out.parent.mkdir()
    out.write_bytes(b"stale")  # replaced, not appended to
    written = reliability_diagram(calibration_bins(logits, labels), out, "seed 9, 10 classes")
    assert written == out
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    assert sorted(path.name for path in folder.iterdir()) == ["reliability.png"]


def test_reliability_diagram_refuses_an_empty_table_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        reliability_diagram([], tmp_path / "reliability.png", "empty")
    with pytest.raises(ValueError, match="no sample"):
        reliability_diagram([CalibrationBin(0.0, 1.0, 0, None, None)], tmp_path / "reliability.png", "empty")
    assert list(tmp_path.iterdir()) == []
