"""Every shipped config composes, and bad input fails early with one line and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mixbench.cli import check_overrides
from mixbench.config import CONFIG_DIR, GROUPS, ConfigError, group_options, validate
from mixbench.data import DATASETS, build_loaders, check_dataset
from mixbench.data.transforms import POLICIES
from mixbench.engine.build import build_model_and_method, check_registered
from mixbench.engine.runtime import Runtime
from mixbench.methods import METHODS
from mixbench.models import MODELS
from tests.helpers import compose_config, tiny_overrides
from tests.helpers.tools import run_tool

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


def _one_line_config_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert isinstance(error.value, ConfigError) and message and "\n" not in message, message
    return message


def test_validate_needs_no_registry_and_the_builders_refuse_an_unknown_augment_policy() -> None:
    """``validate`` checks values only (it imports no registry); the policy is checked by the command line's
    early check, by ``build_model_and_method`` and by the data builder, each in one line."""
    cfg = compose_config(["experiment=quickstart", "schedule.augment=nosuch", "device=cpu"])
    validate(cfg)
    expected = f"unknown schedule.augment 'nosuch'; valid: {', '.join(POLICIES)}"
    with pytest.raises(ConfigError) as error:
        check_registered(cfg)
    assert _one_line_config_error(error) == expected
    with pytest.raises(ConfigError) as error:
        check_overrides(["experiment=quickstart", "schedule.augment=nosuch"])
    assert _one_line_config_error(error) == expected
    with pytest.raises(ConfigError) as error:
        build_model_and_method(cfg, Runtime.cpu())
    assert _one_line_config_error(error) == expected
    with pytest.raises(ConfigError) as error:
        build_loaders(cfg.data, "nosuch", 8, 8, 8, torch.device("cpu"))
    assert _one_line_config_error(error) == expected


@pytest.mark.parametrize(
    ("group", "registry", "name"),
    [("method", METHODS, "vanilla"), ("model", MODELS, "r18"), ("data", DATASETS, "digits")],
)
def test_a_config_file_without_an_implementation_is_refused_in_one_line(
    monkeypatch, group: str, registry: dict, name: str
) -> None:
    """A ``configs/<group>/<name>.yaml`` whose implementation is not registered: the file composes and
    validates, the command line's check and the builders refuse it, listing the registered names."""
    cfg = compose_config(["experiment=quickstart", "device=cpu"])
    assert cfg[group].name == name
    monkeypatch.delitem(registry, name)
    validate(cfg)
    with pytest.raises(ConfigError) as error:
        check_registered(cfg)
    message = _one_line_config_error(error)
    assert message.startswith(f"unknown {group} '{name}'; valid: ") and sorted(registry)[0] in message
    with pytest.raises(ConfigError) as error:
        check_overrides(["experiment=quickstart"])
    assert _one_line_config_error(error) == message
    with pytest.raises(ConfigError) as error:
        build_model_and_method(cfg, Runtime.cpu())
    assert _one_line_config_error(error) == message
    if group == "data":  # the trainer checks the dataset's files first
        with pytest.raises(ConfigError) as error:
            check_dataset(cfg.data)
        assert _one_line_config_error(error) == message


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
        (["method=automix", "method.feature_stage=6"], "cannot run on model r18"),
        (["device=cuda"], "no CUDA GPU is visible"),
        (
            ["method=switch", "method.options={cutmix: {beta: 1.0}}"],
            "method.options.cutmix: method 'cutmix' does not take option(s) beta; valid: alpha",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_makes_no_run_directory(tmp_path: Path, arguments, fragment) -> None:
    """``python tools/train.py`` run in this process (tests/helpers/tools.py): the same script, arguments
    and code path, without a fresh interpreter's seconds of imports.  A real process failing in one line
    (everything it prints) is tests/test_sweep.py's failed job."""
    runs_root = tmp_path / "runs"
    result = run_tool("train", [*tiny_overrides(runs_root), *arguments])
    _assert_one_line_error(result, fragment)
    assert not runs_root.exists()


def test_cli_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    result = run_tool(
        "train",
        ["method=mixup", "model=r18", "data=cifar100", f"data.root={tmp_path}", f"runs_root={runs_root}"],
    )
    _assert_one_line_error(result, str(tmp_path / "cifar-100-python"))
    assert "data.download=true" in result.stderr
    assert not runs_root.exists()


def test_cli_prints_the_composed_config() -> None:
    result = run_tool("train", ["method=mixup", "model=r18", "data=cifar100", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.method.name == "mixup" and printed.data.name == "cifar100" and printed.model.name == "r18"
