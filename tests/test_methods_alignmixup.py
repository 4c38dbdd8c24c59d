"""AlignMixup and AlignMixup/AE: the Sinkhorn solver, the alignment, the training step, the autoencoder.

The solver is checked against a plain exp-domain Sinkhorn and a host-checked loop with the official stopping
rule; the alignment against hand-written formulas (``lam*A + (1-lam)*A'R^T`` and ``lam*A R + (1-lam)*A'``);
the steps by recording what the network is given.  Costs of post-ReLU features with eps 0.1 do not let
Sinkhorn converge in 100 iterations (as in the official code): there only the column marginals are exact,
and the tests say so.  Models are tiny (PreActResNet18 of width 4).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mixbench.data import build_loaders
from mixbench.engine.build import build_model_and_method
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.optim import build_optimizer, parameter_groups
from mixbench.engine.runtime import resolve_runtime
from mixbench.methods import build_method
from mixbench.methods.alignmixup import (
    AlignMixup,
    SinkhornOptions,
    align_mix,
    last_feature_stage,
    pool_to_grid,
    transport_assignment,
)
from mixbench.methods.alignmixup_ae import AlignMixupAE
from mixbench.methods.sinkhorn import finite_logsumexp, log_sinkhorn, squared_euclidean_cost
from mixbench.models import StageUnavailableError, build_model
from mixbench.rng import MixRandom
from tests.helpers import InputOnlyNet, StageRecorder, compose_config, hand_ce

BATCH, SIZE, CLASSES = 6, 32, 10
STABILITY_STEPS, STABILITY_BATCH = 20, 16
LABELS = torch.tensor([0, 1, 2, 3, 3, 1])  # repeated labels: y[perm] must come from the pairing


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def bound(method, seed: int):
    method.bind(MixRandom(seed))
    return method


def images(seed: int = 0, size: int = SIZE, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_r18(size: int = SIZE) -> nn.Module:
    torch.manual_seed(0)
    return build_model("r18", num_classes=CLASSES, image_size=size, width=4)


def relu_features(
    seed: int = 0, batch: int = BATCH, channels: int = 64, grid: int = 4, scale: float = 2.5
) -> torch.Tensor:
    """Post-ReLU-like (B, c, h, w) features whose squared distances are in the hundreds, as measured on
    trained networks: eps 0.1 Sinkhorn does not converge on them."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, channels, grid, grid, generator=g)).relu()


def pairing(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    """A derangement: no sample is paired with itself."""
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    return torch.roll(perm, 1)[torch.argsort(perm)]


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    return (lam * hand_ce(logits, y) + (1 - lam) * hand_ce(logits, y[perm])).mean()


# --------------------------------------------------------------------------------------------- sinkhorn


def exp_domain_sinkhorn(cost: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """Textbook Sinkhorn-Knopp on the Gibbs kernel, in float64: u = a / K v, v = b / K^T u."""
    kernel = torch.exp(-cost.double() / eps)
    rows, cols = cost.shape[1:]
    u = torch.ones(cost.shape[0], rows, dtype=torch.float64)
    v = torch.ones(cost.shape[0], cols, dtype=torch.float64)
    for _ in range(iterations):
        u = (1.0 / rows) / torch.einsum("bij,bj->bi", kernel, v)
        v = (1.0 / cols) / torch.einsum("bij,bi->bj", kernel, u)
    return (u.unsqueeze(-1) * kernel * v.unsqueeze(-2)).float()


def uniform_costs(seed: int, batch: int = 4, rows: int = 5, cols: int = 7) -> torch.Tensor:
    """Well-conditioned rectangular costs in [0, 1) (rectangular: a transposed marginal cannot pass)."""
    return torch.rand(batch, rows, cols, generator=torch.Generator().manual_seed(seed))


def test_log_sinkhorn_equals_exp_domain_sinkhorn_iteration_for_iteration() -> None:
    cost = uniform_costs(0)
    for iterations in (1, 3, 40):
        result = log_sinkhorn(cost, eps=0.5, max_iter=iterations, threshold=0.0, check_every=0)
        torch.testing.assert_close(
            result.plan, exp_domain_sinkhorn(cost, 0.5, iterations), rtol=1e-4, atol=1e-7
        )
        assert result.iterations.tolist() == [iterations] * 4 and not result.converged.any()


def test_the_loops_logsumexp_gives_torchs_bits_on_finite_values() -> None:
    """finite_logsumexp drops torch.logsumexp's guard against infinite maxima (3 launches a call) and keeps
    its operations and their order: the same bits on the loop's inputs, scaled costs of hundreds over eps."""
    generator = torch.Generator().manual_seed(0)
    for scale in (1.0, 5_000.0):
        potentials = torch.randn(64, 1, 16, generator=generator)
        values = -scale * torch.rand(64, 16, 16, generator=generator) + potentials
        for dim in (-1, -2):
            assert torch.equal(finite_logsumexp(values, dim), torch.logsumexp(values, dim=dim))


def test_converged_plans_have_both_uniform_marginals() -> None:
    cost = uniform_costs(1)
    result = log_sinkhorn(cost, eps=0.5, max_iter=500, threshold=1e-7, per_sample=True)
    assert result.converged.all() and (result.iterations < 500).all()
    assert (result.plan >= 0).all()
    torch.testing.assert_close(result.plan.sum(-1), torch.full((4, 5), 1 / 5), rtol=0, atol=1e-6)
    torch.testing.assert_close(result.plan.sum(-2), torch.full((4, 7), 1 / 7), rtol=0, atol=1e-6)


def test_official_loop_on_relu_features_never_converges_columns_exact_rows_not() -> None:
    """The documented behaviour of the default: 100 iterations, R^T 1 = 1 exactly, R 1 far from 1."""
    features = relu_features(0)
    flat = features.flatten(2)
    assignment, result = transport_assignment(flat, flat[pairing(0)], SinkhornOptions())
    assert result.iterations.tolist() == [100] * BATCH and not result.converged.any()
    assert (assignment >= 0).all()
    # float32 rounding of exponents of size |C|/eps ~ 5000 limits "exact" to ~1e-3
    torch.testing.assert_close(assignment.sum(1), torch.ones(BATCH, 16), rtol=0, atol=5e-3)
    assert (assignment.sum(2) - 1).abs().max() > 0.5, "rows are exact: this is not the official loop"


def test_converged_option_gives_doubly_stochastic_assignment_on_the_same_features() -> None:
    features = relu_features(0)
    flat = features.flatten(2)
    assignment, result = transport_assignment(flat, flat[pairing(0)], SinkhornOptions(mode="converged"))
    assert result.converged.all()
    torch.testing.assert_close(assignment.sum(1), torch.ones(BATCH, 16), rtol=0, atol=1e-4)
    torch.testing.assert_close(assignment.sum(2), torch.ones(BATCH, 16), rtol=0, atol=2e-3)


def test_per_sample_batched_solve_equals_solving_each_sample_alone() -> None:
    cost = uniform_costs(2, batch=5) * torch.tensor([0.2, 1.0, 3.0, 8.0, 20.0]).view(5, 1, 1)
    batched = log_sinkhorn(cost, eps=0.3, max_iter=200, threshold=1e-4, per_sample=True)
    assert len(set(batched.iterations.tolist())) > 1, "every sample stopped together: the test is vacuous"
    for index in range(5):
        alone = log_sinkhorn(cost[index : index + 1], eps=0.3, max_iter=200, threshold=1e-4, per_sample=True)
        torch.testing.assert_close(batched.plan[index], alone.plan[0], rtol=1e-5, atol=1e-8)
        assert batched.iterations[index] == alone.iterations[0]


def host_checked_loop(
    cost: torch.Tensor, eps: float, max_iter: int, threshold: float
) -> tuple[torch.Tensor, int]:
    """The official control flow: update u, then v, and break on the host when the batch mean of the summed
    absolute change of u falls below the threshold."""
    u = cost.new_zeros(cost.shape[:2])
    v = cost.new_zeros(cost.shape[0], cost.shape[2])
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        previous = u
        u = (
            eps
            * (
                torch.log(torch.tensor(1 / cost.shape[1]))
                - torch.logsumexp((-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps, dim=-1)
            )
            + u
        )
        v = (
            eps
            * (
                torch.log(torch.tensor(1 / cost.shape[2]))
                - torch.logsumexp((-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps, dim=-2)
            )
            + v
        )
        if (u - previous).abs().sum(-1).mean().item() < threshold:
            break
    return torch.exp((-cost + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps), iterations


@pytest.mark.parametrize("check_every", [0, 1, 3, 10])
def test_masked_stopping_returns_what_the_host_checked_loop_returns(check_every: int) -> None:
    cost = 2.0 * uniform_costs(3, batch=3, rows=6, cols=6)
    expected_plan, expected_iterations = host_checked_loop(cost, eps=0.2, max_iter=60, threshold=1e-3)
    assert 2 < expected_iterations < 60, "the reference loop must stop early for this test to mean anything"
    result = log_sinkhorn(
        cost, eps=0.2, max_iter=60, threshold=1e-3, per_sample=False, check_every=check_every
    )
    assert result.iterations.tolist() == [expected_iterations] * 3
    torch.testing.assert_close(result.plan, expected_plan, rtol=1e-4, atol=1e-7)


VIEW_OPS = {"view", "expand", "unsqueeze", "squeeze", "slice", "select", "transpose", "t", "alias"}


class OperationCounter(TorchDispatchMode):
    """Counts the aten operations that compute (views excluded): the kernels a GPU would launch."""

    count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ not in VIEW_OPS
        return func(*args, **(kwargs or {}))


def test_an_official_iteration_is_its_two_updates_and_the_rule_costs_once_per_block() -> None:
    """Two log-domain updates of 8 kernels each per iteration; the stopping rule is applied after the block
    (at 1a4faac it was 10 more kernels in every iteration: 26)."""
    cost = uniform_costs(4, batch=8, rows=16, cols=16)
    counts = {}
    for iterations in (50, 100):
        with OperationCounter() as counter:
            log_sinkhorn(cost, eps=0.1, max_iter=iterations, threshold=0.1, check_every=0)
        counts[iterations] = counter.count
    assert (counts[100] - counts[50]) / 50 == 16
    assert counts[100] - 100 * 16 < 40, counts


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_cost_equals_cdist_squared_and_no_op_builds_a_b_r_r_c_tensor() -> None:
    features = relu_features(1, channels=64, grid=4)
    points = features.flatten(2).transpose(1, 2)  # (B, r=16, c=64)
    partner = points[pairing(1)]
    torch.testing.assert_close(
        squared_euclidean_cost(points, partner), torch.cdist(points, partner) ** 2, rtol=1e-4, atol=1e-2
    )
    broadcast_size = BATCH * 16 * 16 * 64
    with LargestTensor() as record:
        squared_euclidean_cost(points, partner)
        align_mix(features, pairing(1), 0.3, True, SinkhornOptions(max_iter=3))
    assert record.largest <= features.numel(), (
        f"an op made {record.largest} elements (B*r*r*c = {broadcast_size})"
    )


# ------------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("mode", ["official", "converged"])
def test_aligned_vectors_are_weighted_averages_of_the_other_images_vectors(mode: str) -> None:
    """A R: position j of the aligned A is sum_i R_ij a_i with R_ij >= 0 and sum_i R_ij = 1 (the exact side),
    so each aligned vector lies in the per-channel range of A's vectors.  A'R^T has that property only where
    the rows sum to 1 (the converged option)."""
    features, perm, lam = relu_features(2), pairing(2), 0.3
    options = SinkhornOptions(mode=mode)
    flat = features.flatten(2)
    assignment, _ = transport_assignment(flat, flat[perm], options)
    mixed, _ = align_mix(features, perm, lam, False, options)
    aligned = (mixed.flatten(2) - (1 - lam) * flat[perm]) / lam
    torch.testing.assert_close(aligned, torch.bmm(flat, assignment), rtol=1e-4, atol=1e-4)
    low, high = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    slack = 5e-3 * high + 1e-4  # the column sums are exact to float32 rounding (~1e-3)
    assert ((aligned >= low - slack) & (aligned <= high + slack)).all()

    mixed, _ = align_mix(features, perm, lam, True, options)
    aligned_partner = (mixed.flatten(2) - lam * flat) / (1 - lam)
    torch.testing.assert_close(
        aligned_partner, torch.bmm(flat[perm], assignment.transpose(1, 2)), rtol=1e-4, atol=1e-4
    )
    row_sums = assignment.sum(2)
    if mode == "converged":
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=2e-3)
    else:
        assert (row_sums - 1).abs().max() > 0.5


@pytest.mark.parametrize("keep_first_geometry", [True, False])
def test_gradient_reaches_features_through_both_terms_but_never_through_the_plan(keep_first_geometry) -> None:
    features = relu_features(3, channels=16).requires_grad_(True)
    perm, lam = pairing(3), 0.7
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(9))
    mixed, result = align_mix(features, perm, lam, keep_first_geometry, SinkhornOptions())
    assert not result.plan.requires_grad
    (gradient,) = torch.autograd.grad((mixed * weights).sum(), features)

    flat = features.flatten(2)
    constant, _ = transport_assignment(flat, flat[perm], SinkhornOptions())
    if keep_first_geometry:
        surrogate = lam * flat + (1 - lam) * torch.bmm(flat[perm], constant.transpose(1, 2))
    else:
        surrogate = lam * torch.bmm(flat, constant) + (1 - lam) * flat[perm]
    (expected,) = torch.autograd.grad((surrogate.view_as(features) * weights).sum(), features)
    torch.testing.assert_close(gradient, expected, rtol=1e-4, atol=1e-5)
    assert gradient.abs().sum() > 0


@pytest.mark.parametrize("keep_first_geometry", [True, False])
def test_identical_partner_gives_a_diagonal_assignment_and_leaves_features_unchanged(
    keep_first_geometry,
) -> None:
    features = relu_features(4)
    identity = torch.arange(BATCH)
    flat = features.flatten(2)
    assignment, _ = transport_assignment(flat, flat, SinkhornOptions())
    diagonal = torch.diagonal(assignment, dim1=1, dim2=2)
    off_diagonal = assignment.sum(2) - diagonal
    assert (diagonal > 0.99).all() and (off_diagonal < 0.01).all()
    mixed, _ = align_mix(features, identity, 0.4, keep_first_geometry, SinkhornOptions())
    torch.testing.assert_close(mixed, features, rtol=1e-4, atol=1e-4)


def test_keep_a_geometry_under_a_pooling_head_gives_plain_feature_mixup_logits() -> None:
    """Exact column sums make pool(A'R^T) = pool(A'): with PreActResNet18's GAP+linear head right after the
    mix, the A-geometry direction equals plain feature mixup (documented in the module)."""
    model = tiny_r18().eval()
    perm, lam = pairing(4), 0.35
    with torch.no_grad():
        features = relu_features(5, channels=model.feature_channels, scale=4.0)  # the non-converging regime
        mixed, result = align_mix(features, perm, lam, True, SinkhornOptions())
        plain = lam * features + (1 - lam) * features[perm]
        torch.testing.assert_close(
            model.forward_from(mixed, 4), model.forward_from(plain, 4), rtol=1e-3, atol=1e-3
        )
    assert not result.converged.any()


# ------------------------------------------------------------------------------------------ the step


def seed_where(predicate, method_factory=AlignMixup) -> int:
    """The first seed whose first draw satisfies ``predicate``."""
    return next(s for s in range(100) if predicate(bound(method_factory(), s).draw(BATCH)))


def test_half_the_steps_mix_inputs_and_aligned_steps_take_each_direction_half_the_time() -> None:
    method = bound(AlignMixup(), 0)
    draws = [method.draw(BATCH) for _ in range(600)]
    feature_draws = [d for d in draws if not d.input_mix]
    assert 0.43 < 1 - len(feature_draws) / 600 < 0.57
    assert 0.42 < sum(d.keep_first_geometry for d in feature_draws) / len(feature_draws) < 0.58
    assert not any(d.keep_first_geometry for d in draws if d.input_mix)
    assert all(bound(AlignMixup(input_mix_prob=1.0), s).draw(BATCH).input_mix for s in range(20))
    assert not any(bound(AlignMixup(input_mix_prob=0.0), s).draw(BATCH).input_mix for s in range(20))


def test_input_branch_is_input_mixup_with_mixed_cross_entropy(monkeypatch) -> None:
    seed = seed_where(lambda d: d.input_mix)
    draw = bound(AlignMixup(), seed).draw(BATCH)
    model = tiny_r18()
    record = StageRecorder(model, monkeypatch)
    x = images(2)
    loss, logs = bound(AlignMixup(), seed).training_step(model, x, LABELS)
    assert [(kind, stage) for kind, stage, _ in record.calls] == [("features", 0), ("from", 0)]
    torch.testing.assert_close(record.calls[0][2], draw.lam * x + (1 - draw.lam) * x[draw.perm])
    torch.testing.assert_close(loss.detach(), mixed_ce(record.logits, LABELS, draw.perm, draw.lam))
    assert float(logs["feature_mix"]) == 0.0


@pytest.mark.parametrize("keep_first_geometry", [True, False])
def test_feature_branch_aligns_the_last_stage_and_continues_from_the_mix(
    keep_first_geometry, monkeypatch
) -> None:
    seed = seed_where(lambda d: not d.input_mix and d.keep_first_geometry == keep_first_geometry)
    draw = bound(AlignMixup(), seed).draw(BATCH)
    model = tiny_r18()
    record = StageRecorder(model, monkeypatch)
    loss, logs = bound(AlignMixup(), seed).training_step(model, images(3), LABELS)
    assert [(kind, stage) for kind, stage, _ in record.calls] == [("features", 4), ("from", 4)]
    features, mixed = record.calls[0][2], record.calls[1][2]
    # the expected mix, by hand: cdist cost, the solver, and the paper's formulas
    points = features.flatten(2)
    cost = torch.cdist(points.transpose(1, 2), points[draw.perm].transpose(1, 2)) ** 2
    assignment = log_sinkhorn(cost, eps=0.1, max_iter=100, threshold=0.1).plan * 16
    lam = draw.lam
    if keep_first_geometry:
        expected = lam * points + (1 - lam) * torch.bmm(points[draw.perm], assignment.transpose(1, 2))
    else:
        expected = lam * torch.bmm(points, assignment) + (1 - lam) * points[draw.perm]
    torch.testing.assert_close(mixed, expected.view_as(features), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(loss.detach(), mixed_ce(record.logits, LABELS, draw.perm, lam))
    assert float(logs["feature_mix"]) == 1.0 and float(logs["keep_a_geometry"]) == float(keep_first_geometry)
    assert 1 <= float(logs["sinkhorn_iterations"]) <= 100


@pytest.mark.parametrize("name", ["alignmixup", "alignmixup_ae"])
def test_same_seed_gives_the_same_loss_whatever_the_global_torch_seed(name: str) -> None:
    losses = []
    for global_seed in (1, 12345):
        for seed in range(3):  # several seeds: both branches / several levels are exercised
            model = tiny_r18()
            method = build_method(name, image_size=SIZE) if name == "alignmixup_ae" else build_method(name)
            torch.manual_seed(0)
            method.setup(model, CLASSES)
            bound(method, seed)
            torch.manual_seed(global_seed)
            loss, _ = method.training_step(model, images(4), LABELS)
            losses.append(loss.detach())
    assert all(torch.equal(a, b) for a, b in zip(losses[:3], losses[3:], strict=True))
    assert len({float(v) for v in losses[:3]}) > 1


def test_runs_on_wrn16_8_at_8x8_and_on_resnet50_at_224_px(monkeypatch) -> None:
    for name, size, grid in [("wrn16_8", 32, 8), ("resnet50", 224, 7)]:
        torch.manual_seed(0)
        model = build_model(name, num_classes=CLASSES, image_size=size, width=2)
        record = StageRecorder(model, monkeypatch)
        with torch.no_grad():
            loss, logs = bound(AlignMixup(input_mix_prob=0.0), 0).training_step(
                model, images(5, size, 2), LABELS[:2]
            )
        stage = last_feature_stage(model)
        assert [(kind, k) for kind, k, _ in record.calls] == [("features", stage), ("from", stage)]
        assert record.calls[1][2].shape[-2:] == (grid, grid)
        assert torch.isfinite(loss) and torch.isfinite(logs["row_sum_error"])
        monkeypatch.undo()


@pytest.mark.parametrize("name", ["alignmixup", "alignmixup_ae"])
def test_feature_methods_refuse_a_model_without_a_hidden_feature_map(name: str, swin_meta) -> None:
    with pytest.raises(StageUnavailableError, match="input_only"):
        build_method(name).check_model(InputOnlyNet(SIZE, CLASSES))
    build_method(name).check_model(swin_meta)  # Swin exposes its stages as maps: AlignMix can run on it
    with pytest.raises(StageUnavailableError, match="no strided convolution"):  # patch merging is linear
        build_method(name, remove_last_downsampling=True).check_model(swin_meta)


def test_alignmixup_preview_rows_show_sources_alignments_and_input_mix() -> None:
    model, x = tiny_r18().eval(), images(6)
    preview = bound(AlignMixup(), 0).preview(model, x, LABELS)
    assert list(preview.rows) == [
        "source a",
        "source b",
        "b aligned to a (A'R^T)",
        "a aligned to b (AR)",
        "input mixup",
    ]
    assert all(row.shape == x.shape for row in preview.rows.values())
    assert preview.lam.shape == (BATCH,) and ((0 <= preview.lam) & (preview.lam <= 1)).all()


def test_config_defaults_are_the_constructor_defaults_and_resolve() -> None:
    cfg = compose_config(["method=alignmixup", "data=digits"])
    options = {k: v for k, v in cfg.method.items() if k != "name"}
    assert options == {
        "alpha": 2.0,
        "input_mix_prob": 0.5,
        "eps": 0.1,
        "max_iter": 100,
        "threshold": 0.1,
        "sinkhorn": "official",
        "converged_tol": 1e-3,
        "converged_max_iter": 1000,
        "align": True,
        "mix_grid": None,
        "direction": "random",
        "remove_last_downsampling": False,
        "cuda_graph": True,
    }
    cfg = compose_config(["method=alignmixup_ae", "data=digits"])
    method = build_method("alignmixup_ae", **{k: v for k, v in cfg.method.items() if k != "name"})
    assert method.image_size == 16 and method.levels == ("input", "feature", "embedding")
    with pytest.raises(ValueError, match="sinkhorn"):
        AlignMixup(sinkhorn="exact")
    with pytest.raises(ValueError, match="direction"):
        AlignMixup(direction="both")
    with pytest.raises(ValueError, match="align=false"):
        AlignMixupAE(align=False, direction="keep_a_geometry")
    with pytest.raises(ValueError, match="mix_grid"):
        AlignMixup(mix_grid=0)


# ------------------------------------------------------------------------------- Table 6 ablation options


def test_unaligned_option_mixes_the_feature_maps_position_by_position() -> None:
    """align=false (Table 6's "unaligned" column): lam*A + (1-lam)*A', nothing moved, no Sinkhorn."""
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]])  # (2, 1, 2, 2)
    logs = {}
    mixed = AlignMixup(align=False).mix_features(features, torch.tensor([1, 0]), 0.25, False, logs)
    expected = torch.tensor(
        [
            [[[7.75, 15.5], [23.25, 31.0]]],  # 0.25 * [1, 2, 3, 4] + 0.75 * [10, 20, 30, 40]
            [[[3.25, 6.5], [9.75, 13.0]]],  # 0.25 * [10, 20, 30, 40] + 0.75 * [1, 2, 3, 4]
        ]
    )
    torch.testing.assert_close(mixed, expected)
    assert float(logs["sinkhorn_iterations"]) == 0.0 and float(logs["row_sum_error"]) == 0.0


def test_unaligned_steps_continue_from_plain_feature_mixup_and_read_nothing(monkeypatch) -> None:
    model = tiny_r18()
    draw = bound(AlignMixup(input_mix_prob=0.0, align=False), 0).draw(BATCH)
    record = StageRecorder(model, monkeypatch)
    with HostSyncCounter("cpu") as syncs:
        _, logs = bound(AlignMixup(input_mix_prob=0.0, align=False), 0).training_step(
            model, images(11), LABELS
        )
    assert syncs.count == 0, syncs.describe()
    features, mixed = record.calls[0][2], record.calls[1][2]
    torch.testing.assert_close(mixed, draw.lam * features + (1 - draw.lam) * features[draw.perm])
    assert float(logs["keep_a_geometry"]) == 0.0 and float(logs["sinkhorn_iterations"]) == 0.0
    monkeypatch.undo()

    model, method = ae_setup(levels=["feature"], reconstruction_prob=0.0, align=False)
    x = images(11, size=16)
    draw = bound(method, 0).draw(BATCH)
    with HostSyncCounter("cpu") as syncs:
        loss, _ = bound(method, 0).training_step(model, x, LABELS)
    assert syncs.count == 0, syncs.describe()
    features = model.forward_features(x, 4)
    plain = draw.lam * features + (1 - draw.lam) * features[draw.perm]
    logits = method.classifier(method.embedding(plain))
    torch.testing.assert_close(loss, mixed_ce(logits, LABELS, draw.perm, draw.lam), rtol=1e-5, atol=1e-6)


def test_mix_grid_pools_to_2x2_before_the_alignment(monkeypatch) -> None:
    """mix_grid=2 (Table 6's A2x2): 4x4 maps are averaged over 2x2 blocks, the cost and R are 4x4 (r = 4)
    and the network continues from the 2x2 mix."""
    costs = []
    original_cost = squared_euclidean_cost

    def recorded_cost(points, partner):
        costs.append(original_cost(points, partner))
        return costs[-1]

    monkeypatch.setattr("mixbench.methods.alignmixup.squared_euclidean_cost", recorded_cost)
    features = relu_features(6, channels=8, grid=4)
    by_hand = features.view(BATCH, 8, 2, 2, 2, 2).mean(dim=(3, 5))  # block (i, j) = rows 2i.., cols 2j..
    torch.testing.assert_close(pool_to_grid(features, 2), by_hand)
    perm, lam = pairing(6), 0.4
    logs = {}
    mixed = AlignMixup(mix_grid=2).mix_features(features, perm, lam, False, logs)
    assert costs[-1].shape == (BATCH, 4, 4)
    expected, _ = align_mix(by_hand, perm, lam, False, SinkhornOptions())
    assert mixed.shape == (BATCH, 8, 2, 2)
    torch.testing.assert_close(mixed, expected)

    model = tiny_r18()
    record = StageRecorder(model, monkeypatch)
    method = AlignMixup(input_mix_prob=0.0, mix_grid=2)
    method.setup(model, CLASSES)
    bound(method, 0).training_step(model, images(12), LABELS)
    assert record.calls[0][2].shape[-2:] == (4, 4) and record.calls[1][2].shape[-2:] == (2, 2)
    with pytest.raises(ValueError, match="larger"):
        AlignMixup(mix_grid=8).mix_features(features, perm, lam, True, {})


def test_remove_last_downsampling_gives_an_8x8_last_map_on_r18_at_32_px(monkeypatch) -> None:
    """Table 6's A8x8: the last stage at stride 1, for training and for evaluation (same weights)."""
    model = tiny_r18()
    keys = {key: value.shape for key, value in model.state_dict().items()}
    method = AlignMixup(input_mix_prob=0.0, remove_last_downsampling=True)
    method.check_model(model)
    method.setup(model, CLASSES)
    block = model.layer4[0]
    assert block.conv1.stride == (1, 1) and block.shortcut.stride == (1, 1)
    assert {key: value.shape for key, value in model.state_dict().items()} == keys
    x = images(13)
    with torch.no_grad():
        assert model.forward_features(x, 4).shape[-2:] == (8, 8)
        assert model.forward_features(x, 3).shape[-2:] == (8, 8)
    record = StageRecorder(model, monkeypatch)
    bound(method, 0).training_step(model, x, LABELS)
    assert record.calls[1][2].shape[-2:] == (8, 8)
    monkeypatch.undo()
    method.check_model(model)  # a second check or setup of the same model is no error
    method.setup(model, CLASSES)

    _, ae = ae_setup(size=32, remove_last_downsampling=True)
    assert ae.decoder.grid == (8, 8)  # D decodes from the 8x8 grid: two up-samplings to 32 px
    with pytest.raises(StageUnavailableError, match="no strided convolution"):
        AlignMixup(remove_last_downsampling=True).check_model(
            build_model("vgg_gap", num_classes=CLASSES, image_size=SIZE, width=8)
        )


@pytest.mark.parametrize("direction", ["keep_a_geometry", "keep_partner_geometry"])
def test_fixed_direction_always_takes_the_same_direction(direction: str, monkeypatch) -> None:
    keep_a = direction == "keep_a_geometry"
    alignmixup_draws = [bound(AlignMixup(direction=direction), seed).draw(BATCH) for seed in range(60)]
    aligned = [d.keep_first_geometry for d in alignmixup_draws if not d.input_mix]
    ae_draws = [bound(AlignMixupAE(direction=direction), seed).draw(BATCH) for seed in range(60)]
    aligned += [d.keep_first_geometry for d in ae_draws if d.level == "feature"]
    assert len(aligned) > 30 and set(aligned) == {keep_a}
    model = tiny_r18()
    record = StageRecorder(model, monkeypatch)
    method = AlignMixup(input_mix_prob=0.0, direction=direction)
    draw = bound(AlignMixup(input_mix_prob=0.0, direction=direction), 1).draw(BATCH)
    _, logs = bound(method, 1).training_step(model, images(14), LABELS)
    features, mixed = record.calls[0][2], record.calls[1][2]
    expected, _ = align_mix(features, draw.perm, draw.lam, keep_a, SinkhornOptions())
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-4)
    assert float(logs["keep_a_geometry"]) == float(keep_a)


@pytest.mark.parametrize(
    "options", [{"mix_grid": 2}, {"remove_last_downsampling": True}, {"direction": "keep_a_geometry"}]
)
def test_ablation_options_add_no_host_read_to_the_aligned_step(options: dict) -> None:
    """No host read, as with the defaults (the official Sinkhorn queues all its iterations)."""
    model = tiny_r18()
    method = AlignMixup(input_mix_prob=0.0, **options)
    method.setup(model, CLASSES)
    with HostSyncCounter("cpu") as syncs:
        bound(method, 2).training_step(model, images(15), LABELS)
    assert syncs.count == 0, syncs.describe()


# ------------------------------------------------------------------------------------------ AlignMixup/AE


def ae_setup(size: int = 16, **options) -> tuple[nn.Module, AlignMixupAE]:
    model = tiny_r18(size)
    torch.manual_seed(1)
    method = AlignMixupAE(image_size=size, **options)
    method.setup(model, CLASSES)
    return model, method


def test_ae_setup_sizes_its_modules_from_the_model_without_touching_it() -> None:
    model = tiny_r18(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = AlignMixupAE(image_size=16, embedding_dim=24)
    method.setup(model, CLASSES)
    assert model.training, "setup must restore the model's mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), (
        "dummy batch changed BN stats"
    )
    assert method.embed.in_features == model.feature_channels and method.embed.out_features == 24
    assert method.feature_norm.num_features == model.feature_channels
    assert method.classifier.out_features == CLASSES
    decoded = method.decoder(torch.randn(BATCH, 24), (16, 16))
    assert decoded.shape == (BATCH, 3, 16, 16)
    groups = method.param_groups(0.1, 1e-4)
    grouped = {id(p) for group in groups for p in group["params"]}
    assert grouped == {id(p) for p in method.parameters()} and grouped
    decoder = {id(p) for p in method.decoder.parameters()}
    for group in groups:  # the decoder alone learns at decoder_lr_scale (0.1) times the run's rate
        in_decoder = {id(p) in decoder for p in group["params"]}
        assert len(in_decoder) == 1 and group["lr"] == pytest.approx(0.01 if in_decoder == {True} else 0.1)


def decoder_gradients(method: AlignMixupAE) -> list[torch.Tensor | None]:
    return [p.grad for p in method.decoder.parameters()]


@pytest.mark.parametrize("level", ["input", "feature", "embedding"])
def test_ae_decoder_learns_only_on_reconstruction_steps_and_only_from_clean_images(level: str) -> None:
    x = images(7, size=16)
    model, method = ae_setup(levels=[level], reconstruction_prob=0.0, reconstruction_weight=0.5)
    loss, logs = bound(method, 0).training_step(model, x, LABELS)
    loss.backward()
    assert all(grad is None for grad in decoder_gradients(method)) and float(logs["reconstruct_step"]) == 0.0

    model, method = ae_setup(levels=[level], reconstruction_prob=1.0, reconstruction_weight=0.5)
    loss, logs = bound(method, 0).training_step(model, x, LABELS)
    loss.backward()
    step_gradients = [grad.clone() for grad in decoder_gradients(method)]
    method.zero_grad()
    clean = method.embedding(model.forward_features(x, 4))
    reference = 0.5 * F.mse_loss(method.decoder(clean, (16, 16)), x)
    reference.backward()
    for got, expected in zip(step_gradients, decoder_gradients(method), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logs["reconstruction"], reference.detach() / 0.5)


def test_ae_embedding_level_feeds_the_mixed_embedding_to_the_classifier() -> None:
    model, method = ae_setup(levels=["embedding"], reconstruction_prob=0.0)
    x = images(8, size=16)
    draw = bound(method, 3).draw(BATCH)
    loss, logs = bound(method, 3).training_step(model, x, LABELS)
    embedding = method.embedding(model.forward_features(x, 4))
    logits = method.classifier(draw.lam * embedding + (1 - draw.lam) * embedding[draw.perm])
    torch.testing.assert_close(loss, mixed_ce(logits, LABELS, draw.perm, draw.lam), rtol=1e-5, atol=1e-6)
    assert float(logs["level_embedding"]) == 1.0


def test_ae_draws_every_level_of_its_mixing_set() -> None:
    _, method = ae_setup()
    bound(method, 0)
    draws = [method.draw(BATCH) for _ in range(300)]
    shares = {
        level: sum(d.level == level for d in draws) / 300 for level in ("input", "feature", "embedding")
    }
    assert all(0.25 < share < 0.42 for share in shares.values()), shares
    assert 0.13 < sum(d.reconstruct for d in draws) / 300 < 0.27
    with pytest.raises(ValueError, match="levels"):
        AlignMixupAE(levels=["pixels"])


def test_ae_evaluated_network_is_backbone_then_embedding_then_classifier() -> None:
    model, method = ae_setup()
    x = images(9, size=16)
    network = method.eval_models(model)[""]
    network.eval()
    with torch.no_grad():
        method.eval()
        pooled = method.feature_norm(model.forward_features(x, 4).mean(dim=(-2, -1)))
        expected = method.classifier(method.embed(pooled))
        torch.testing.assert_close(network(x), expected)


def test_ae_preview_adds_reconstructions_to_the_alignment_rows() -> None:
    model, method = ae_setup()
    x = images(10, size=16)
    preview = bound(method, 0).preview(model.eval(), x, LABELS)
    assert {"source a", "b aligned to a (A'R^T)", "reconstruction D(e)", "decoded embedding mix"} <= set(
        preview.rows
    )
    assert all(row.shape == x.shape for row in preview.rows.values())


def test_ae_stays_finite_at_the_recipe_rate_on_wrn16_8() -> None:
    """SGD lr 0.1, momentum 0.9 on WRN16-8 (width 8, digits, the decoder on every step): before the decoder's
    slower rate and the BatchNorm before f, the reconstruction loss overshot (to about 100 within three dozen
    steps) and its gradient sent the classifier to NaN.

    Batches of 16 keep it cheap and make the overshoot come sooner: with the decoder at the run's rate
    (``method.decoder_lr_scale=1``) the reconstruction loss reaches 22 at step 3 and 97 at step 4, and the
    loss is NaN from step 16; at its 0.1 it stays at most 1.2 and falls to 0.6 by step 20."""
    cfg = compose_config(
        [
            "experiment=quickstart",
            "method=alignmixup_ae",
            "model=wrn16_8",
            "model.width=8",
            "device=cpu",
            "method.reconstruction_prob=1.0",
        ]
    )
    runtime = resolve_runtime(cfg)
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, runtime)
    data = build_loaders(
        cfg.data,
        augment=cfg.schedule.augment,
        batch_size=STABILITY_BATCH,
        eval_batch_size=64,
        input_size=cfg.data.image_size,
        device=runtime.device,
        channels_last=False,
        num_workers=0,
    )
    method.bind(MixRandom(0), total_steps=1000)
    optimizer_cfg = cfg.schedule.optimizer
    assert optimizer_cfg.name == "sgd" and optimizer_cfg.lr == 0.1 and optimizer_cfg.momentum == 0.9
    optimizer = build_optimizer(
        parameter_groups(model, optimizer_cfg) + method.param_groups(0.1, 5e-4), optimizer_cfg
    )
    data.train.set_epoch(0)
    losses, reconstructions = [], []
    for _, (x, y) in zip(range(STABILITY_STEPS), data.train, strict=False):
        loss, logs = method.training_step(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        reconstructions.append(float(logs["reconstruction"]))
    assert len(losses) == STABILITY_STEPS
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert max(reconstructions) < 3.0, reconstructions  # images are normalised: about 1 for a blank decoder
