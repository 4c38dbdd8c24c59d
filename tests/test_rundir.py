"""Run directories are keyed by configuration: stock configs give bare names, differences are spelled out
(or hashed), runtime keys never count, and ``identity_mismatch`` sees what a resumed run would change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from mixbench.config import CONFIG_DIR
from mixbench.rundir import identity_mismatch, run_directory, run_identity

STOCK = Path("runs/cifar100/r18/vanilla/alignmix_cifar/seed0")


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def folders(*overrides: str) -> tuple[str, ...]:
    return run_directory(composed(*overrides)).parts


def test_stock_config_gives_bare_names() -> None:
    assert run_directory(composed()) == STOCK


def test_model_width_difference_is_spelled_out() -> None:
    assert run_directory(composed("model.width=16")) == Path(
        "runs/cifar100/r18,width=16/vanilla/alignmix_cifar/seed0"
    )


def test_method_choice_and_option_are_spelled_out() -> None:
    assert folders("method=mixup")[3] == "mixup"
    assert folders("method=mixup", "method.alpha=0.2")[3] == "mixup,alpha=0.2"
    assert folders("method=manifoldmix", "method.stages=[1,2]")[3] == "manifoldmix,stages=1-2"
    assert folders("schedule.optimizer.lr=0.05")[4] == "alignmix_cifar,optimizer.lr=0.05"


def test_setting_the_stock_value_explicitly_keeps_the_bare_name() -> None:
    assert run_directory(composed("method=mixup", "method.alpha=1.0")) == Path(
        "runs/cifar100/r18/mixup/alignmix_cifar/seed0"
    )
    assert run_directory(composed("model.width=null")) == STOCK


@pytest.mark.parametrize(
    "override",
    [
        "data.root=/x",
        "device=cpu",
        "num_workers=1",
        "precision=fp32",
        "compile=true",
        "compile_mode=reduce-overhead",
        "eval_batch_size=7",
        "data.download=true",
        "data.resident=false",
        "progress=false",
        "force=true",
    ],
)
def test_runtime_keys_do_not_change_the_path(override: str) -> None:
    assert run_directory(composed(override)) == STOCK


def test_runs_root_moves_the_whole_tree_only() -> None:
    assert run_directory(composed("runs_root=/tmp/elsewhere")) == Path("/tmp/elsewhere") / STOCK.relative_to(
        "runs"
    )


def test_odd_or_long_differences_become_a_short_hash() -> None:
    odd = folders("model=swin_t", "+model.init_from=/weights/swin.pth")[2]  # a path: not folder-safe
    other = folders("model=swin_t", "+model.init_from=/weights/other.pth")[2]
    assert re.fullmatch(r"swin_t,[0-9a-f]{8}", odd), odd
    assert re.fullmatch(r"swin_t,[0-9a-f]{8}", other) and other != odd
    value = "0.12345678901234568"  # 3 x 19 characters: the spelled-out suffix would exceed 60
    long = folders(f"data.mean=[{value},{value},{value}]")[1]
    assert re.fullmatch(r"cifar100,[0-9a-f]{8}", long), long
    assert long != folders(f"data.mean=[{value},{value},0.12345678901234566]")[1]
    assert "/" not in odd and len(long) < 30


def test_seed_folder() -> None:
    assert run_directory(composed("seed=3")) == STOCK.parent / "seed3"


def test_quickstart_experiment_path() -> None:
    assert run_directory(composed("experiment=quickstart")) == Path(
        "runs/quickstart/digits/r18,width=16/vanilla/digits_quick/seed0"
    )
    assert run_directory(composed("experiment=quickstart", "method=cutmix")) == Path(
        "runs/quickstart/digits/r18,width=16/cutmix/digits_quick/seed0"
    )


def test_different_configs_never_share_a_directory() -> None:
    variants = [
        (),
        ("model.width=16",),
        ("model.width=8",),
        ("method=mixup",),
        ("method=cutmix",),
        ("schedule=openmixup_cifar",),
        ("data=cifar10",),
        ("seed=1",),
        ("method=mixup", "method.alpha=0.2"),
    ]
    paths = {run_directory(composed(*v)) for v in variants}
    assert len(paths) == len(variants)


# -------------------------------------------------------------------------------------- identity_mismatch


def test_identity_mismatch_reports_a_changed_schedule_value() -> None:
    saved = OmegaConf.to_container(composed(), resolve=True)
    assert identity_mismatch(saved, composed("schedule.optimizer.lr=0.2")) == ["schedule.optimizer.lr"]
    assert identity_mismatch(saved, composed("schedule.lr_schedule.milestones=[100,200]")) == [
        "schedule.lr_schedule.milestones"
    ]


def test_identity_mismatch_ignores_runtime_keys() -> None:
    saved = OmegaConf.to_container(composed(), resolve=True)
    runtime = composed(
        "data.root=/x", "device=cpu", "num_workers=1", "runs_root=/elsewhere", "precision=bf16"
    )
    assert identity_mismatch(saved, runtime) == []
    both = composed("device=cpu", "num_workers=1", "seed=4")
    assert identity_mismatch(saved, both) == ["seed"]


def test_identity_has_no_runtime_keys_and_keeps_computed_values() -> None:
    stock = run_identity(composed()).as_dict()
    changed = run_identity(composed("schedule.optimizer.lr=0.2", "device=cpu", "data.root=/x")).as_dict()
    for key in ("device", "num_workers", "data.root", "runs_root", "precision"):
        assert key not in stock and key not in changed
    assert "schedule.optimizer.lr" not in stock  # the shipped value: implied by the schedule's name
    assert changed["schedule.optimizer.lr"] == 0.2
    assert changed["method.name"] == "vanilla" and changed["seed"] == 0


def test_pretrained_weights_path_is_where_not_what() -> None:
    """model.pretrained_path is a location (like data.root): the same folder and no mismatch elsewhere."""
    here = composed("model=resnet18_imagenet", "model.pretrained_path=/weights/r18.pth")
    there = composed("model=resnet18_imagenet", "model.pretrained_path=/other/place/r18.pth")
    assert run_directory(here) == run_directory(there) == run_directory(composed("model=resnet18_imagenet"))
    assert identity_mismatch(OmegaConf.to_container(here, resolve=True), there) == []


def test_identity_is_against_the_shipped_file_not_the_saved_one() -> None:
    """A config.yaml saved when a stock default was different is refused (the folder name is the same)."""
    saved = OmegaConf.to_container(composed("method=mixup"), resolve=True)
    saved["method"]["alpha"] = 0.5  # as if configs/method/mixup.yaml had shipped alpha 0.5 back then
    assert identity_mismatch(saved, composed("method=mixup")) == ["method.alpha"]


def test_best_weights_are_read_guarded_and_their_absence_is_one_line(tmp_path: Path) -> None:
    import torch

    from mixbench.rundir import RunDirectory, RunDirectoryError

    run = RunDirectory(tmp_path / "run")
    run.make()
    with pytest.raises(RunDirectoryError, match="best.pt does not exist .*use the last epoch's weights"):
        run.load_best()
    run.best_file.write_bytes(b"not a torch file")
    with pytest.raises(RunDirectoryError, match="best.pt cannot be loaded .*; delete it") as damaged:
        run.load_best()
    assert "\n" not in str(damaged.value)
    torch.save({"epoch": 3, "model": {}}, run.best_file)
    with pytest.raises(RunDirectoryError, match="best.pt lacks top1, method; delete it"):
        run.load_best()
    run.save_best({"epoch": 3, "top1": 50.0, "model": {"w": torch.ones(2)}, "method": {}})
    assert run.load_best()["top1"] == 50.0 and not run.temporary_files()


def test_a_root_value_such_as_ema_gets_a_folder_of_its_own_and_null_is_no_value() -> None:
    """``ema=`` changes what a run measures: its runs do not share the folder of the run without it (they
    would be refused as another configuration); ``ema: null`` is the identity of a config without the key
    (runs made before it existed still match their published cells)."""
    ema = "ema={momentum: 0.999, end_momentum: 0.999999, constant_fraction: 0.1}"
    with_ema = run_directory(composed(ema))
    assert with_ema.parent == STOCK.parent and with_ema.name.startswith("seed0,")
    assert with_ema != STOCK
    plain = OmegaConf.to_container(composed(), resolve=True)
    assert plain["ema"] is None
    without_key = {key: value for key, value in plain.items() if key != "ema"}
    assert run_identity(plain) == run_identity(without_key)
