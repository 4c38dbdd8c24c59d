"""tools/bench.py: one row per requested method and model, vanilla as the reference, honest n/a and skipped rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mixbench.bench import (
    compose_row_configs,
    resolve_request,
    run_benchmark,
    write_report,
)
from mixbench.config import ConfigError
from mixbench.engine.build import build_model_and_method
from mixbench.engine.runtime import resolve_runtime
from mixbench.engine.step import build_training_step

BATCH = 4


def _request(methods: str, models: str, overrides: list[str], image_size: int | None = None) -> tuple:
    return resolve_request(
        methods,
        models,
        "digits",
        BATCH,
        image_size,
        steps=2,
        warmup=1,
        compile_model=False,
        overrides=["device=cpu", *overrides],
    )


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """mixup, stylemix and AlignMixup/AE (which owns a trainable decoder) on a PreActResNet18 of width 4."""
    request, runtime = _request("mixup,stylemix,alignmixup_ae", "r18", ["model.width=4"])
    report = run_benchmark(request, runtime, log=lambda message: None)
    out = tmp_path_factory.mktemp("bench")
    return report, write_report(report, out)


def _rows(report) -> dict[tuple[str, str], object]:
    return {(row.model, row.method): row for row in report.rows}


def test_files_are_named_by_the_device_and_hold_one_row_per_method(cnn_report) -> None:
    report, (markdown_path, csv_path) = cnn_report
    slug = f"cpu-{torch.get_num_threads()}-threads"
    assert markdown_path.name == f"{slug}.md" and csv_path.name == f"{slug}.csv"
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == [
        "vanilla",
        "mixup",
        "stylemix",
        "alignmixup_ae",
    ]  # vanilla added first
    table_lines = [line for line in markdown_path.read_text().splitlines() if line.startswith("| r18 |")]
    assert [line.split("|")[2].strip() for line in table_lines] == [
        "vanilla",
        "mixup",
        "stylemix",
        "alignmixup_ae",
    ]


def test_the_header_names_device_precision_batch_and_commit(cnn_report) -> None:
    report, (markdown_path, _) = cnn_report
    header = markdown_path.read_text().splitlines()[2]
    for expected in (
        report.device,
        f"torch: {torch.__version__}",
        "precision: fp32",
        "channels_last: false",
        f"batch size: {BATCH}",
        "image size: 16 px",
        "steps timed: 2 after 1 warm-up",
        "git commit:",
    ):
        assert expected in header
    assert "data pipeline is excluded" in markdown_path.read_text()


def test_vanilla_is_the_reference_and_timings_are_consistent(cnn_report) -> None:
    report, (markdown_path, csv_path) = cnn_report
    rows = _rows(report)
    vanilla, mixup = rows["r18", "vanilla"], rows["r18", "mixup"]
    assert vanilla.ratio_to_vanilla == 1.0
    assert "| r18 | vanilla |" in markdown_path.read_text() and "| 1.00 |" in markdown_path.read_text()
    assert next(csv.DictReader(csv_path.open()))["ratio_to_vanilla"] == "1.0000"
    for row in (vanilla, mixup):
        assert row.status == "ok" and row.step_ms > 0
        assert row.images_per_s == pytest.approx(BATCH / (row.step_ms / 1000))
    assert mixup.ratio_to_vanilla == pytest.approx(mixup.step_ms / vanilla.step_ms)
    assert vanilla.note.startswith("re-timed after the other methods: ")  # the check that the speed held


def test_method_params_count_only_the_methods_own_trainable_parts(cnn_report) -> None:
    report, _ = cnn_report
    rows = _rows(report)
    assert rows["r18", "mixup"].method_params == 0
    assert rows["r18", "alignmixup_ae"].method_params > 0  # its decoder
    assert rows["r18", "alignmixup_ae"].model_params == rows["r18", "vanilla"].model_params


def test_a_method_needing_external_weights_is_listed_as_skipped_with_the_reason(cnn_report) -> None:
    report, _ = cnn_report
    stylemix = _rows(report)["r18", "stylemix"]
    assert stylemix.status == "skipped" and stylemix.step_ms is None and stylemix.ratio_to_vanilla is None
    assert stylemix.note.startswith("skipped: ") and "AdaIN" in stylemix.note


def test_a_feature_method_on_a_transformer_is_listed_as_not_applicable(tmp_path: Path) -> None:
    request, runtime = _request("manifoldmix", "swin_t", [], image_size=8)
    report = run_benchmark(request, runtime, log=lambda message: None)
    rows = _rows(report)
    assert list(rows) == [("swin_t", "vanilla"), ("swin_t", "manifoldmix")]
    assert rows["swin_t", "vanilla"].status == "ok"
    manifold = rows["swin_t", "manifoldmix"]
    assert manifold.status == "n/a" and manifold.step_ms is None
    assert manifold.note.startswith("n/a: ") and "stage" in manifold.note


def test_the_timed_step_updates_the_weights_like_a_training_step() -> None:
    request, runtime = _request("mixup", "r18", ["model.width=4"])
    cfg = compose_row_configs(request)["r18", "mixup"]
    model, method = build_model_and_method(cfg, resolve_runtime(cfg))
    step = build_training_step(cfg, runtime, model, method, updates_per_epoch=1)
    before = [p.detach().clone() for p in model.parameters()]
    step(torch.randn(BATCH, 3, 16, 16), torch.arange(BATCH))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.isfinite(step.sums.loss)


@pytest.mark.parametrize(
    ("overrides", "models", "message"),
    [
        (["method=mixup"], "r18", "--methods"),
        (["model.width=4"], "swin_t", "width"),  # fails while planning, before any row is timed
    ],
)
def test_bad_input_fails_with_one_line_before_timing(overrides: list[str], models: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        request, _ = _request("mixup", models, overrides)
        compose_row_configs(request)
    assert "\n" not in str(error.value)


def test_unknown_method_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid:"):
        _request("mixupp", "r18", [])
