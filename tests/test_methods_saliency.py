"""Saliency-guided methods: the input-gradient saliency, Puzzle Mix and Co-Mixup.

Saliency is checked against autograd and a closed form; the mixing against saliency maps we choose (the
gradient saliency is bypassed through ``mix_with_saliency``), so that a mask that ignores saliency, a label
ratio that is not the mask's mean, soft targets that are not area shares, or a solver that does no better than
chance makes a test fail.  Models are tiny (PreActResNet18 of width 4, linear nets) on 8-16 px images.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods import build_method
from mixbench.methods.comixup import (
    MIXED_CELL_BONUS,
    CoMixup,
    _solve_output,
    candidate_basis,
    grid_graph,
    label_candidates,
    objective,
    output_energy,
    random_labelling,
    resolve_duplicates,
)
from mixbench.methods.gradient_saliency import (
    add_parameter_gradients,
    input_gradient_saliency,
    pool_saliency,
)
from mixbench.methods.puzzlemix import (
    GridEnergy,
    PuzzleMix,
    _fixed_neighbour_costs,
    build_energy,
    cell_distances,
    minimise_energy,
    move_cells,
    transport_sources,
    viterbi,
)
from mixbench.methods.saliency_guided import serial_on_cpu, upsample_cells
from mixbench.models import build_model
from mixbench.rng import MixRandom
from tests.helpers import FixedLam, LinearNet, compose_config

BATCH, SIZE, CLASSES = 8, 16, 10


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def bound(method, seed: int, rng: MixRandom | None = None):
    method.bind(rng or MixRandom(seed))
    return method


def images(seed: int = 0, batch: int = BATCH, size: int = SIZE, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def blob_maps(batch: int, size: int, grid: int, seed: int) -> torch.Tensor:
    """Saliency maps (B, size, size): one salient grid cell per image, at random, faint noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.rand(batch, grid * grid, generator=g) * 0.05
    cells[torch.arange(batch), torch.randint(grid * grid, (batch,), generator=g)] = 1.0
    return upsample_cells(cells.view(batch, grid, grid), size, size).squeeze(1)


def tiny_r18(size: int = SIZE) -> nn.Module:
    torch.manual_seed(0)
    return build_model("r18", num_classes=CLASSES, image_size=size, width=4)


# ------------------------------------------------------------------------------------------ saliency


def test_saliency_equals_autograd_reference_and_leaves_parameter_grads_untouched() -> None:
    model = tiny_r18().train()
    x, y = images(1), torch.arange(BATCH) % CLASSES
    params = list(model.parameters())
    sentinels = {i: torch.full_like(p, 7.0) for i, p in enumerate(params) if i % 2}
    for i, p in enumerate(params):
        p.grad = sentinels.get(i)
    saliency = input_gradient_saliency(model, x, y)
    for i, p in enumerate(params):
        assert (p.grad is None) if i not in sentinels else torch.equal(p.grad, sentinels[i])
    reference_model = copy.deepcopy(model)
    x_ref = x.clone().requires_grad_(True)
    F.cross_entropy(reference_model(x_ref), y, reduction="sum").backward()
    torch.testing.assert_close(saliency.maps, x_ref.grad.norm(dim=1))
    assert saliency.maps.shape == (BATCH, SIZE, SIZE) and not saliency.logits.requires_grad


def test_saliency_of_a_linear_model_is_the_closed_form_gradient_norm() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = images(2), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    maps = input_gradient_saliency(model, x, y).maps
    with torch.no_grad():
        error = F.softmax(model(x), dim=1) - F.one_hot(y, CLASSES).float()  # dCE/dlogits
        grad = (error @ model.fc.weight).view(BATCH, 3, SIZE, SIZE)  # W^T (p - onehot) per sample
    torch.testing.assert_close(maps, grad.norm(dim=1))


def test_saliency_keeps_the_graph_for_a_clean_loss_only_when_asked() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = images(3), torch.arange(BATCH)
    kept = input_gradient_saliency(model, x, y, keep_graph=True)
    F.cross_entropy(kept.logits, y).backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    assert not input_gradient_saliency(model, x, y).logits.requires_grad


def test_saliency_with_parameters_equals_one_full_backward_and_the_input_only_one() -> None:
    model = tiny_r18().train()
    reference_model = copy.deepcopy(model)
    x, y = images(4), torch.arange(BATCH) % CLASSES
    params = list(model.parameters())
    joint = input_gradient_saliency(model, x, y, parameters=params)
    assert all(p.grad is None for p in params)
    x_ref = x.clone().requires_grad_(True)
    F.cross_entropy(reference_model(x_ref), y, reduction="sum").backward()
    torch.testing.assert_close(joint.maps, x_ref.grad.norm(dim=1))
    for grad, reference in zip(joint.parameter_grads, reference_model.parameters(), strict=True):
        torch.testing.assert_close(grad, reference.grad)
    input_only = input_gradient_saliency(copy.deepcopy(reference_model), x, y)  # same weights, same BN stats
    assert input_only.parameter_grads == ()
    torch.testing.assert_close(input_only.maps, joint.maps)


def test_add_parameter_gradients_keeps_the_value_and_adds_the_gradients_in_the_backward() -> None:
    weight, unused = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    loss = (weight * torch.tensor([1.0, 2.0, 3.0])).sum()
    extra = torch.tensor([10.0, 20.0, 30.0])
    total = add_parameter_gradients(loss, [weight, unused], [extra, None])
    assert torch.equal(total, loss)
    (2 * total).backward()
    torch.testing.assert_close(weight.grad, 2 * (torch.tensor([1.0, 2.0, 3.0]) + extra))
    assert unused.grad is None
    assert add_parameter_gradients(loss, [unused], [None]) is loss


@pytest.mark.parametrize("name", ["puzzlemix", "comixup"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_clean_term_gradients_equal_a_backward_through_the_clean_loss(
    name: str, label_smoothing: float
) -> None:
    """The step's one saliency backward (weight gradients handed to the trainer's backward) gives the
    gradients of ``mixed + clean_lam * CE(f(x), y)`` back-propagated through the graph, as before."""
    model = tiny_r18().train()
    reference_model = copy.deepcopy(model)
    x, y = images(5), torch.arange(BATCH) % CLASSES
    options = {"clean_lam": 0.7} if name == "comixup" else {"clean_lam": 0.7, "transport": False}

    def method():
        built = build_method(name, **options)
        built.bind(MixRandom(3), label_smoothing=label_smoothing)
        return built

    loss, logs = method().training_step(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    saliency = input_gradient_saliency(reference_model, x, y, keep_graph=True)
    reference, _ = method().mixed_loss(reference_model, x, y, saliency.maps)
    clean = F.cross_entropy(saliency.logits, y, label_smoothing=label_smoothing)
    (reference + 0.7 * clean).backward()
    torch.testing.assert_close(loss, reference + 0.7 * clean)
    torch.testing.assert_close(logs["clean_loss"], clean.detach())
    for param, reference_param in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, reference_param.grad, rtol=1e-4, atol=1e-6)
    for buffer, reference_buffer in zip(model.buffers(), reference_model.buffers(), strict=True):
        torch.testing.assert_close(buffer, reference_buffer)  # BatchNorm statistics: the same forwards


def test_pool_saliency_averages_cells_normalises_and_handles_zero_maps() -> None:
    cells = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    maps = upsample_cells(cells, 8, 8).squeeze(1)
    maps[0, 0, 0] += 16.0  # one hot pixel: its cell's mean rises by 16/16 = 1
    pooled = pool_saliency(maps, 2)
    torch.testing.assert_close(pooled[0], torch.tensor([[2.0, 2.0], [3.0, 4.0]]) / 11.0)
    torch.testing.assert_close(pooled[1], torch.full((2, 2), 0.25))
    with pytest.raises(ValueError, match="divisible by 3"):
        pool_saliency(maps, 3)


# ------------------------------------------------------------------------------------------ puzzle mix


def puzzle(seed: int, lam: float | None = None, **options) -> PuzzleMix:
    rng = FixedLam(seed, lam) if lam is not None else MixRandom(seed)
    return bound(PuzzleMix(**options), seed, rng)


@pytest.mark.parametrize("n_labels", [2, 3])
def test_puzzlemix_mask_is_valid_and_the_label_ratio_is_its_mean(n_labels: int) -> None:
    x, y = images(4), torch.arange(BATCH)
    for seed in range(4):
        out = puzzle(seed, n_labels=n_labels, transport=False).mix_with_saliency(
            x, y, blob_maps(BATCH, SIZE, 4, seed)
        )
        grid, mask, batch = out.grid, out.mask, out.batch
        assert grid in (2, 4, 8, 16) and mask.shape == (BATCH, grid, grid)
        allowed = torch.linspace(0, 1, n_labels)
        assert torch.isclose(mask.unsqueeze(-1), allowed).any(-1).all(), "mask value outside the label set"
        torch.testing.assert_close(batch.lam, mask.mean(dim=(1, 2)))
        pixels = upsample_cells(mask, SIZE, SIZE)
        perm = batch.y_b  # labels are 0..B-1
        torch.testing.assert_close(batch.x, pixels * x + (1 - pixels) * x[perm])
        torch.testing.assert_close(batch.mask, 1 - pixels)


@pytest.mark.parametrize("seed", range(3))
def test_puzzlemix_with_transport_shows_each_image_on_exactly_its_mask_share(seed: int) -> None:
    """Image i is the constant i+1: after transport every pixel is m v_a + (1 - m) v_b, and mean(m) = lam."""
    values = torch.arange(1, BATCH + 1, dtype=torch.float32).view(BATCH, 1, 1, 1)
    x, y = values.expand(BATCH, 3, SIZE, SIZE).clone(), torch.arange(BATCH)
    out = puzzle(seed).mix_with_saliency(x, y, blob_maps(BATCH, SIZE, 8, seed))
    perm = out.batch.y_b
    moved = perm != y
    assert moved.any()
    v_a, v_b = values.view(-1)[moved], values.view(-1)[perm[moved]]
    share = (out.batch.x[moved, 0] - v_b.view(-1, 1, 1)) / (v_a - v_b).view(-1, 1, 1)
    torch.testing.assert_close(share, upsample_cells(out.mask, SIZE, SIZE)[moved, 0])  # no hole where shown
    torch.testing.assert_close(share.mean(dim=(1, 2)), out.batch.lam[moved])


def test_puzzlemix_keeps_the_salient_cells_of_a_when_lam_is_high() -> None:
    grid, batch = 4, 16
    x, y = images(5, batch=batch), torch.arange(batch)
    kept_a = kept_any = 0.0
    for seed in range(4):
        maps = blob_maps(batch, SIZE, grid, seed)
        out = puzzle(seed, lam=0.7, grid_sizes=[grid], transport=False).mix_with_saliency(x, y, maps)
        salient_a = out.saliency >= out.saliency.amax(dim=(1, 2), keepdim=True)
        kept_a += out.mask[salient_a].mean().item() / 4
        kept_any += out.mask.mean().item() / 4
        s_a, s_b, mask = out.saliency, out.saliency[out.batch.perm], out.mask
        kept = (s_a * mask + s_b * (1 - mask)).sum(dim=(1, 2))
        shuffled = torch.stack([mask.flatten(1)[:, torch.randperm(grid**2)].view_as(mask) for _ in range(50)])
        kept_shuffled = (s_a * shuffled + s_b * (1 - shuffled)).sum(dim=(2, 3))
        typical = kept_shuffled.median(dim=0).values  # equal when a and b have the same salient cell
        assert (kept >= typical - 1e-3).all(), "keeps less saliency than a typical random mask"
        assert (kept - typical).mean() > 0.3
    assert kept_a > 0.9 and kept_a > kept_any + 0.1, (kept_a, kept_any)


def test_puzzlemix_solver_energy_is_below_random_masks_with_the_same_mean() -> None:
    x, y = images(6, batch=16), torch.arange(16)
    for seed in range(3):
        out = puzzle(seed, transport=False).mix_with_saliency(x, y, blob_maps(16, SIZE, 8, seed))
        energy, grid = out.energy, out.grid
        labels = (out.mask * 2).round().long()
        ours = energy(labels)
        assert (ours <= energy(energy.unary.argmin(dim=-1)) + 1e-6).all(), "worse than its own start"
        shuffles = [labels.flatten(1)[:, torch.randperm(grid**2)].view_as(labels) for _ in range(100)]
        random_energies = torch.stack([energy(s) for s in shuffles])  # same label counts: same mask mean
        assert (ours <= random_energies.amin(dim=0) + 1e-6).all()


def brute_force_minimum(energy: GridEnergy) -> torch.Tensor:
    """(B,) exact minimum of 3-label energies on 3 x 3 grids, over all 3^9 labellings at once."""
    grid, n_labels = energy.unary.shape[2], energy.unary.shape[3]
    every = torch.tensor(list(itertools.product(range(n_labels), repeat=grid * grid)))  # (N, 9)
    unary = F.one_hot(every, n_labels).flatten(1).float() @ energy.unary.flatten(1).T  # (N, B)
    mask = energy.values[every].view(-1, grid, grid)
    vertical = (mask[:, 1:] - mask[:, :-1]).pow(2).flatten(1) @ energy.w_down.flatten(1).T
    horizontal = (mask[:, :, 1:] - mask[:, :, :-1]).pow(2).flatten(1) @ energy.w_right.flatten(1).T
    return (unary + vertical + horizontal).amin(dim=0)


def test_puzzlemix_solver_reaches_the_brute_force_minimum_on_3x3_grids() -> None:
    g = torch.Generator().manual_seed(0)
    problems, grid = 40, 3
    saliency = torch.rand(problems, grid, grid, generator=g) ** 3
    saliency = saliency / saliency.sum(dim=(1, 2), keepdim=True)
    pooled = torch.rand(problems, 3, 2 * grid, 2 * grid, generator=g)
    energy = build_energy(saliency, saliency.roll(1, 0), pooled, pooled.roll(1, 0), 0.6, 3, 3.0, 0.5, 0.2)
    ours, best = energy(minimise_energy(energy, sweeps=2)), brute_force_minimum(energy)
    assert (ours >= best - 1e-5).all()
    assert (ours <= best + 1e-5).float().mean() >= 0.9


def test_viterbi_is_exact_on_chains_with_any_sign_of_weights() -> None:
    g = torch.Generator().manual_seed(1)
    unary, weights = torch.randn(30, 4, 3, generator=g), torch.randn(30, 3, generator=g)
    distance = (torch.arange(3.0).view(1, -1) - torch.arange(3.0).view(-1, 1)) ** 2
    path = viterbi(unary, weights, distance)

    def cost(labels: torch.Tensor) -> torch.Tensor:
        pairwise = (weights * distance[labels[:, :-1], labels[:, 1:]]).sum(1)
        return unary.gather(2, labels.unsqueeze(2)).squeeze(2).sum(1) + pairwise

    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    best = torch.stack([cost(labels.expand(30, 4)) for labels in every]).amin(dim=0)
    torch.testing.assert_close(cost(path), best)


def test_the_costs_against_fixed_neighbour_rows_are_those_of_each_side_on_its_own() -> None:
    """Each label's squared gap to the cells above and below is taken once for the whole grid and sliced:
    the very numbers of the side-by-side formula, to the bit."""
    g = torch.Generator().manual_seed(3)
    values = torch.linspace(0.0, 1.0, 3)
    energy = GridEnergy(
        torch.rand(4, 6, 6, 3, generator=g),
        torch.rand(4, 5, 6, generator=g),
        torch.rand(4, 6, 5, generator=g),
        values,
    )
    labels = torch.randint(0, 3, (4, 6, 6), generator=g)
    mask = values[labels].unsqueeze(-1)
    above = energy.w_down.unsqueeze(-1) * (values.view(1, 1, 1, -1) - mask[:, :-1]) ** 2
    below = energy.w_down.unsqueeze(-1) * (values.view(1, 1, 1, -1) - mask[:, 1:]) ** 2
    expected = F.pad(above, (0, 0, 0, 0, 1, 0)) + F.pad(below, (0, 0, 0, 0, 0, 1))
    assert torch.equal(_fixed_neighbour_costs(energy, labels), expected)


def test_viterbi_gives_the_path_of_the_link_by_link_recursion_exactly() -> None:
    """The pairwise costs made in one product before the loop are the products the recursion made link by
    link: the same path, ties included, on chains of 16 links with many tied costs."""
    g = torch.Generator().manual_seed(2)
    unary = torch.randint(0, 3, (64, 16, 5), generator=g).float() / 3
    weights = torch.rand(64, 15, generator=g)
    distance = (torch.arange(5.0).view(1, -1) - torch.arange(5.0).view(-1, 1)) ** 2 / 16
    cost, pointers = unary[:, 0], []
    for step in range(1, 16):
        cost, best = (cost.unsqueeze(2) + weights[:, step - 1, None, None] * distance).min(dim=1)
        cost = cost + unary[:, step]
        pointers.append(best)
    label = cost.argmin(dim=-1)
    path = [label]
    for best in reversed(pointers):
        label = best.gather(1, label.unsqueeze(1)).squeeze(1)
        path.append(label)
    assert torch.equal(viterbi(unary, weights, distance), torch.stack(path[::-1], dim=1))


def test_transport_moves_a_salient_hidden_cell_into_view_and_fills_every_shown_cell() -> None:
    side = 4
    shown = torch.zeros(1, side, side, dtype=torch.bool)
    shown[:, :, :2] = True  # left half shown
    saliency = torch.full((1, side, side), 0.01)
    saliency[0, 1, 2] = 0.8  # salient, hidden, next to the shown half
    source, won = transport_sources(
        shown.flatten(1), saliency.flatten(1), cell_distances(side, side), 0.8, side
    )
    shown_cells = shown.flatten(1)[0]
    assert won[0, shown_cells].all(), "a shown cell was left empty"
    assert len(set(source[0, won[0]].tolist())) == int(won.sum()), "a source was used twice"
    assert (1 * side + 2) in source[0, shown_cells].tolist(), "the salient hidden cell did not move into view"
    flat = saliency.flatten(1)
    assert flat[0, source[0, shown_cells]].sum() > flat[0, shown_cells].sum(), (
        "less saliency on show than before"
    )


@pytest.mark.parametrize("grid", [2, 4, 8])
def test_puzzlemix_transports_both_images_in_one_batch_as_each_on_its_own(grid: int) -> None:
    method = puzzle(0, grid_sizes=[grid])
    x, maps = images(14), blob_maps(BATCH, SIZE, 8, 5)
    perm = torch.randperm(BATCH, generator=torch.Generator().manual_seed(1))
    mask = torch.randint(0, 3, (BATCH, grid, grid), generator=torch.Generator().manual_seed(2)) / 2
    image_a, image_b = method._transport(x, maps, mask, perm, SIZE // grid)
    side = SIZE // min(method.transport_size, SIZE // grid)
    fine = F.interpolate(mask.unsqueeze(1), size=(side, side), mode="nearest").flatten(1)
    saliency, distances = pool_saliency(maps, side).flatten(1), cell_distances(side, side)
    for image, shown, source_saliency, moved in [
        (x, fine > 0, saliency, image_a),
        (x[perm], fine < 1, saliency[perm], image_b),
    ]:
        source, won = transport_sources(shown, source_saliency, distances, method.t_eps, rounds=side)
        assert torch.equal(moved, move_cells(image, source, won, side, side))


def test_serial_on_cpu_uses_one_thread_inside_and_restores_the_count() -> None:
    torch.set_num_threads(2)  # the module's fixture restores its own count afterwards
    with serial_on_cpu(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), serial_on_cpu(torch.device("cpu")):
        raise RuntimeError
    assert torch.get_num_threads() == 2
    with serial_on_cpu(torch.device("meta")):
        assert torch.get_num_threads() == 2


def test_move_cells_puts_each_source_cell_at_its_destination_and_zeros_unwon_cells() -> None:
    side, cell = 2, 3
    x = (
        torch.arange(4.0)
        .view(1, 1, 2, 2)
        .repeat_interleave(cell, 2)
        .repeat_interleave(cell, 3)
        .expand(1, 3, 6, 6)
    )
    moved = move_cells(x, torch.tensor([[3, 0, 1, 2]]), torch.tensor([[True, True, False, True]]), side, side)
    expected = torch.tensor([[3.0, 0.0], [0.0, 2.0]]).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    torch.testing.assert_close(moved[0, 1], expected)


def test_puzzlemix_skips_grid_sizes_that_do_not_divide_the_image_and_refuses_bad_batches() -> None:
    x, y = images(7, size=12), torch.arange(BATCH)
    grids = {
        puzzle(seed, transport=False).mix_with_saliency(x, y, blob_maps(BATCH, 12, 2, 0)).grid
        for seed in range(12)
    }
    assert grids == {2, 4}
    with pytest.raises(ValueError, match="at least 2"):
        puzzle(0).mix_with_saliency(x[:1], y[:1], torch.rand(1, 12, 12))
    with pytest.raises(ValueError, match="divides 15x15"):
        puzzle(0).mix_with_saliency(images(0, size=15), y, torch.rand(BATCH, 15, 15))


def test_puzzlemix_step_is_mixed_ce_plus_clean_ce_and_leaves_parameter_grads_alone() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = images(8), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    plain, logs = puzzle(11).training_step(model, x, y)
    assert all(p.grad is None for p in model.parameters()), "the saliency backward reached the parameters"
    reference = puzzle(11).mix_with_saliency(x, y, input_gradient_saliency(model, x, y).maps).batch
    logits = model(reference.x)
    ce = [F.cross_entropy(logits, target, reduction="none") for target in (reference.y_a, reference.y_b)]
    torch.testing.assert_close(plain, (reference.lam * ce[0] + (1 - reference.lam) * ce[1]).mean())
    torch.testing.assert_close(logs["lam"], reference.lam.mean())
    with_clean, _ = puzzle(11, clean_lam=1.0).training_step(model, x, y)
    torch.testing.assert_close(with_clean - plain, F.cross_entropy(model(x), y))
    torch.testing.assert_close(puzzle(11).mix_with_model(model, x, y).x, reference.x)


def test_puzzlemix_same_seed_same_loss_on_r18_whatever_the_global_seed() -> None:
    model, x, y = tiny_r18().train(), images(9), torch.arange(BATCH)
    losses = []
    for seed, global_seed in [(5, 0), (5, 123), (6, 0)]:
        torch.manual_seed(global_seed)
        losses.append(puzzle(seed).training_step(model, x, y)[0].detach())
    assert torch.equal(losses[0], losses[1]) and not torch.equal(losses[0], losses[2])


def test_puzzlemix_preview_rows_have_batch_shapes() -> None:
    model, x, y = tiny_r18().eval(), images(10), torch.arange(BATCH)
    preview = puzzle(0).preview(model, x, y)
    assert {"source a", "source b", "mask (share of a)", "mixed"} <= set(preview.rows)
    for name, row in preview.rows.items():
        assert row.shape[0] == BATCH and row.shape[1] in (1, 3) and row.shape[2:] == (SIZE, SIZE), name
    assert preview.lam.shape == (BATCH,) and ((preview.lam >= 0) & (preview.lam <= 1)).all()


# ------------------------------------------------------------------------------------------ co-mixup


def comixup(seed: int, **options) -> CoMixup:
    return bound(CoMixup(**options), seed)


def test_comixup_soft_targets_are_the_area_shares_and_sum_to_one() -> None:
    """Input i is the indicator of channel i: each output pixel then *is* its vector of input shares."""
    batch, size = 12, 8
    x = torch.eye(batch).view(batch, batch, 1, 1).expand(batch, batch, size, size)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    out = comixup(0, m_part=5).mix_with_saliency(x, blob_maps(batch, size, 4, 0))  # partitions of 5, 5, 2
    pixels = out.x
    torch.testing.assert_close(pixels.sum(dim=1), torch.ones(batch, size, size))
    assert torch.isclose(pixels.unsqueeze(-1), torch.tensor([0.0, 0.5, 1.0])).any(-1).all()
    area = pixels.mean(dim=(2, 3))
    torch.testing.assert_close(out.weights, area)
    targets = out.targets(y, 6)
    torch.testing.assert_close(targets, area @ F.one_hot(y, 6).float())
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(batch))
    torch.testing.assert_close(out.targets(y, 6, label_smoothing=0.1), 0.9 * targets + 0.1 / 6)
    partition_of = torch.arange(batch) // 5
    assert (area[partition_of.view(-1, 1) != partition_of.view(1, -1)] == 0).all(), "mixed across partitions"


def test_comixup_objective_beats_random_and_unmixed_assignments_with_peaked_saliency() -> None:
    batch, size = 20, 16
    method = comixup(1)
    out = method.mix_with_saliency(images(11, batch=batch, size=size), blob_maps(batch, size, 4, 1))
    problem, labels = out.problem, out.labels
    ours = objective(labels, problem)
    draws = torch.stack(
        [objective(random_labelling(problem, torch.Generator().manual_seed(s)), problem) for s in range(20)]
    )
    identity = torch.eye(batch).view(1, batch, 1, batch).expand(1, batch, 16, batch)  # output j = input j
    assert (ours < draws.amin(dim=0)).all() and (ours < objective(identity, problem)).all()
    weights = out.weights
    assert (weights > 0).sum(dim=1).float().mean() > 1.5, "outputs do not mix"
    assert len({tuple((row > 0).tolist()) for row in weights}) > batch // 2, "outputs are not diverse"
    saliency = -problem.cost[0]  # (P, m) before the prior's tiny shift
    captured = (labels[0] * saliency).sum()
    assert captured > (identity[0] * saliency).sum() * 1.5


def test_comixup_output_step_never_increases_its_subproblem_energy() -> None:
    method = comixup(2)
    problem = method.build_problem(blob_maps(6, 8, 4, 2))
    graph = grid_graph(4)
    basis = candidate_basis(problem.valid, problem.beta / 2 * graph.degree)
    g = torch.Generator().manual_seed(3)
    current = random_labelling(problem, g)[:, 0]
    current[:, :5] = (current[:, :5] + current[:, 5:10]) / 2  # some half-half cells too
    unary = problem.cost + 0.1 * torch.rand(problem.cost.shape, generator=g)
    for with_mixed in (False, True):
        usage = current.sum(dim=1)
        new = _solve_output(current, usage, unary, problem.beta, graph, basis, with_mixed, sweeps=2)
        assert (
            output_energy(new, unary, graph, problem.beta)
            <= output_energy(current, unary, graph, problem.beta) + 1e-7
        ).all()


def test_label_candidates_offer_half_half_pairs_of_the_most_used_inputs_only() -> None:
    usage = torch.tensor([[0.0, 10.0, 0.0, 6.0, 0.0], [3.0, 9.0, 0.0, 4.0, 0.0], [16.0, 0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True] * 5, [True] * 5, [True, True, True, False, False]])
    vectors, extra = label_candidates(usage, candidate_basis(valid, torch.ones(4, 1)), with_mixed=True)
    assert vectors.shape == (3, 8, 5)
    torch.testing.assert_close(vectors[0, 5], torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0]))
    assert extra[0, 5] == -MIXED_CELL_BONUS and (extra[0, 6:] > 1).all()  # two inputs used: one pair
    assert (extra[1, 5:] == -MIXED_CELL_BONUS).all()  # three used: the pairs of the top three
    torch.testing.assert_close(vectors[1, 5:].sum(0), torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]))
    assert (extra[2, 5:] > 1).all() and (
        extra[2, 3:5] > 1
    ).all()  # one input used; padding inputs unavailable


def test_resolve_duplicates_charges_one_input_to_each_of_two_identical_outputs() -> None:
    usage = torch.tensor(
        [[[0.0, 8.0, 0.0, 8.0], [0.0, 16.0, 0.0, 0.0], [0.0, 4.0, 0.0, 12.0], [0.0, 16.0, 0.0, 0.0]]]
    )
    extra = resolve_duplicates(usage, torch.ones(1, 4, dtype=torch.bool))
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 1] = 1.0  # first of the pair (0, 2) pays for the first input of their set {1, 3}
    expected[0, 2, 3] = 1.0  # second pays for the second; the single-input duplicates (1, 3) are left alone
    torch.testing.assert_close(extra, expected)


def test_comixup_step_is_soft_ce_plus_clean_ce_and_leaves_parameter_grads_alone() -> None:
    model = LinearNet(SIZE, CLASSES)
    x, y = images(12), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    loss, logs = comixup(4, clean_lam=0.0).training_step(model, x, y)
    assert all(p.grad is None for p in model.parameters()), "the saliency backward reached the parameters"
    reference = comixup(4).mix_with_saliency(x, input_gradient_saliency(model, x, y).maps)
    log_p = F.log_softmax(model(reference.x), dim=1)
    torch.testing.assert_close(loss, -(reference.targets(y, CLASSES) * log_p).sum(1).mean())
    torch.testing.assert_close(logs["lam"], reference.weights.amax(dim=1).mean())
    with_clean, _ = comixup(4, clean_lam=0.5).training_step(model, x, y)
    torch.testing.assert_close(with_clean - loss, 0.5 * F.cross_entropy(model(x), y))


def test_comixup_same_seed_same_batch_whatever_the_global_seed() -> None:
    x, maps = images(13), blob_maps(BATCH, SIZE, 4, 3)
    results = []
    for seed, global_seed in [(7, 0), (7, 99), (8, 0)]:
        torch.manual_seed(global_seed)
        results.append(comixup(seed).mix_with_saliency(x, maps).x)
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


def test_comixup_preview_rows_have_batch_shapes_and_refuses_bad_sizes() -> None:
    model, x, y = tiny_r18().eval(), images(14), torch.arange(BATCH)
    preview = comixup(0).preview(model, x, y)
    assert {"inputs", "outputs", "its share per cell"} <= set(preview.rows)
    for name, row in preview.rows.items():
        assert row.shape[0] == BATCH and row.shape[1] in (1, 3) and row.shape[2:] == (SIZE, SIZE), name
    assert preview.lam.shape == (BATCH,) and (preview.lam > 0).all() and (preview.lam <= 1).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        comixup(0).mix_with_saliency(images(0, size=10), torch.rand(BATCH, 10, 10))
    with pytest.raises(ValueError, match="at least 2"):
        comixup(0).mix_with_saliency(x[:1], torch.rand(1, SIZE, SIZE))


@pytest.mark.parametrize("name", ["puzzlemix", "comixup"])
def test_configs_hold_the_official_defaults_and_build(name: str) -> None:
    cfg = compose_config([f"method={name}"])
    options = {key: value for key, value in cfg.method.items() if key != "name"}
    method = build_method(name, **options)
    expected = {
        "puzzlemix": {"alpha": 1.0, "beta": 1.2, "gamma": 0.5, "eta": 0.2, "t_eps": 0.8, "clean_lam": 0.0},
        "comixup": {"alpha": 2.0, "beta": 0.32, "gamma": 1.0, "tau": 0.83, "eta": 0.05, "m_part": 20},
    }[name]
    assert {key: getattr(method, key) for key in expected} == expected


@pytest.mark.parametrize("channels_last", [False, True])
def test_puzzlemix_output_keeps_the_batch_memory_layout_even_with_one_pixel_cells(
    channels_last: bool,
) -> None:
    """Grid 16 on 16 px makes one-pixel cells, whose mixing once produced a channels_last batch from a
    contiguous one (and a strided-conv backward on the CPU then crashed)."""
    from mixbench.methods.puzzlemix import PuzzleMix
    from mixbench.rng import MixRandom

    method = PuzzleMix(grid_sizes=[16], transport=True)
    method.bind(MixRandom(0))
    x = torch.randn(4, 3, 16, 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    maps = torch.rand(4, 16, 16)
    mixed = method.mix_with_saliency(x, torch.arange(4), maps).batch.x
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert mixed.is_contiguous(memory_format=fmt)


def test_comixup_smoothness_through_the_laplacian_is_the_sum_over_the_edges_to_the_bit() -> None:
    """output_energy takes sum_{p~q} ||z_p - z_q||^2 / 2 as sum_p z_p . (L z)_p / 2: exact for labels of
    0, 1/2 and 1, so the energy equals to the bit the former edge-by-edge form (zero unary costs here)."""
    g = torch.Generator().manual_seed(7)
    for grid in (2, 4, 8):
        cells, graph = grid * grid, grid_graph(grid)
        first, second = (F.one_hot(torch.randint(6, (3, 5, cells), generator=g), 6).float() for _ in range(2))
        labels = torch.where(torch.rand(3, 5, cells, 1, generator=g) < 0.3, (first + second) / 2, first)
        largest = labels.amax(dim=-1)
        mixed = ((largest > 0.25) & (largest < 0.75)).sum(dim=-1).float()
        difference = labels[..., graph.edges[:, 0], :] - labels[..., graph.edges[:, 1], :]
        by_edges = difference.pow(2).sum(dim=(-2, -1)) / 2
        for beta in (0.02, 1.7):
            former = torch.zeros(3, 5) - MIXED_CELL_BONUS * mixed + beta * by_edges
            assert torch.equal(output_energy(labels, torch.zeros(5, cells, 6), graph, beta), former)


def test_comixup_outputs_carry_gradients_to_inputs_that_require_them() -> None:
    """Each output cell is a copy of one input's cell (or half of two), so d sum(outputs) / d input is its
    cells' uses times the cell's size.  The solver runs in inference mode, yet hands back ordinary labels
    (autograd may save them; an inference tensor cannot be)."""
    x = images(3, batch=6, size=8).requires_grad_()
    out = comixup(4, m_part=3).mix_with_saliency(x, blob_maps(6, 8, 4, 5))
    assert not out.labels.is_inference()
    out.x.sum().backward()
    uses = out.labels.sum(dim=(1, 2)).flatten()  # cells of each input over all outputs, per partition slot
    torch.testing.assert_close(x.grad.sum(dim=(1, 2, 3)), uses * 3 * 2 * 2)  # channels x cell area
