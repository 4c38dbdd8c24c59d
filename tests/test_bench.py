"""tools/bench.py: one row per requested method and model, vanilla as the reference, honest n/a and skipped
rows, and the host syncs of each row's timed steps."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mixbench.bench import data_path, timing
from mixbench.bench.benchmark import run_benchmark
from mixbench.bench.memory import minor_page_faults
from mixbench.bench.profile import device_busy_ms
from mixbench.bench.report import to_csv, to_markdown, write_report
from mixbench.bench.request import compose_row_configs, resolve_request
from mixbench.bench.results import BenchReport, BenchRow
from mixbench.bench.timing import PreparedRow, bench_row, finish_row, time_round_robin
from mixbench.config import ConfigError
from mixbench.engine.build import build_model_and_method
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.runtime import resolve_runtime
from mixbench.engine.step import build_training_step
from mixbench.methods.mixup import Mixup

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny steps: see tests/conftest.py

BATCH = 4
HERE = Path(__file__).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
# of a table line split at "|": "", model, method, step, images/s, × vanilla, vs, floor, memory, page faults
HOST_SYNCS_COLUMN = 10


def _request(
    methods: str,
    models: str,
    overrides: list[str],
    image_size: int | None = None,
    steps: int = 2,
    warmup: int = 1,
) -> tuple:
    return resolve_request(
        methods,
        models,
        "digits",
        BATCH,
        image_size,
        steps=steps,
        warmup=warmup,
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
        "steps timed: 2 per row, round-robin, after 1 warm-up",
        "git commit:",
    ):
        assert expected in header
    assert "data pipeline is excluded" in markdown_path.read_text()


def test_each_timed_row_counts_its_page_faults_per_step(cnn_report) -> None:
    report, (markdown_path, csv_path) = cnn_report
    timed = [row for row in report.rows if row.status == "ok"]
    assert timed and all(row.page_faults_per_step is not None for row in timed)
    assert all(row.page_faults_per_step >= 0 for row in timed)
    header = next(line for line in markdown_path.read_text().splitlines() if line.startswith("| model |"))
    assert header.split("|")[HOST_SYNCS_COLUMN - 1].strip() == "page faults / step"
    with csv_path.open() as handle:
        assert all(
            line["page_faults_per_step"] != "" for line in csv.DictReader(handle) if line["status"] == "ok"
        )


def test_page_faults_per_step_are_the_mean_over_the_timed_steps(monkeypatch) -> None:
    counts = iter([0, 10, 10, 40])  # two timed steps of one row: 10 then 30 faults
    monkeypatch.setattr(timing, "minor_page_faults", lambda: next(counts))
    monkeypatch.setattr(timing, "timed_step", lambda step, x, y: 0.5)
    step = SimpleNamespace(
        sums=SimpleNamespace(loss=torch.tensor(1.0)), method=SimpleNamespace(solver_graphs=list)
    )
    entry = PreparedRow(BenchRow("r18", "mixup", "ok"), step=step, x=torch.zeros(2, 3, 4, 4), y=None)
    time_round_robin([entry], rounds=2)
    assert finish_row(entry, None).page_faults_per_step == 20


def test_the_commit_is_read_before_the_run_writes_its_profiles(tmp_path: Path, monkeypatch) -> None:
    """A profile written into the repository must not make the header call the tree dirty."""
    from mixbench.bench import benchmark

    events: list[str] = []
    real_provenance, real_write_profile = benchmark.provenance, benchmark.write_profile
    monkeypatch.setattr(
        benchmark, "provenance", lambda device: events.append("commit") or real_provenance(device)
    )
    monkeypatch.setattr(
        benchmark, "write_profile", lambda *args: events.append("profile") or real_write_profile(*args)
    )
    request, runtime = _request("mixup", "r18", ["model.width=4"], steps=1, warmup=0)
    request.profile_dir = tmp_path
    run_benchmark(request, runtime, log=lambda message: None)
    assert events == ["commit", "profile", "profile"]


def test_the_page_fault_count_grows_when_new_memory_is_touched() -> None:
    before = minor_page_faults()
    if before is None:
        pytest.skip("no getrusage on this platform")
    block = bytearray(64 << 20)  # 64 MB of fresh zero-filled pages, touched below
    for index in range(0, len(block), 4096):
        block[index] = 1
    assert minor_page_faults() - before > 1_000


def test_vanilla_is_the_reference_and_timings_are_consistent(cnn_report) -> None:
    report, (markdown_path, csv_path) = cnn_report
    rows = _rows(report)
    vanilla, mixup = rows["r18", "vanilla"], rows["r18", "mixup"]
    assert vanilla.ratio_to_vanilla == 1.0
    assert "| r18 | vanilla |" in markdown_path.read_text() and "| 1.00 |" in markdown_path.read_text()
    assert next(csv.DictReader(csv_path.open()))["ratio_to_vanilla"] == "1.0000"
    for row in (vanilla, mixup):
        assert row.status == "ok" and 0 < row.step_ms_q1 <= row.step_ms_q3 and row.step_ms > 0
        assert row.images_per_s == pytest.approx(BATCH / (row.step_ms / 1000))
    assert mixup.ratio_low <= mixup.ratio_to_vanilla <= mixup.ratio_high
    assert mixup.versus_vanilla() in ("slower", "faster", "same")
    assert vanilla.note.startswith("its own steps' interquartile range: ")  # how steady the device was


def _prepared(seconds: list[float], method: str = "mixup") -> PreparedRow:
    row = BenchRow("r18", method, "ok")
    step = SimpleNamespace(
        sums=SimpleNamespace(loss=torch.tensor(1.0)), method=SimpleNamespace(solver_graphs=list)
    )
    return PreparedRow(row, step, torch.zeros(BATCH, 3, 2, 2), torch.zeros(BATCH), list(seconds))


def test_the_ratio_is_paired_by_round_so_a_drift_between_rounds_cancels() -> None:
    """The device slows down 3x over the rounds: a row costing twice vanilla's step in every round reads 2.0
    with an interval of width 0 whatever the drift; a row twice as dear in two rounds and half as dear in
    three has a ratio of totals below 1 but an interval around 1, so no claim is made for it."""
    drift = [1.0, 1.5, 2.0, 2.5, 3.0]
    vanilla = _prepared(drift, "vanilla")
    double = _prepared([2 * d for d in drift])
    skewed = _prepared([2 * d for d in drift[:2]] + [0.5 * d for d in drift[2:]])
    rows = [finish_row(entry, vanilla) for entry in (vanilla, double, skewed)]
    assert rows[0].ratio_to_vanilla == 1.0 and rows[0].versus_vanilla() == ""
    assert rows[1].ratio_to_vanilla == pytest.approx(2.0)
    assert rows[1].ratio_low == pytest.approx(2.0) and rows[1].ratio_high == pytest.approx(2.0)
    assert rows[1].versus_vanilla() == "slower"
    assert rows[2].ratio_to_vanilla == pytest.approx(8.75 / 10.0)  # totals, not a median of per-round ratios
    assert rows[2].ratio_low < 1.0 < rows[2].ratio_high and rows[2].versus_vanilla() == "same"
    assert rows[1].step_ms == pytest.approx(4000.0) and rows[1].step_ms_q1 == pytest.approx(3000.0)


def test_a_method_with_a_dear_branch_on_some_steps_is_charged_its_mean_step() -> None:
    """A step that mixes on 1 round in 4 at 5x the cost: a run pays 2x per step on average, which the mean
    reports (a median would say 1x)."""
    vanilla = _prepared([1.0] * 8, "vanilla")
    branching = finish_row(_prepared([1.0, 1.0, 1.0, 5.0] * 2), vanilla)
    assert branching.step_ms == pytest.approx(2000.0) and branching.ratio_to_vanilla == pytest.approx(2.0)
    assert branching.images_per_s == pytest.approx(BATCH / 2.0)


def test_a_row_is_claimed_faster_only_when_its_whole_interval_is_below_one() -> None:
    vanilla = _prepared([1.0, 1.0, 1.0, 1.0], "vanilla")
    faster = finish_row(_prepared([0.8, 0.9, 0.85, 0.95]), vanilla)
    borderline = finish_row(_prepared([0.8, 0.9, 1.05, 1.1]), vanilla)
    assert faster.versus_vanilla() == "faster" and faster.ratio_high < 1.0
    assert borderline.ratio_low < 1.0 < borderline.ratio_high and borderline.versus_vanilla() == "same"


def test_rows_are_timed_round_robin_with_a_rotating_order(monkeypatch) -> None:
    calls: list[str] = []

    def recording_step(step, x, y) -> float:
        calls.append(step)
        return 1.0

    monkeypatch.setattr(timing, "timed_step", recording_step)
    entries = [_prepared([], name) for name in ("vanilla", "a", "b")]
    for entry, name in zip(entries, ("vanilla", "a", "b"), strict=True):
        entry.step = name
    time_round_robin(entries, rounds=4)
    assert calls == ["vanilla", "a", "b", "a", "b", "vanilla", "b", "vanilla", "a", "vanilla", "a", "b"]
    assert [len(entry.seconds) for entry in entries] == [4, 4, 4]


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


def test_a_feature_method_on_a_model_without_its_stage_is_listed_as_not_applicable(monkeypatch) -> None:
    """A row whose method needs a hidden stage the model does not expose (here r18 made to expose only its
    input, as an input-only backbone would) is listed as n/a with the reason, not failed; the others run."""
    from mixbench.models.preact_resnet import PreActResNet

    monkeypatch.setattr(PreActResNet, "feature_stages", property(lambda self: (0,)))
    request, runtime = _request("manifoldmix", "r18", ["model.width=4"], image_size=8, steps=1, warmup=0)
    report = run_benchmark(request, runtime, log=lambda message: None)
    rows = _rows(report)
    assert list(rows) == [("r18", "vanilla"), ("r18", "manifoldmix")]
    assert rows["r18", "vanilla"].status == "ok"
    manifold = rows["r18", "manifoldmix"]
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


def test_a_method_variant_is_a_row_of_its_own_with_its_settings(tmp_path: Path) -> None:
    """``name[key=value,...]`` rows: the settings reach that row's config alone, the row and its profile are
    named after the variant, and commas inside brackets or braces do not split rows."""
    specs = "cutmix,sumix[base=puzzlemix],sumix[base=cutmix,base_options={alpha:0.5,prob:1.0}]"
    request, _ = _request(specs, "r18", ["model.width=4"])
    assert request.methods == [
        "vanilla",
        "cutmix",
        "sumix[base=puzzlemix]",
        "sumix[base=cutmix,base_options={alpha:0.5,prob:1.0}]",
    ]
    configs = compose_row_configs(request)
    assert configs["r18", "sumix[base=puzzlemix]"].method.base == "puzzlemix"
    assert configs["r18", specs.split(",", 2)[2]].method.base_options.alpha == 0.5
    assert configs["r18", "cutmix"].method.name == "cutmix" and "base" not in configs["r18", "cutmix"].method
    request, runtime = _request("sumix[base=puzzlemix]", "r18", ["model.width=4"], steps=1, warmup=0)
    request.profile_dir = tmp_path
    report = run_benchmark(request, runtime, log=lambda message: None)
    row = _rows(report)["r18", "sumix[base=puzzlemix]"]
    assert row.status == "ok" and row.step_ms > 0
    assert (tmp_path / "r18" / "sumix-base-puzzlemix.txt").is_file()
    assert "| r18 | sumix[base=puzzlemix] |" in to_markdown(report)


def test_all_with_variants_times_every_method_and_the_variants() -> None:
    from mixbench.methods import METHODS

    request, _ = _request("all,sumix[base=puzzlemix]", "r18", [])
    assert request.methods == ["vanilla", *sorted(set(METHODS) - {"vanilla"}), "sumix[base=puzzlemix]"]


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ("sumix[base=puzzlemix", "leaves a bracket open"),
        ("sumix]", "closes a bracket"),
        ("sumix[puzzlemix]", "not a key=value setting"),
        ("sumix[base=cutmix]x", r"name\[key=value"),
        ("sumx[base=cutmix]", "valid:"),
    ],
)
def test_a_malformed_method_variant_fails_with_one_line(methods: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        _request(methods, "r18", [])
    assert "\n" not in str(error.value)


def test_the_host_syncs_column_is_zero_for_a_step_that_never_reads_the_device(cnn_report) -> None:
    report, (markdown_path, csv_path) = cnn_report
    vanilla = _rows(report)["r18", "vanilla"]
    assert vanilla.host_syncs_per_step == 0 and vanilla.host_sync_sites == {}
    assert vanilla.cuda_syncs_per_step is None  # CUDA's sync debug mode does not run on a CPU
    text = markdown_path.read_text()
    header_line = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert header_line.split("|")[HOST_SYNCS_COLUMN].strip() == "host syncs / step"
    assert "CUDA syncs" not in header_line
    vanilla_line = next(line for line in text.splitlines() if line.startswith("| r18 | vanilla |"))
    assert vanilla_line.split("|")[HOST_SYNCS_COLUMN].strip() == "0"
    assert "Host syncs / step: reads of tensor values on the host" in text  # the column is explained
    first = next(csv.DictReader(csv_path.open()))
    assert first["host_syncs_per_step"] == "0.00" and first["cuda_syncs_per_step"] == ""
    assert first["host_syncs_of"].startswith("reads of tensor values on the host")
    skipped = _rows(report)["r18", "stylemix"]
    assert skipped.host_syncs_per_step is None  # not run, not measured


def test_a_method_reading_once_per_step_shows_one_host_sync_per_step(cnn_report, monkeypatch) -> None:
    """mixup made to read its loss on the host each step: 1.00 per timed step, sited at the reading line."""
    mixup_step = Mixup.training_step

    def reading_step(self, model, x, y):
        loss, logs = mixup_step(self, model, x, y)
        loss.detach().item()  # one host read per step
        return loss, logs

    monkeypatch.setattr(Mixup, "training_step", reading_step)
    request, runtime = _request("mixup", "r18", ["model.width=4"])
    row = bench_row(compose_row_configs(request)["r18", "mixup"], runtime, request.steps, request.warmup)
    site = f"{HERE}:{_line_of('# one host read per step')}"
    assert row.host_syncs_per_step == 1.0 and row.host_sync_sites == {site: 1.0}
    report, _ = cnn_report
    reading = BenchReport(
        [row], report.device, report.slug, report.facts, report.memory_of, report.host_syncs_of
    )
    line = next(line for line in to_markdown(reading).splitlines() if line.startswith("| r18 | mixup |"))
    assert line.split("|")[HOST_SYNCS_COLUMN].strip() == "1.00"
    assert f"host syncs at {site} (1.00/step)" in line
    written = next(csv.DictReader(to_csv(reading).splitlines()))
    assert written["host_syncs_per_step"] == "1.00" and written["host_sync_sites"] == f"{site} (1.00/step)"


def _line_of(text: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


# ------------------------------------------------------------------- the trainer's loop against a bare loop


def test_the_trainer_loop_reads_the_device_only_for_its_finite_check_at_the_epochs_end() -> None:
    """Two epochs of the resident data path (4 batches each): one read per epoch, the trainer's finite check
    at its end (FINITE_CHECK_EVERY is 50), nothing else; the loader reshuffles across the epoch boundary."""
    request, runtime = _request("mixup", "r18", ["model.width=4"])
    cfg = compose_row_configs(request)["r18", "vanilla"]
    one_batch = data_path.trainer_loop(cfg, runtime, dataset_images=4 * BATCH)
    with HostSyncCounter("cpu") as syncs:
        for _ in range(8):
            one_batch()
    assert syncs.count == 2, syncs.describe()
    assert all(site.startswith("mixbench/bench/data_path.py:") for site in syncs.by_site())


def test_the_loop_comparison_pairs_alternating_windows(monkeypatch) -> None:
    """A bare step of 2 ms against a trainer step of 4 ms: half the bare loop's speed, step times right."""

    def sleeping(seconds: float):
        return lambda *args, **kwargs: lambda: time.sleep(seconds)

    monkeypatch.setattr(data_path, "bare_loop", sleeping(0.002))
    monkeypatch.setattr(data_path, "trainer_loop", sleeping(0.004))
    request, runtime = _request("mixup", "r18", ["model.width=4"])
    cfg = compose_row_configs(request)["r18", "vanilla"]
    loop = data_path.compare_loops(cfg, runtime, window=5, windows=4, warmup=1)
    assert loop.share_of_bare == pytest.approx(0.5, rel=0.2)
    assert loop.bare_ms == pytest.approx(2.0, rel=0.3) and loop.trainer_ms == pytest.approx(4.0, rel=0.3)
    assert loop.share_q1 <= loop.share_of_bare <= loop.share_q3
    report = BenchReport([], "CPU", "cpu-test", {"precision": "fp32"}, "memory", "syncs", [loop])
    assert "## The trainer's loop against a bare loop" in to_markdown(report)
    line = next(line for line in to_markdown(report).splitlines() if line.startswith("| r18 | 2."))
    assert line.split("|")[6].strip().startswith("0.")


def test_profiling_a_row_writes_its_top_operators_and_adds_the_launches_column(tmp_path: Path) -> None:
    request, runtime = _request("mixup", "r18", ["model.width=4"], steps=1, warmup=0)
    request.profile_dir = tmp_path
    report = run_benchmark(request, runtime, log=lambda message: None)
    mixup = _rows(report)["r18", "mixup"]
    text = (tmp_path / "r18" / "mixup.txt").read_text()
    assert (
        f"aten operator calls (no kernel launches on a CPU) per step: {mixup.launches_per_step:.0f}" in text
    )
    assert "aten::convolution" in text  # the network's own operators are in the table
    assert mixup.launches_per_step > _rows(report)["r18", "vanilla"].launches_per_step  # mixing adds ops
    header = next(line for line in to_markdown(report).splitlines() if line.startswith("| model |"))
    assert "launches / step" in header
    assert mixup.gpu_busy_ms_per_step is None and "GPU busy" not in header  # no device time on a CPU


def test_gpu_busy_time_is_the_kernels_own_device_time_per_step_in_ms() -> None:
    """Stand-ins for the profiler's averaged CUDA events: 1,500 + 500 + 1,000 us over 2 steps is 1.5 ms a
    step; an event of an older torch without ``self_device_time_total`` is read by its CUDA name."""
    kernels = [
        SimpleNamespace(self_device_time_total=1500.0),
        SimpleNamespace(self_device_time_total=500.0),
        SimpleNamespace(self_cuda_time_total=1000.0),
        SimpleNamespace(self_device_time_total=0.0, self_cuda_time_total=7.0),  # an idle kernel reads 0
    ]
    assert device_busy_ms(kernels, steps=2) == pytest.approx(1.5)
    assert device_busy_ms([], steps=3) == 0.0


def test_a_row_with_gpu_busy_time_adds_its_column_to_the_table_and_the_csv() -> None:
    rows = [
        BenchRow("r18", "vanilla", "ok", step_ms=11.3, launches_per_step=365, gpu_busy_ms_per_step=2.9536),
        BenchRow("r18", "comixup", "ok", step_ms=182.6, launches_per_step=7847, gpu_busy_ms_per_step=19.894),
    ]
    facts = {"precision": "bf16", "channels_last": "true", "batch size": "128", "image size": "32 px"}
    facts |= {"steps timed": "30 per row", "torch": "2.11", "git commit": "5b521f1"}
    report = BenchReport(rows, "NVIDIA H200", "nvidia-h200", facts, "memory", "syncs", [])
    lines = to_markdown(report).splitlines()
    header = next(line for line in lines if line.startswith("| model |")).split("|")
    column = [name.strip() for name in header].index("GPU busy / step (ms)")
    comixup = next(line for line in lines if line.startswith("| r18 | comixup")).split("|")
    assert comixup[column].strip() == "19.89"
    by_method = {row["method"]: row for row in csv.DictReader(to_csv(report).splitlines())}
    assert by_method["vanilla"]["gpu_busy_ms_per_step"] == "2.954"


def test_random_adain_times_the_style_methods_with_stand_in_files_that_then_disappear(monkeypatch) -> None:
    """--random-adain: StyleMix/StyleCutMix rows run (not skipped) on random weights in the release layout,
    say so in their note, and the stand-in files are gone when the benchmark ends."""
    from mixbench.bench import benchmark
    from mixbench.bench import request as request_module
    from mixbench.bench.external_weights import RANDOM_WEIGHTS_NOTE, write_random_adain_files

    written: list[dict[str, str]] = []

    def remember(folder: Path, num_classes: int) -> dict[str, str]:
        files = write_random_adain_files(folder, num_classes)
        written.append(files)
        assert torch.load(files["style_distance_path"], weights_only=True).shape == (10, 10)  # digits: 10
        return files

    monkeypatch.setattr(benchmark, "write_random_adain_files", remember)
    official_overrides = request_module.row_overrides
    monkeypatch.setattr(  # the AdaIN nets at the batch's 16 px, not the official 224 px: cheap
        request_module,
        "row_overrides",
        lambda *args: (
            official_overrides(*args) + (["method.style_size=null"] if args[2] != "vanilla" else [])
        ),
    )
    request, runtime = _request(
        "stylemix,stylecutmix", "r18", ["model.width=4"], image_size=16, steps=1, warmup=0
    )
    request.random_adain = True
    report = run_benchmark(request, runtime, log=lambda message: None)
    rows = _rows(report)
    for method in ("stylemix", "stylecutmix"):  # each given the files its constructor takes
        assert rows["r18", method].status == "ok" and rows["r18", method].step_ms > 0
        assert rows["r18", method].note == RANDOM_WEIGHTS_NOTE
    assert rows["r18", "vanilla"].note != RANDOM_WEIGHTS_NOTE
    assert written and not any(Path(path).exists() for path in written[0].values())
