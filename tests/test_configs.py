"""Every shipped config composes, and bad input fails early with one line and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR, GROUPS, ConfigError, group_options, validate
from mixbench.data import DATASETS
from mixbench.methods import METHODS
from mixbench.models import MODELS
from tests.conftest import compose_config, run_cli, tiny_overrides

REQUIRED_SCHEDULES = {
    "alignmix_cifar",
    "openmixup_cifar",
    "openmixup_tiny",
    "imagenet_100",
    "finegrained",
    "vit_cifar",
}


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_file_is_named_after_itself_and_registered(group: str) -> None:
    registry = {"data": DATASETS, "model": MODELS, "method": METHODS, "schedule": None}[group]
    for option in group_options(group):
        cfg = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
        assert cfg.name == option, f"configs/{group}/{option}.yaml has name {cfg.name}"
        if registry is not None:
            assert option in registry, f"configs/{group}/{option}.yaml has no implementation"


def test_every_registered_model_method_and_dataset_has_a_config() -> None:
    assert set(MODELS) <= set(group_options("model"))
    assert set(METHODS) <= set(group_options("method"))
    assert set(DATASETS) <= set(group_options("data"))


def test_the_recipes_of_the_issue_are_shipped() -> None:
    assert REQUIRED_SCHEDULES <= set(group_options("schedule"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_with_the_defaults_and_validates(group: str) -> None:
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"])
        assert cfg[group].name == option
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        if cfg.schedule.get("requires_pretrained"):  # fine-tuning: refused in one line without weights
            with pytest.raises(ConfigError, match="fine-tunes ImageNet weights: set model.pretrained_path="):
                validate(cfg)
            cfg = compose_config([f"{group}={option}", "model.pretrained_path=/weights.pth"])
        validate(cfg)


def test_schedule_values_come_from_the_recipes() -> None:
    align = compose_config(["schedule=alignmix_cifar"]).schedule
    assert (align.epochs, align.batch_size, align.optimizer.lr, list(align.lr_schedule.milestones)) == (
        2000,
        128,
        0.1,
        [500, 1000, 1500],
    )
    vit = compose_config(["schedule=vit_cifar", "model=swin_t"]).schedule
    assert (vit.optimizer.name, vit.optimizer.weight_decay, vit.grad_clip, vit.label_smoothing) == (
        "adamw",
        0.05,
        10.0,
        0.1,
    )
    assert vit.optimizer.no_decay_norm_bias and vit.train_size == 224


def test_the_users_command_composes() -> None:
    cfg = compose_config(["method=mixup", "model=r18", "data=cifar100"])
    assert (cfg.method.name, cfg.model.name, cfg.data.name, cfg.data.num_classes) == (
        "mixup",
        "r18",
        "cifar100",
        100,
    )
    assert cfg.method.alpha == 1.0


def test_quickstart_experiment_sets_the_embedded_data_and_a_small_model() -> None:
    cfg = compose_config(["experiment=quickstart"])
    assert cfg.data.name == "digits" and cfg.model.width == 16 and cfg.schedule.name == "digits_quick"
    assert cfg.schedule.epochs >= cfg.schedule.metric_window


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("method.alpha=0", "method.alpha must be a positive number"),
        ("method.alpha=-1", "method.alpha must be a positive number"),
        ("schedule.batch_size=1", "batch_size must be at least 2"),
        ("schedule.epochs=5", "below the metric window"),
        ("schedule.optimizer.name=lion", "valid: sgd, adamw"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(override: str, fragment: str) -> None:
    cfg = compose_config(["method=mixup", override])
    with pytest.raises(ConfigError, match=fragment):
        validate(cfg)


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["method=foo"], "unknown method 'foo'; valid: " + ", ".join(group_options("method"))),
        (["-m", "method=mixup,foo"], "unknown method 'foo'"),
        (["model=r1"], "unknown model 'r1'"),
        (["method=mixup", "method.alpha=-0.5"], "method.alpha must be a positive number"),
        (["method.alpha=0.5"], "Key 'alpha' is not in struct"),
        (["schedule.epochz=3"], "Key 'epochz' is not in struct"),
        (["schedule.batch_size=1"], "batch_size must be at least 2"),
        (["model=swin_t", "method=manifoldmix", "model.width=null"], "cannot run on model swin_t"),
        (["device=cuda"], "no CUDA GPU is visible"),
    ],
)
def test_cli_bad_input_is_one_line_and_makes_no_run_directory(tmp_path: Path, arguments, fragment) -> None:
    runs_root = tmp_path / "runs"
    result = run_cli([*tiny_overrides(runs_root), *arguments])
    _assert_one_line_error(result, fragment)
    assert not runs_root.exists()


def test_cli_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    result = run_cli(
        ["method=mixup", "model=r18", "data=cifar100", f"data.root={tmp_path}", f"runs_root={runs_root}"]
    )
    _assert_one_line_error(result, str(tmp_path / "cifar-100-python"))
    assert "data.download=true" in result.stderr
    assert not runs_root.exists()


def test_cli_prints_the_composed_config() -> None:
    result = run_cli(["method=mixup", "model=r18", "data=cifar100", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.method.name == "mixup" and printed.data.name == "cifar100" and printed.model.name == "r18"
