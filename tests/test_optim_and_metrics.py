"""Recipes' optimizers and lr schedules (the shipped YAML files), the headline metric, atomic checkpoints,
and seed derivation."""

from __future__ import annotations

import pickle
import statistics

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mixbench.atomic import atomic_save, atomic_write_json, load_checkpoint
from mixbench.config import CONFIG_DIR
from mixbench.engine.optim import build_lr_schedule, build_optimizer, parameter_groups
from mixbench.metrics import median_last_k, topk_correct
from mixbench.models import build_model
from mixbench.rng import MixRandom, derive_seed
from mixbench.rundir import summary_scores

UPE = 10  # updates per epoch


def schedule_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONFIG_DIR / "schedule" / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("r18", num_classes=10, image_size=16, width=4)


def lr_curve(name: str, epochs: list[float]) -> list[float]:
    """lr after ``step_update(epoch * UPE)`` for each epoch of the shipped schedule ``name``."""
    cfg = schedule_cfg(name)
    optimizer = build_optimizer(parameter_groups(tiny_model(), cfg.optimizer), cfg.optimizer)
    scheduler = build_lr_schedule(optimizer, cfg, updates_per_epoch=UPE)
    lrs = []
    for epoch in epochs:
        scheduler.step_update(round(epoch * UPE))
        group_lrs = {g["lr"] for g in optimizer.param_groups}
        assert len(group_lrs) == 1, "parameter groups got different learning rates"
        lrs.append(group_lrs.pop())
    return lrs


# ------------------------------------------------------------------------------------------ lr schedules


def test_alignmix_cifar_step_schedule_decays_tenfold_at_500_1000_1500() -> None:
    epochs = [0, 1, 250, 499, 500, 501, 999, 1000, 1499, 1500, 1999]
    expected = [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4]
    assert lr_curve("alignmix_cifar", epochs) == pytest.approx(expected, rel=1e-9)


def test_alignmix_cifar_last_update_before_a_milestone_keeps_the_previous_lr() -> None:
    # the trainer calls step_update(epoch * steps + step) before each update: this is epoch 499's last one
    # (timm's multistep scheduler alone would already decay here; mixbench shifts its milestones)
    assert lr_curve("alignmix_cifar", [500 - 1 / UPE, 500]) == pytest.approx([0.1, 0.01], rel=1e-9)


def test_openmixup_cifar_cosine_from_base_lr_to_zero_monotone() -> None:
    epochs = [e / 2 for e in range(0, 1601)]  # 0 .. 800 in half epochs
    lrs = lr_curve("openmixup_cifar", epochs)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[epochs.index(400)] == pytest.approx(0.05, abs=1e-4)
    assert lrs[epochs.index(200)] == pytest.approx(0.05 * (1 + 2**-0.5), abs=1e-4)
    assert lrs[-2] < 1e-5 and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)), "cosine is not non-increasing"


def test_vit_cifar_linear_warmup_from_1e6_then_cosine_to_min_lr() -> None:
    warm = [0, 5, 10, 15, 19.9]
    lrs = lr_curve("vit_cifar", warm)
    assert lrs[0] == pytest.approx(1e-6, rel=1e-6)
    slope = (5e-4 - 1e-6) / (20 * UPE)
    for epoch, lr in zip(warm, lrs, strict=True):
        assert lr == pytest.approx(1e-6 + slope * epoch * UPE, rel=1e-6), "warm-up is not linear"
    after = [20 + e / 2 for e in range(0, 361)]  # 20 .. 200
    cosine = lr_curve("vit_cifar", after)
    assert cosine[0] >= 0.95 * 5e-4, "lr after warm-up is far below the base lr"
    assert all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))
    assert min(cosine) >= 1e-5 - 1e-12
    assert cosine[-1] == pytest.approx(1e-5, rel=1e-3)
    assert cosine[len(cosine) // 2] < 0.6 * 5e-4  # it actually decays


def test_unknown_lr_schedule_raises() -> None:
    cfg = schedule_cfg("alignmix_cifar", **{"lr_schedule.name": "poly"})
    optimizer = build_optimizer(parameter_groups(tiny_model(), cfg.optimizer), cfg.optimizer)
    with pytest.raises(ValueError, match="step, cosine"):
        build_lr_schedule(optimizer, cfg, updates_per_epoch=UPE)


# ------------------------------------------------------------------------------------ optimizer & groups


def decay_of(model: nn.Module, groups: list[dict]) -> dict[str, float]:
    """Weight decay of each named parameter; fails if a parameter is missing or in two groups."""
    by_id: dict[int, float] = {}
    for group in groups:
        for p in group["params"]:
            assert id(p) not in by_id, "a parameter is in two groups"
            by_id[id(p)] = group["weight_decay"]
    names = dict(model.named_parameters())
    assert len(by_id) == len(names), "some parameters are in no group"
    return {name: by_id[id(p)] for name, p in names.items()}


def test_no_decay_norm_bias_exempts_norm_weights_and_biases_only() -> None:
    model = tiny_model()
    cfg = schedule_cfg("vit_cifar")  # no_decay_norm_bias: true, weight_decay 0.05
    decay = decay_of(model, parameter_groups(model, cfg.optimizer))
    modules = dict(model.named_modules())
    for name, wd in decay.items():
        module = modules[name.rsplit(".", 1)[0]]
        if isinstance(module, nn.BatchNorm2d) or name.endswith(".bias"):
            assert wd == 0.0, name
        else:
            assert isinstance(module, (nn.Conv2d, nn.Linear))
            assert wd == pytest.approx(0.05), name
    assert any(isinstance(modules[n.rsplit(".", 1)[0]], nn.BatchNorm2d) for n in decay)


def test_without_no_decay_norm_bias_every_parameter_gets_the_decay() -> None:
    model = tiny_model()
    cfg = schedule_cfg("alignmix_cifar")  # no_decay_norm_bias: false, weight_decay 1e-4
    decays = decay_of(model, parameter_groups(model, cfg.optimizer)).values()
    assert all(wd == pytest.approx(1e-4) for wd in decays)


def test_swin_relative_position_tables_are_exempt_from_decay() -> None:
    with torch.device("meta"):
        model = build_model("swin_t", num_classes=10, image_size=32)
    decay = decay_of(model, parameter_groups(model, schedule_cfg("vit_cifar").optimizer))
    tables = [n for n in decay if "relative_position_bias_table" in n]
    assert tables and all(decay[n] == 0.0 for n in tables)
    assert any(wd == pytest.approx(0.05) for wd in decay.values())


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_takes_lr_momentum_and_nesterov_from_config(nesterov: bool) -> None:
    cfg = schedule_cfg("alignmix_cifar", **{"optimizer.nesterov": nesterov, "optimizer.momentum": 0.8})
    optimizer = build_optimizer(parameter_groups(tiny_model(), cfg.optimizer), cfg.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] is nesterov
    assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["lr"] == 0.1
    assert all(g["weight_decay"] == pytest.approx(1e-4) for g in optimizer.param_groups)


def test_adamw_is_built_for_adamw_recipes_with_group_decay() -> None:
    cfg = schedule_cfg("vit_cifar")
    optimizer = build_optimizer(parameter_groups(tiny_model(), cfg.optimizer), cfg.optimizer)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == pytest.approx(5e-4)
    assert tuple(optimizer.defaults["betas"]) == (0.9, 0.999)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == pytest.approx([0.0, 0.05])


@pytest.mark.parametrize("recipe", ["alignmix_cifar", "vit_cifar"])
def test_the_multi_tensor_optimizer_steps_exactly_like_the_per_parameter_loop(recipe: str) -> None:
    """build_optimizer asks for torch's foreach implementation on the CPU too; five steps with the recipe's
    groups (decay and no-decay) leave every parameter bit-identical to the per-parameter loop's."""
    cfg = schedule_cfg(recipe, **{"optimizer.nesterov": True} if recipe == "alignmix_cifar" else {})
    built, reference = tiny_model(), tiny_model()
    reference.load_state_dict(built.state_dict())
    optimizer = build_optimizer(parameter_groups(built, cfg.optimizer), cfg.optimizer)
    assert all(group["foreach"] for group in optimizer.param_groups)
    loop = build_optimizer(parameter_groups(reference, cfg.optimizer), cfg.optimizer)
    for group in loop.param_groups:
        group["foreach"] = False  # torch's per-parameter implementation
    generator = torch.Generator()
    for step in range(5):
        for model, opt in ((built, optimizer), (reference, loop)):
            generator.manual_seed(step)
            for parameter in model.parameters():
                parameter.grad = torch.randn(parameter.shape, generator=generator)
            opt.step()
    for mine, theirs in zip(built.parameters(), reference.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_unknown_optimizer_raises() -> None:
    cfg = schedule_cfg("alignmix_cifar", **{"optimizer.name": "lamb"})
    with pytest.raises(ValueError, match="sgd, adamw"):
        build_optimizer(parameter_groups(tiny_model(), cfg.optimizer), cfg.optimizer)


# ------------------------------------------------------------------------------------------------ metrics


def test_median_last_k_uses_exactly_the_last_k_values() -> None:
    values = [0.0, 0.0, 10.0, 1.0, 2.0]
    assert median_last_k(values, k=3) == 2.0  # median of [10, 1, 2]; with 4 values it would be 1.5
    assert median_last_k(values, k=4) == 1.5
    assert median_last_k([5.0], k=1) == 5.0


def test_median_last_k_returns_none_with_fewer_than_k_values() -> None:
    assert median_last_k(list(range(9)), k=10) is None
    assert median_last_k([], k=1) is None
    with pytest.raises(ValueError):
        median_last_k([1.0], k=0)


def test_median_last_10_is_mean_of_two_middle_values() -> None:
    last_ten = [7.0, 1.0, 9.0, 3.0, 5.0, 2.0, 8.0, 4.0, 6.0, 0.0]
    values = [1000.0, *last_ten]  # an 11th value would move the median to 5
    assert median_last_k(values, k=10) == 4.5
    assert statistics.median(values) == 5.0


def test_summarize_history_best_last_median_and_prefixed_keys() -> None:
    top1 = [10.0, 30.0, 80.0, 50.0, 60.0, 70.0]
    ema = [5.0, 6.0, 7.0, 90.0, 8.0, 9.0]
    history = [
        {"epoch": i + 1, "top1": t, "ema_top1": e} for i, (t, e) in enumerate(zip(top1, ema, strict=True))
    ]
    summary = summary_scores(history, window=3, labels=("", "ema"))
    assert summary["median_last3_top1"] == 60.0
    assert summary["best_top1"] == 80.0 and summary["best_epoch"] == 3
    assert summary["last_top1"] == 70.0
    assert summary["ema_median_last3_top1"] == 9.0
    assert summary["ema_best_top1"] == 90.0 and summary["ema_best_epoch"] == 4
    assert summary["ema_last_top1"] == 9.0
    assert set(summary) == {
        f"{p}{k}" for p in ("", "ema_") for k in ("median_last3_top1", "best_top1", "best_epoch", "last_top1")
    }


def test_summarize_history_window_longer_than_history_and_empty() -> None:
    summary = summary_scores([{"epoch": 1, "top1": 12.0}], window=10)
    assert summary["median_last10_top1"] is None and summary["best_top1"] == 12.0
    empty = summary_scores([], window=10)
    assert all(v is None for v in empty.values())


def test_topk_correct_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: top-1
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 5: rank 5 -> top-5 only
            [0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # label 6: rank 7 -> neither
            [0.0, 0.3, 0.2, 0.9, 0.0, 0.0, 0.0],  # label 1: rank 2 -> top-5 only
        ]
    )
    labels = torch.tensor([0, 5, 6, 1])
    top1, top5 = topk_correct(logits, labels)
    assert int(top1) == 1 and int(top5) == 3
    assert [int(v) for v in topk_correct(logits, labels, ks=(1, 2, 3))] == [1, 2, 2]


def test_topk_correct_with_fewer_classes_than_k() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.2, 0.1], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    top1, top5 = topk_correct(logits, labels)
    assert int(top1) == 1 and int(top5) == 3  # top-5 of 3 classes holds every label


# -------------------------------------------------------------------------------------------- checkpoints


class NotAllowed:
    """A pickled class: loading it with weights_only=True must be refused."""


def payload() -> dict:
    return {
        "model": {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3, dtype=torch.int64)},
        "epoch": 7,
        "wall_time": 12.5,
        "name": "r18",
        "history": [{"epoch": 1, "top1": 50.0}, [1, 2, [3.0, "x"]]],
        "flag": True,
        "missing": None,
    }


def assert_same(a, b) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


def test_atomic_save_round_trip_leaves_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "sub" / "checkpoint.pt"
    atomic_save(payload(), path)
    assert_same(payload(), load_checkpoint(path))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]
    atomic_save({"epoch": 8}, path)  # overwriting also leaves one file
    assert load_checkpoint(path) == {"epoch": 8}
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_previous_file_and_removes_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save(payload(), path)
    before = path.read_bytes()

    def torn_save(obj, handle, *args, **kwargs):
        handle.write(b"PARTIAL" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 99}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_same(payload(), load_checkpoint(path))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch) -> None:
    """KeyboardInterrupt (not an Exception) mid-write must also clean up."""
    path = tmp_path / "summary.json"
    atomic_write_json({"a": 1}, path)

    def interrupted(obj, handle, *args, **kwargs):
        handle.write(b"{")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"b": 2}, path)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_load_checkpoint_refuses_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------------- seeds


def test_derive_seed_is_deterministic_and_depends_on_every_part() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(*parts) for parts in [(0, 1, 2), (0, 2, 1), (1, 1, 2), (0, 1, 3), (0, 1), (0,)]}
    assert len(seeds) == 6
    epochs = {derive_seed(5, epoch, 1) for epoch in range(200)}
    assert len(epochs) == 200
    assert all(0 <= s < 2**63 for s in epochs)


def test_mixrandom_reseed_replays_scalars_and_permutations() -> None:
    rng = MixRandom(4)
    first = (rng.beta(1.0), rng.integer(0, 100), rng.uniform(), rng.permutation(10).tolist())
    rng.reseed(4)
    again = (rng.beta(1.0), rng.integer(0, 100), rng.uniform(), rng.permutation(10).tolist())
    assert first == again
    rng.reseed(5)
    assert (rng.beta(1.0), rng.integer(0, 100), rng.uniform(), rng.permutation(10).tolist()) != first
