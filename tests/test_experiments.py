"""Experiment files (configs/experiment/) and the published tables they reproduce (results/paper/,
mixbench.report.published).

Static checks parse the YAML files and the Hydra sweep strings; jobs and cells are compared by the one run
identity of mixbench.rundir; each experiment is composed as ``tools/train.py`` would (once as a whole, once
as the first job of its grid).  Everything here runs in seconds on a CPU.
"""

from __future__ import annotations

import itertools
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR, GROUPS, ConfigError, group_options, validate
from mixbench.methods import METHODS
from mixbench.report import published
from mixbench.rundir import flatten, is_runtime_key, run_identity
from tests.helpers import compose_config

EXPERIMENT_DIR = CONFIG_DIR / "experiment"
# experiments that reproduce no table of results/paper (AdAutoMix's own ImageNet and fine-grained grids: the
# reference file has no table of them)
NON_TABLE_EXPERIMENTS = {"quickstart", "adautomix_imagenet", "adautomix_finegrained"}
# controls (ema= on baselines, min_lr 0 on learned methods): deliberately no published cell; compared through
# tools/table.py --controls (tests/test_controls.py checks their jobs)
CONTROL_EXPERIMENTS = {path.stem for path in (CONFIG_DIR / "experiment").glob("controls_*.yaml")}
NON_TABLE_EXPERIMENTS |= CONTROL_EXPERIMENTS
EXPERIMENTS = sorted(path.stem for path in EXPERIMENT_DIR.glob("*.yaml"))
TABLE_EXPERIMENTS = [name for name in EXPERIMENTS if name not in NON_TABLE_EXPERIMENTS]
TABLES = published.reference_tables()
SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper_tables.yaml"
TRANSCRIBED_KEYS = ("source", "metric", "protocol", "columns", "alpha", "rows")
SEEDS = ["0", "1", "2"]
ROOT_DEFAULTS = {
    key: value
    for entry in OmegaConf.load(CONFIG_DIR / "train.yaml").defaults
    if not isinstance(entry, str)
    for key, value in entry.items()
    if key in GROUPS
}


# ----------------------------------------------------------------------------------------------- helpers


@lru_cache(maxsize=1)
def _parser() -> OverridesParser:
    return OverridesParser.create()


@cache
def experiment_file(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml"))  # type: ignore[return-value]


@cache
def sweep_params(name: str) -> dict[str, list[str]]:
    """``hydra.sweeper.params`` of an experiment, each sweep string expanded with Hydra's own parser."""
    params = experiment_file(name).get("hydra", {}).get("sweeper", {}).get("params", {})
    parser = _parser()
    expanded: dict[str, list[str]] = {}
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        values = (
            list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        )
        expanded[key] = [str(v) for v in values]
    return expanded


def default_choices(name: str) -> dict[str, str]:
    """The groups an experiment selects: ``override /<group>: <option>`` over the root config's defaults."""
    choices = {}
    for entry in experiment_file(name).get("defaults", []):
        for key, value in entry.items():
            choices[key.replace("override ", "").strip().lstrip("/")] = value
    return choices


@cache
def stock(group: str, option: str) -> dict[str, Any]:
    return flatten(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")))


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text)


@cache
def experiment_jobs(name: str) -> list[dict[str, Any]]:
    """Every job of an experiment's grid (seeds collapsed): groups chosen and the options set."""
    body, params = experiment_file(name), sweep_params(name)
    choices = {**ROOT_DEFAULTS, **default_choices(name)}
    swept = {k: v for k, v in params.items() if k != "seed"}
    jobs = []
    for combination in itertools.product(*swept.values()) if swept else [()]:
        job = {group: choices.get(group) for group in GROUPS}
        options = {group: dict(body.get(group) or {}) for group in GROUPS}
        for key, value in zip(swept, combination, strict=True):
            if key in GROUPS:
                job[key] = value
            else:
                group, _, sub = key.partition(".")
                options[group] = published.merge_options(options[group], _nest(sub, _parse_scalar(value)))
        job["options"] = options
        job["root"] = {key: body[key] for key in ("paper_values",) if key in body}  # tables interpolated
        jobs.append(job)
    return jobs


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def job_key(job: dict[str, Any]) -> tuple:
    """The run identity (seed aside) of what a job trains: its configs with the experiment's options."""
    names = {group: job[group] for group in GROUPS}
    options = {
        group: {key: value for key, value in job["options"][group].items() if key != "name"}
        for group in GROUPS
    }
    return published.configuration_of(names, options, job.get("root"))


def cell_key(cell: published.Cell) -> tuple:
    """The run identity (seed aside) of what a cell trains."""
    return published.cell_configuration(cell)


def method_configs_exist(cell: published.Cell) -> bool:
    """The cell's method (and, for a wrapper, its base) has a configs/method file."""
    methods = group_options("method")
    base = cell.options.get("base")
    return cell.method in methods and (base is None or base in methods)


@cache
def published_cells(table: str, accuracy_only: bool = False) -> list[published.Cell]:
    """Runnable cells that have a published number (a top-1 accuracy or error only, if asked)."""
    return [
        c
        for c in published.cells(table)
        if c.runnable
        and published.raw_value(table, c.row, c.column) is not None
        and (
            not accuracy_only
            or published.column_metric(table, c.column) in (published.ACCURACY, published.ERROR)
        )
    ]


# --------------------------------------------------------------------------------------- experiment files


WEIGHTS = "/nonexistent/imagenet_weights.pth"  # validation checks that a path is set; loading happens later


def compose_validated(overrides: list[str]):
    """Compose and validate; a fine-tuning schedule is first refused without weights (one line naming
    model.pretrained_path), then validated with a weights path, as a user would run it."""
    cfg = compose_config(overrides)
    if cfg.schedule.get("requires_pretrained"):
        with pytest.raises(ConfigError, match="set model.pretrained_path="):
            validate(cfg)
        cfg = compose_config([*overrides, f"model.pretrained_path={WEIGHTS}"])
    validate(cfg)
    return cfg


def test_a_fine_tuned_run_matches_its_cell_whatever_its_weights_file() -> None:
    """The weights file of a fine-tuning run is where the ImageNet weights are, not a different recipe."""
    target = published.cell("openmixup_cifar100_tiny_cub", "mixup", "cub200/resnet18")
    cfg = compose_config([*published.cell_overrides(target), f"model.pretrained_path={WEIGHTS}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    assert run_identity(config).configuration == published.cell_configuration(target)
    assert published.matching_cells("openmixup_cifar100_tiny_cub", config)
    elsewhere = {**config, "model": {**config["model"], "pretrained_path": "/other/disk/weights.pth"}}
    assert run_identity(elsewhere).configuration == published.cell_configuration(target)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name: str) -> None:
    cfg = compose_validated([f"experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)
    for group, option in default_choices(name).items():
        assert cfg[group].name == option
    if name in NON_TABLE_EXPERIMENTS:
        return
    assert cfg.reference_table in TABLES, (
        f"{name}: reference_table {cfg.reference_table} is not in results/paper"
    )
    assert cfg.runs_root == f"runs/{name}"
    assert name in published.experiments(cfg.reference_table), f"{cfg.reference_table} does not list {name}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_sets_only_group_options_and_runtime_values(name: str) -> None:
    """What an experiment changes beyond the groups would be part of its runs' identity (mixbench.rundir) but
    of no cell's: jobs and cells are compared by their groups (``job_key``), so nothing else may change."""
    body = experiment_file(name)
    allowed = ("defaults", "hydra", *GROUPS, *(("ema",) if name in CONTROL_EXPERIMENTS else ()))
    others = [key for key in body if key not in allowed and not is_runtime_key(key)]
    assert not others, f"{name}: sets {others}, which no published cell trains"
    swept = [key for key in sweep_params(name) if key.split(".")[0] not in (*GROUPS, "seed")]
    assert not swept, f"{name}: sweeps {swept}, which no published cell trains"


FIRST_EXPERIMENTS = sorted(
    {published.experiments(table)[0] for table in TABLES if published.experiments(table)}
)


@pytest.mark.parametrize("name", FIRST_EXPERIMENTS)
def test_the_first_job_of_an_experiment_trains_a_cell_of_its_table(name: str) -> None:
    """Composed by Hydra as ``tools/train.py -m`` composes the first job of the grid, the run's config has the
    run identity of a published cell (data group and top-level values included); one experiment per table,
    the others are compared through ``job_key``."""
    overrides = [f"experiment={name}", *(f"{key}={values[0]}" for key, values in sweep_params(name).items())]
    cfg = compose_validated(overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    found = published.matching_cells(cfg.reference_table, config)
    assert found, f"{name}: the first job of the grid trains no cell of {cfg.reference_table}"
    assert all(cell_key(target) == run_identity(config).configuration for target in found)


@pytest.mark.parametrize("name", TABLE_EXPERIMENTS)
def test_experiment_file_has_the_package_header_and_a_comment(name: str) -> None:
    lines = (EXPERIMENT_DIR / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith("# ") and ("Table" in lines[1] or "table" in lines[1])
    assert any(f"results/paper/{experiment_file(name)['reference_table']}.yaml" in line for line in lines)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_grid_names_only_existing_configs(name: str) -> None:
    params = sweep_params(name)
    for group, option in default_choices(name).items():
        assert option in group_options(group), f"{name}: defaults name {group} {option}, which has no config"
    for group in GROUPS:
        for option in params.get(group, []):
            assert option in group_options(group), (
                f"{name}: the grid names {group} '{option}', which has no config"
            )
    for base in params.get("method.base", []):
        assert base in group_options("method"), (
            f"{name}: the grid names method.base '{base}', which has no config"
        )
    if name not in NON_TABLE_EXPERIMENTS:
        assert params.get("seed") == SEEDS, f"{name}: the grid must run seeds 0,1,2"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_options_set_by_an_experiment_exist_in_every_config_of_its_grid(name: str) -> None:
    """``method: {alpha: 0.2}`` next to a swept ``method: vanilla,...`` would give vanilla an alpha it
    rejects."""
    body = experiment_file(name)
    for job in experiment_jobs(name):
        for group in ("method", "schedule", "model"):
            reference = stock(group, job[group])
            for key in published.flatten(body.get(group) or {}):
                if group == "method" and key.startswith("base_options."):
                    assert job["method"] == "sumix"
                    continue
                if key.split(".", 1)[0] in reference and reference[key.split(".", 1)[0]] is None:
                    continue  # a mapping set over an option whose default is null (model.adl)
                assert key in reference, (
                    f"{name}: {group}.{key} is not an option of configs/{group}/{job[group]}.yaml"
                )


# ------------------------------------------------------------------------------------- results/paper files


@pytest.mark.parametrize("table", TABLES)
def test_reference_file_is_well_formed(table: str) -> None:
    data = published.load_reference(table)
    assert data["name"] == table and data["source"]
    rows = data["rows"]
    for row, entry in rows.items():
        if isinstance(entry, list):
            assert len(entry) == len(data["columns"]), f"{table}: row {row} has {len(entry)} values"
    columns = data.get("columns") or sorted({c for e in rows.values() if isinstance(e, dict) for c in e})
    for column in columns:
        assert published.column_metric(data, column)
    if "metric" in data:
        assert data["metric"] in (published.ACCURACY, published.ERROR)


@pytest.mark.skipif(
    not SHARED_REFERENCE.is_file(), reason="shared/reference/paper_tables.yaml is not beside the repo"
)
def test_reference_files_are_the_shared_reference_transcribed() -> None:
    shared = yaml.safe_load(SHARED_REFERENCE.read_text())
    assert set(shared) == set(TABLES)
    for table, reference in shared.items():
        data = published.load_reference(table)
        assert {k: data[k] for k in TRANSCRIBED_KEYS if k in data} == reference, table


@pytest.mark.parametrize("table", TABLES)
def test_mapping_names_existing_configs_and_every_row_and_column(table: str) -> None:
    data = published.load_reference(table)
    mapping = data["mixbench"]
    assert set(mapping["rows"]) == set(data["rows"]), f"{table}: mixbench.rows must map every row"
    listed = data.get("columns") or sorted(
        {c for e in data["rows"].values() if isinstance(e, dict) for c in e}
    )
    assert set(mapping["columns"]) == set(listed), f"{table}: mixbench.columns must map every column"
    specs = list(mapping["columns"].values()) + (
        [mapping["single_value"]] if "single_value" in mapping else []
    )
    for spec in specs:
        for group in ("data", "model", "schedule"):
            if spec.get(group) is not None:
                assert spec[group] in group_options(group), f"{table}: {group} '{spec[group]}' has no config"
        if None in (spec.get("data"), spec.get("model"), spec.get("schedule")):
            assert spec.get("reason"), f"{table}: a column without a configuration needs a reason"
    for row, spec in mapping["rows"].items():
        if spec.get("method") is None:
            assert spec.get("reason"), f"{table}: row {row} maps to no method and gives no reason"
            continue
        for target in [spec] + list((spec.get("cells") or {}).values()):
            method = target.get("method", spec["method"])
            assert method in METHODS, (
                f"{table}: row {row} names method '{method}', which mixbench does not implement"
            )
            base = target.get("options", {}).get("base")
            assert base is None or base in METHODS, f"{table}: row {row} names base '{base}'"
        for column in spec.get("cells") or {}:
            assert column in mapping["columns"], f"{table}: row {row} has cells for unknown column {column}"
    for experiment in mapping.get("experiments", []):
        assert experiment in TABLE_EXPERIMENTS, f"{table}: lists experiment '{experiment}', which has no file"


@pytest.mark.parametrize("table", TABLES)
def test_every_runnable_published_cell_is_in_a_grid_of_the_table(table: str) -> None:
    """The table's experiments train every runnable cell with a published accuracy or error.

    Cost-only cells (AlignMixup Table 2's Co-Mixup) need no 300-epoch grid; a method whose config is missing
    is not required yet (this test fails once its config lands, until a grid trains it).
    """
    jobs = {
        job_key(job) for experiment in published.experiments(table) for job in experiment_jobs(experiment)
    }
    missing = [
        f"[{c.row}, {c.column}]"
        for c in published_cells(table, accuracy_only=True)
        if method_configs_exist(c) and cell_key(c) not in jobs
    ]
    assert not missing, f"{table}: no experiment trains {', '.join(missing)}"


@pytest.mark.parametrize("name", TABLE_EXPERIMENTS)
def test_every_job_of_an_experiment_is_a_cell_of_its_table(name: str) -> None:
    table = experiment_file(name)["reference_table"]
    cells = {cell_key(c) for c in published_cells(table)}
    stray = [job_key(job) for job in experiment_jobs(name) if job_key(job) not in cells]
    assert not stray, f"{name}: jobs that match no published cell of {table}: {stray}"


@pytest.mark.parametrize(
    ("table", "row", "column", "expected"),
    [
        (
            "openmixup_cifar100_tiny_cub",
            "cutmix",
            "cifar100/rx50",
            {
                "method.alpha": 0.2,
                "schedule.optimizer.weight_decay": 5.0e-4,
                "schedule.name": "openmixup_cifar",
            },
        ),
        (
            "sumix_eccv24_t1",
            "cutmix+sumix",
            "tiny_imagenet/rx50",
            {
                "method.name": "sumix",
                "method.base": "cutmix",
                "method.base_options.alpha": 0.2,
                "method.gamma": 1.0,
            },
        ),
        (
            "alignmixup_cvpr22_t6_ablation",
            "alignmixup {A}",
            "aligned",
            {"method.name": "alignmixup", "method.input_mix_prob": 0.0, "model.name": "r18"},
        ),
        (
            "openmixup_cifar100_tiny_cub",
            "automix",
            "cub200/rx50",
            {
                "model.name": "rx50_imagenet",
                "schedule.name": "finegrained",
                "schedule.lr_schedule.min_lr": 0.0,
            },
        ),
        (
            "sumix_eccv24_t2_finegrained",
            "cutmix+sumix",
            "aircraft/resnet18",
            {
                "model.name": "resnet18_imagenet",
                "data.name": "aircraft",
                "method.base_options.alpha": 0.2,
                "method.gamma": 1.0,  # the SUMix appendix's gamma (it ran 0.5 before)
            },
        ),
        # AlignMixup T6's ablations: the unaligned column and the 2x2 / 8x8 rows (refused before)
        ("alignmixup_cvpr22_t6_ablation", "alignmixup {A}", "unaligned", {"method.align": False}),
        (
            "alignmixup_cvpr22_t6_ablation",
            "alignmixup_ae {x,A2x2,e}",
            "unaligned",
            {"method.mix_grid": 2, "method.align": False, "method.reconstruction_prob": 0.2},
        ),
        (
            "alignmixup_cvpr22_t6_ablation",
            "alignmixup_ae {x,A8x8,e}",
            "aligned",
            {"method.remove_last_downsampling": True, "method.align": True},
        ),
        # ADL on AlignMixup T5 (a WSOL row refused before)
        (
            "alignmixup_cvpr22_t5_wsol",
            "adl",
            "maxboxacc_v2/resnet50",
            {"model.name": "resnet50", "model.adl.gamma": 0.9, "model.adl.drop_rate": 0.75},
        ),
        # AutoMix's lambda channel on its CUB recipe (the CUB grid ran without it)
        ("openmixup_cifar100_tiny_cub", "automix", "cub200/rx50", {"method.lam_channel": True}),
        ("openmixup_cifar100_tiny_cub", "automix", "cifar100/resnet18", {"method.lam_channel": False}),
        # SUMix's gamma per (dataset, model, base), SUMix appendix A.1 (METHODS.md)
        ("sumix_eccv24_t1", "fmix+sumix", "cifar100/resnet18", {"method.gamma": 1.0}),
        ("sumix_eccv24_t1", "resizemix+sumix", "cifar100/resnet18", {"method.gamma": 0.2}),
        ("sumix_eccv24_t1", "fmix+sumix", "cifar100/rx50", {"method.gamma": 1.0}),
        ("sumix_eccv24_t1", "saliencymix+sumix", "cifar100/rx50", {"method.gamma": 1.0}),
        ("sumix_eccv24_t2_finegrained", "fmix+sumix", "cub200/rx50", {"method.gamma": 0.1}),
        ("sumix_eccv24_t2_finegrained", "saliencymix+sumix", "cub200/rx50", {"method.gamma": 0.2}),
        ("sumix_eccv24_t2_finegrained", "cutmix+sumix", "cub200/resnet18", {"method.gamma": 1.0}),
        ("sumix_eccv24_t2_finegrained", "saliencymix+sumix", "aircraft/resnet18", {"method.gamma": 1.0}),
        ("sumix_eccv24_t5_robustness", "resizemix", "fgsm_err/sumix", {"method.gamma": 0.2}),
        # SUMix T1's ImageNet column: torchvision's ResNet-18, 100 epochs, median of the last 5 epochs
        (
            "sumix_eccv24_t1",
            "fmix+sumix",
            "imagenet/resnet18",
            {
                "model.name": "resnet18_imagenet",
                "schedule.name": "imagenet_100",
                "schedule.metric_window": 5,
                "method.gamma": 0.5,
            },
        ),
    ],
)
def test_cell_overrides_compose_to_the_mapped_configuration(table, row, column, expected) -> None:
    cfg = compose_validated(published.cell_overrides(published.cell(table, row, column)))
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_cells_that_cannot_run_say_why() -> None:
    """A column's, a row's or a cell's reason makes the cell not runnable and is what it says; the real
    tables' remaining refusals each say why in one line."""
    table = {
        "name": "probe",
        "metric": "top1_acc",
        "columns": ["a", "b"],
        "rows": {"x": [1.0, 2.0], "y": [3.0, 4.0]},
        "mixbench": {
            "columns": {
                "a": {"data": "cifar100", "model": "r18", "schedule": "alignmix_cifar"},
                "b": {
                    "data": "cifar100",
                    "model": None,
                    "schedule": "alignmix_cifar",
                    "reason": "no such model",
                },
            },
            "rows": {
                "x": {"method": "mixup", "cells": {"a": {"runnable": False, "reason": "a cell's reason"}}},
                "y": {"method": None, "reason": "a row's reason"},
            },
        },
    }
    assert published.cell(table, "x", "a").reason == "a cell's reason"
    assert published.cell(table, "x", "b").reason == "no such model"
    assert published.cell(table, "y", "a").reason == "a row's reason"
    not_runnable = published.cell(table, "x", "b")
    assert not not_runnable.runnable
    with pytest.raises(ValueError, match="not runnable"):
        published.cell_overrides(not_runnable)
    acol = published.cell("alignmixup_cvpr22_t5_wsol", "acol", "top1_loc/vgg_gap")
    assert not acol.runnable and "two-branch" in acol.reason
    for name in TABLES:
        for target in published.cells(name):
            assert target.runnable or (target.reason and "\n" not in target.reason), (name, target.row)


# ------------------------------------------------------------------------------------------------ loader


def test_error_tables_are_converted_to_accuracy() -> None:
    assert published.load_reference("alignmixup_cvpr22_t1")["metric"] == published.ERROR
    assert published.raw_value("alignmixup_cvpr22_t1", "vanilla", "cifar100/r18") == 23.24
    # exact, not 76.76000000000001
    assert published.published_value("alignmixup_cvpr22_t1", "vanilla", "cifar100/r18") == 76.76
    assert published.published_value("alignmixup_cvpr22_t1", "mixup", "cifar10/r18") == 95.97
    assert published.published_value("alignmixup_cvpr22_t2_imagenet", "alignmixup_ae", "top1_err") == 81.17
    assert published.published_value("alignmixup_cvpr22_t3_robustness", "vanilla", "pgd/cifar10/r18") == 0.01


def test_accuracy_tables_are_returned_as_published() -> None:
    assert published.published_value("openmixup_cifar100_tiny_cub", "cutmix", "cifar100/resnet18") == 78.17
    assert published.published_value("sumix_eccv24_t5_robustness", "fmix", "clean_acc/sumix") == 80.20
    assert (
        published.published_value("sumix_eccv24_t5_robustness", "fmix", "fgsm_err/sumix") == 10.92
    )  # error column


def test_not_reported_is_none_and_unknown_names_fail() -> None:
    assert published.published_value("alignmixup_cvpr22_t2_imagenet", "comixup", "top1_err") is None
    assert published.published_value("openmixup_cifar100_tiny_cub", "gridmix", "tiny_imagenet/rx50") is None
    with pytest.raises(KeyError, match="unknown reference table"):
        published.load_reference("no_such_table")
    with pytest.raises(KeyError, match="no row"):
        published.published_value("alignmixup_cvpr22_t1", "no_such_method", "cifar10/r18")
    with pytest.raises(KeyError, match="no column"):
        published.published_value("alignmixup_cvpr22_t1", "mixup", "imagenet/r18")


def test_quantities_that_are_not_accuracies_are_refused() -> None:
    with pytest.raises(ValueError, match="params_M"):
        published.published_value("alignmixup_cvpr22_t2_imagenet", "vanilla", "params_M")
    with pytest.raises(ValueError, match="auroc"):
        published.published_value("alignmixup_cvpr22_t4_ood", "vanilla", "isun/auroc")
    assert published.raw_value("alignmixup_cvpr22_t2_imagenet", "puzzlemix", "ms_per_batch") == 846


def test_single_number_rows_and_named_columns() -> None:
    table = "alignmixup_cvpr22_t6_ablation"
    assert published.published_value(table, "vanilla") == 76.76
    assert published.published_value(table, "alignmixup {x,A}", "aligned") == 81.71
    with pytest.raises(KeyError, match="single number"):
        published.published_value(table, "vanilla", "aligned")
    assert published.cell(table, "vanilla").model == "r18"


def test_the_tables_agree_where_they_report_the_same_configuration() -> None:
    """Cross-checks of the transcription and of the error/accuracy convention."""
    t1, logs = "alignmixup_cvpr22_t1", "alignmixup_official_logs"
    # the paper's numbers are the best epoch of the logs
    for column in published.load_reference(t1)["columns"]:
        best = published.published_value(logs, "alignmixup_best", column)
        assert published.published_value(t1, "alignmixup", column) == best
    for row in ("vanilla", "manifoldmix", "stylecutmix"):
        single = published.published_value("alignmixup_cvpr22_t6_ablation", row)
        assert single == published.published_value(t1, row, "cifar100/r18")
    for row in ("cutmix", "fmix", "saliencymix", "resizemix"):  # SUMix's base rows are OpenMixup's numbers
        for column in ("cifar100/resnet18", "cifar100/rx50", "tiny_imagenet/resnet18", "tiny_imagenet/rx50"):
            assert published.published_value("sumix_eccv24_t1", row, column) == published.published_value(
                "openmixup_cifar100_tiny_cub", row, column
            )


def test_loaded_tables_are_copies() -> None:
    first = published.load_reference("alignmixup_cvpr22_t1")
    first["rows"]["vanilla"][0] = -1
    assert published.load_reference("alignmixup_cvpr22_t1")["rows"]["vanilla"][0] == 5.19


@pytest.mark.parametrize(
    ("experiment", "overrides", "gamma"),
    [
        ("sumix_t1_cifar100_r18", ["method.base=fmix"], 1.0),
        ("sumix_t1_cifar100_r18", ["method.base=resizemix"], 0.2),
        ("sumix_t1_cifar100_rx50", ["method.base=saliencymix"], 1.0),
        ("sumix_t2_sumix", ["data=cub200", "model=rx50_imagenet", "method.base=fmix"], 0.1),
        ("sumix_t2_sumix", ["data=aircraft", "model=resnet18_imagenet", "method.base=saliencymix"], 1.0),
        ("sumix_t2_sumix_cutmix", ["data=cub200", "model=resnet18_imagenet"], 1.0),
    ],
)
def test_sumix_grids_take_the_gamma_of_each_setting_from_the_appendix(experiment, overrides, gamma) -> None:
    """A grid job's gamma is the SUMix appendix's for its dataset, model and base (the grids ran 0.5), and
    the table it is read from is not part of the run's identity (only the gamma it selects is)."""
    cfg = compose_validated([f"experiment={experiment}", *overrides])
    assert cfg.method.gamma == gamma
    plain = OmegaConf.to_container(cfg, resolve=True)
    without = {key: value for key, value in plain.items() if key != "paper_values"}
    assert run_identity(plain) == run_identity(without)


def test_adautomix_fine_grained_grid_uses_the_papers_weights_and_covers_stanford_cars() -> None:
    """AdAutoMix: a = 0.5, b = 0.1 on CUB, Aircraft and Stanford Cars (b = 0.3 on CIFAR, the default)."""
    for data in ("cub200", "aircraft", "cars"):
        cfg = compose_validated(["experiment=adautomix_finegrained", f"data={data}"])
        assert (cfg.method.mixup_weight, cfg.method.adversarial_weight) == (0.5, 0.1)
    assert "cars" in sweep_params("adautomix_finegrained")["data"]
    assert compose_validated(["method=adautomix"]).method.adversarial_weight == 0.3
    models = sweep_params("adautomix_imagenet")["model"]
    assert models == ["resnet18_imagenet", "resnet34", "resnet50"]
