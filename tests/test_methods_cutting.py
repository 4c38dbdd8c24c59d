"""The input-space cutting methods: FMix, ResizeMix, SaliencyMix, GridMix, SmoothMix, and their masks.

Every method reports ``mask`` = the per-pixel share of ``x[perm]``; the checks recompute the mixed batch and
the label ratio from that mask and the pixels, and test each mask's defining property (FMix: top-lam pixels of
low-frequency noise; ResizeMix: the whole partner resized; SaliencyMix: a box on the source's saliency peak;
GridMix: constant cells; SmoothMix: a smooth bump of the configured width), so a wrong formula, an inverted
label ratio or a mask that ignores its parameters makes a test fail.  SaliencyMix's per-sample ratios through
the trainer, its logs and its run files are checked on its short run in ``tests/test_all_methods_train.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mixbench.config import CONFIG_DIR
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.methods import MixMethod, build_method
from mixbench.methods.cutmix import box_mask, sample_box
from mixbench.methods.cutout import Cutout, cutout_masks
from mixbench.methods.fmix import FMix
from mixbench.methods.gridmix import GridMix
from mixbench.methods.masks import centred_box_masks, fourier_noise, grid_cells_mask, keep_top_pixels_mask
from mixbench.methods.resizemix import ResizeMix
from mixbench.methods.saliency_spectral import saliency_peaks, spectral_residual_saliency
from mixbench.methods.saliencymix import SaliencyMix
from mixbench.methods.smoothmix import SmoothMix
from mixbench.rng import MixRandom
from tests.helpers import FixedLam, LinearNet

BATCH, SIZE, CLASSES = 8, 16, 10
NAMES = ["fmix", "resizemix", "saliencymix", "gridmix", "smoothmix"]
BINARY = {"fmix", "resizemix", "saliencymix", "gridmix"}
DEFAULTS = {"fmix": {"alpha": 1.0}, "gridmix": {"alpha": 1.0}, "saliencymix": {"alpha": 2.0}}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class Centres(MixRandom):
    """``integer`` returns the given values in turn (to build CutMix's box around a known centre)."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self.values = list(values)

    def integer(self, low: int, high: int) -> int:
        return self.values.pop(0)


def bound(method: MixMethod, seed: int | MixRandom) -> MixMethod:
    method.bind(seed if isinstance(seed, MixRandom) else MixRandom(seed))
    return method


def batch(seed: int = 0, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and distinct labels 0..B-1 (so ``y_b`` is the pairing itself)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, size, size, generator=g), torch.arange(BATCH)


def per_sample(value: float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32).expand(BATCH)


def neighbour_agreement(mask: torch.Tensor) -> float:
    """Share of horizontally or vertically adjacent pixel pairs with the same value (1 = one blob)."""
    m = mask.reshape(mask.shape[-2:])
    pairs = torch.cat([(m[1:] == m[:-1]).flatten(), (m[:, 1:] == m[:, :-1]).flatten()])
    return pairs.float().mean().item()


# ------------------------------------------------------------------------------------ every method


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", NAMES)
def test_label_ratio_is_one_minus_mask_mean_and_mixed_is_the_mask_blend(name: str, seed: int) -> None:
    x, y = batch(seed)
    out = bound(build_method(name, **DEFAULTS.get(name, {})), seed).mix(x, y)
    perm = out.perm
    assert sorted(perm.tolist()) == list(range(BATCH)) and torch.equal(out.y_b, y[perm])
    assert torch.equal(out.y_a, y)
    mask = out.mask
    assert mask.shape[0] in (1, BATCH) and mask.shape[1:] == (1, SIZE, SIZE)
    assert mask.min() >= 0 and mask.max() <= 1
    if name in BINARY:
        assert ((mask == 0) | (mask == 1)).all(), "a cutting mask must be binary"
    expected_lam = per_sample(1 - mask.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(per_sample(out.lam), expected_lam, rtol=0, atol=1e-6)
    if name == "resizemix":  # the partner is resized: checked pixel by pixel below
        assert torch.equal(out.x[:, :, mask[0, 0] == 0], x[:, :, mask[0, 0] == 0])
        return
    assert torch.equal(out.x, (1 - mask) * x + mask * x[perm])
    if name in BINARY:
        taken = mask.expand(BATCH, 3, SIZE, SIZE) == 1
        assert torch.equal(out.x[taken], x[perm][taken]) and torch.equal(out.x[~taken], x[~taken])


def run_once(name: str, seed: int, global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(global_seed)
    x, y = batch(0)
    out = bound(build_method(name), seed).mix(x, y)
    return torch.cat([out.x.flatten(), out.mask.flatten(), out.perm.float()]), per_sample(out.lam)


@pytest.mark.parametrize("name", NAMES)
def test_same_mixrandom_seed_replays_the_batch_whatever_the_global_seed(name: str) -> None:
    first, lam_1 = run_once(name, seed=7, global_seed=1)
    second, lam_2 = run_once(name, seed=7, global_seed=999)
    assert torch.equal(first, second) and torch.equal(lam_1, lam_2)
    others = [run_once(name, seed=s, global_seed=1)[0] for s in range(3)]
    assert any(not torch.equal(first, other) for other in others), "the mix ignores the generator"

    x, y = batch(1)
    rng = MixRandom(3)
    method = bound(build_method(name), rng)
    a = method.mix(x, y)
    rng.reseed(3)
    b = method.mix(x, y)
    assert torch.equal(a.x, b.x) and torch.equal(per_sample(a.lam), per_sample(b.lam))


@pytest.mark.parametrize("name", NAMES)
def test_training_step_is_mixed_ce_with_the_reported_label_ratio(name: str) -> None:
    x, _ = batch(4)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    model = LinearNet(SIZE, CLASSES)
    loss, logs = bound(build_method(name, **DEFAULTS.get(name, {})), 5).training_step(model, x, y)
    ref = bound(build_method(name, **DEFAULTS.get(name, {})), 5).mix(x, y)
    logits = model(ref.x)
    lam = per_sample(ref.lam)
    ce_a = torch.logsumexp(logits, 1) - logits[torch.arange(BATCH), y]
    ce_b = torch.logsumexp(logits, 1) - logits[torch.arange(BATCH), y[ref.perm]]
    torch.testing.assert_close(loss, (lam * ce_a + (1 - lam) * ce_b).mean())
    assert float(logs["lam"]) == pytest.approx(lam.mean().item(), abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_preview_rows_are_batch_shaped_images_or_single_channel_maps(name: str) -> None:
    x, y = batch(2)
    preview = bound(build_method(name), 1).preview(nn.Identity(), x, y)
    assert preview.lam.shape == (BATCH,) and preview.lam.device.type == "cpu"
    assert ((preview.lam >= 0) & (preview.lam <= 1)).all()
    assert "mixed" in preview.rows and "source b" in preview.rows
    for title, row in preview.rows.items():
        assert row.shape in ((BATCH, 3, SIZE, SIZE), (BATCH, 1, SIZE, SIZE)), title
        if row.shape[1] == 1:
            assert row.min() >= 0 and row.max() <= 1, f"{title} is not a map in [0, 1]"


def test_configs_build_each_method_with_the_shipped_defaults() -> None:
    for name in NAMES:
        options = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "method" / f"{name}.yaml"))
        assert options.pop("name") == name
        method = build_method(name, **options)
        for key, value in options.items():
            stored = getattr(method, key)
            assert (list(stored) if isinstance(stored, tuple) else stored) == value
        assert options.get("alpha", 1.0) > 0
    assert build_method("fmix").alpha == 1.0, "the paper's alpha is the default; 0.2 comes from the config"


# ------------------------------------------------------------------------------------------- FMix


@pytest.mark.parametrize("lam", [0.3, 0.5, 0.77])
def test_fmix_keeps_round_lam_hw_pixels_of_x_chosen_from_the_noise_top(lam: float) -> None:
    x, y = batch(1)
    out = bound(FMix(), FixedLam(2, lam)).mix(x, y)
    kept = round(lam * SIZE * SIZE)
    assert int((out.mask == 0).sum()) == kept
    assert out.lam == kept / SIZE**2  # the realised share, within 1/(HW) of the drawn lam
    # the same generator state gives the noise the mask was cut from: its kept pixels are its top ones
    rng = FixedLam(2, lam)
    rng.permutation(BATCH)
    noise = fourier_noise(SIZE, SIZE, 3.0, rng.torch)
    assert torch.equal(out.mask, keep_top_pixels_mask(noise, kept))
    assert noise[out.mask[0, 0] == 0].min() > noise[out.mask[0, 0] == 1].max()


def test_fmix_mask_is_low_frequency_unlike_a_random_mask_of_the_same_mean() -> None:
    size = 32
    x, y = batch(0, size=size)
    fmix = [neighbour_agreement(bound(FMix(), FixedLam(s, 0.5)).mix(x, y).mask) for s in range(8)]
    white = [
        neighbour_agreement(bound(FMix(decay_power=0.0), FixedLam(s, 0.5)).mix(x, y).mask) for s in range(8)
    ]
    shuffled = [
        neighbour_agreement(torch.rand(size, size, generator=torch.Generator().manual_seed(s)) < 0.5)
        for s in range(8)
    ]
    assert sum(fmix) / 8 > 0.85, "decay power 3 should give a few large blobs"
    assert sum(white) / 8 < 0.65 and sum(shuffled) / 8 < 0.6, "a flat spectrum gives salt and pepper"


# --------------------------------------------------------------------------------------- ResizeMix


@pytest.mark.parametrize("seed", range(6))
def test_resizemix_pastes_the_whole_partner_resized_inside_the_image(seed: int) -> None:
    x, y = batch(seed)
    out = bound(ResizeMix(), seed).mix(x, y)
    inside = out.mask[0, 0] == 1
    rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
    top, bottom = rows.min().item(), rows.max().item() + 1
    left, right = cols.min().item(), cols.max().item() + 1
    assert torch.equal(out.mask, box_mask((top, bottom, left, right), SIZE, SIZE)), "the patch is not one box"
    assert bottom - top == right - left, "a square image gets a square patch (clipped or distorted?)"
    assert int(0.1 * SIZE) <= bottom - top <= int(0.8 * SIZE)
    expected = F.interpolate(x[out.perm], size=(bottom - top, right - left), mode="nearest")
    assert torch.equal(out.x[:, :, top:bottom, left:right], expected)
    assert out.lam == 1 - (bottom - top) * (right - left) / SIZE**2


def test_resizemix_scale_stays_in_scope_and_follows_alpha() -> None:
    def sides(alpha: float) -> list[int]:
        method = bound(ResizeMix(alpha=alpha), 0)
        boxes = [method.sample_patch_box(100, 100) for _ in range(200)]
        assert all(0 <= t < b <= 100 and 0 <= lft < r <= 100 for t, b, lft, r in boxes), "outside the image"
        return [bottom - top for top, bottom, _, _ in boxes]

    uniform, peaked, edges = sides(1.0), sides(100.0), sides(0.05)
    for values in (uniform, peaked, edges):
        assert 10 <= min(values) and max(values) <= 80
    assert min(uniform) < 20 and max(uniform) > 70, "alpha 1 should span the scope (tau ~ U(0.1, 0.8))"
    assert all(40 <= v <= 60 for v in peaked), "alpha 100 concentrates tau at 0.5"


# ------------------------------------------------------------------------------------- SaliencyMix


def blob_images(size: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Noisy images with one bright square each, placed differently: (images, [(row, col, side)])."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 * torch.randn(BATCH, 3, size, size, generator=g)
    side = max(2, size // 8)
    blobs = []
    for image in images:
        row, col = torch.randint(1, size - side - 1, (2,), generator=g).tolist()
        image[:, row : row + side, col : col + side] += 2.0
        blobs.append((row, col, side))
    return images, blobs


@pytest.mark.parametrize("size", [16, 32, 96])
def test_spectral_residual_saliency_peaks_on_the_single_bright_blob(size: int) -> None:
    """The peak lies on the blob, up to the 5-tap blur's reach (2 pixels at the <= 64 px working size)."""
    images, blobs = blob_images(size, seed=size)
    saliency = spectral_residual_saliency(images)
    assert saliency.shape == (BATCH, size, size) and saliency.min() >= 0 and saliency.max() <= 1 + 1e-6
    margin = 2 * math.ceil(size / 64)
    peak_rows, peak_cols = saliency_peaks(saliency)
    for i, (row, col, side) in enumerate(blobs):
        assert row - margin <= peak_rows[i] < row + side + margin
        assert col - margin <= peak_cols[i] < col + side + margin
        on_blob = torch.zeros(size, size, dtype=torch.bool)
        on_blob[row : row + side, col : col + side] = True
        assert saliency[i][on_blob].mean() > 3 * saliency[i][~on_blob].mean()


def test_saliency_of_a_batch_is_the_saliency_of_each_image() -> None:
    images, _ = blob_images(32, seed=3)
    together = spectral_residual_saliency(images)
    alone = torch.cat([spectral_residual_saliency(image[None]) for image in images])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_saliencymix_box_is_cutmix_box_centred_on_each_source_peak(seed: int) -> None:
    images, _ = blob_images(SIZE, seed)
    lam = 0.4
    out = bound(SaliencyMix(), FixedLam(seed, lam)).mix(images, torch.arange(BATCH))
    peak_rows, peak_cols = saliency_peaks(spectral_residual_saliency(images[out.perm]))
    for i in range(BATCH):
        centre = (peak_rows[i].item(), peak_cols[i].item())
        assert out.mask[i, 0][centre] == 1, "the box does not contain its source's saliency peak"
        expected = box_mask(sample_box(SIZE, SIZE, lam, Centres(*centre)), SIZE, SIZE)
        assert torch.equal(out.mask[i : i + 1], expected)
    assert len({tuple(m.nonzero()[0].tolist()) for m in out.mask}) > 1, "boxes should be per sample"


def test_saliencymix_per_batch_mode_uses_the_first_sources_peak_for_everyone() -> None:
    images, _ = blob_images(SIZE, 5)
    out = bound(SaliencyMix(per_sample=False), FixedLam(1, 0.5)).mix(images, torch.arange(BATCH))
    assert (out.mask == out.mask[:1]).all()
    peak_row, peak_col = saliency_peaks(spectral_residual_saliency(images[out.perm[:1]]))
    assert out.mask[0, 0, peak_row.item(), peak_col.item()] == 1


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9])
def test_centred_box_masks_follow_cutmix_clipping_for_every_centre(lam: float) -> None:
    height, width = 7, 9
    centres = torch.cartesian_prod(torch.arange(height), torch.arange(width))
    cut = math.sqrt(1 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    masks = centred_box_masks(centres[:, 0], centres[:, 1], cut_h, cut_w, height, width)
    for (row, col), mask in zip(centres.tolist(), masks, strict=True):
        expected = box_mask(sample_box(height, width, lam, Centres(row, col)), height, width)
        assert torch.equal(mask[None], expected)


# ------------------------------------------------------------------------------------------ GridMix


def constant_on_cells(mask: torch.Tensor, n: int) -> bool:
    height, width = mask.shape
    cell_rows = torch.arange(height) * n // height
    cell_cols = torch.arange(width) * n // width
    cells = torch.full((n, n), -1.0)
    cells[cell_rows[:, None], cell_cols[None, :]] = mask
    return torch.equal(cells[cell_rows[:, None], cell_cols[None, :]], mask)


def test_grid_cells_mask_repeats_each_cell_over_its_block_even_when_n_does_not_divide_h() -> None:
    cells = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0]])
    mask = grid_cells_mask(cells, 16, 11)[0, 0]
    rows, cols = torch.arange(16) * 3 // 16, torch.arange(11) * 3 // 11
    assert torch.equal(mask, cells[rows[:, None], cols[None, :]].float())


def test_gridmix_mask_is_constant_on_cells_of_an_n_by_n_grid_with_n_in_range() -> None:
    x, y = batch(0, size=60)  # 60 is a multiple of every n in 2..6
    finest = []
    for seed in range(40):
        mask = bound(GridMix(), FixedLam(seed, 0.5)).mix(x, y).mask[0, 0]
        consistent = [n for n in range(1, 13) if constant_on_cells(mask, n)]
        finest.append(min(consistent))
    assert set(finest) <= set(range(1, 7)), "a mask finer than a 6 x 6 grid"
    assert {3, 4, 5, 6} <= set(finest), "the grid size does not vary over 2..6"
    fixed = bound(GridMix(grid_sizes=[4, 4]), FixedLam(0, 0.5)).mix(x, y).mask[0, 0]
    assert constant_on_cells(fixed, 4) and not constant_on_cells(fixed, 2)


def test_gridmix_cells_come_from_the_partner_with_probability_one_minus_lam() -> None:
    x, y = batch(0)
    for lam in (0.25, 0.8):
        method = GridMix(grid_sizes=[6, 6])
        shares = [bound(method, FixedLam(s, lam)).mix(x, y).mask.mean().item() for s in range(40)]
        assert sum(shares) / len(shares) == pytest.approx(1 - lam, abs=0.05)


# ----------------------------------------------------------------------------------------- SmoothMix


@pytest.mark.parametrize("seed", range(5))
def test_smoothmix_mask_is_a_smooth_bump_that_gives_the_partner_its_centre(seed: int) -> None:
    size = 32
    x, y = batch(seed, size=size)
    out = bound(SmoothMix(), seed).mix(x, y)
    mask = out.mask[0, 0]
    steepest = 1 / (0.25 * size * math.sqrt(math.e))  # max slope of a Gaussian of the narrowest width
    assert (mask[1:] - mask[:-1]).abs().max() <= steepest + 1e-6
    assert (mask[:, 1:] - mask[:, :-1]).abs().max() <= steepest + 1e-6
    assert mask.min() > 0 and ((mask > 0.1) & (mask < 0.9)).any(), "not a soft mask"
    centre = divmod(int(mask.argmax()), size)
    assert mask[centre] == 1.0
    assert torch.equal(out.x[:, :, centre[0], centre[1]], x[out.perm][:, :, centre[0], centre[1]])
    row = mask[centre[0]]
    assert (row[centre[1] :].diff() <= 0).all() and (row[: centre[1] + 1].diff() >= 0).all()
    assert float(out.lam) == pytest.approx(1 - mask.mean().item(), abs=1e-6), "the label ratio is inverted"


@pytest.mark.parametrize("relative_sigma", [0.25, 0.4])
def test_smoothmix_width_is_the_drawn_fraction_of_each_side(relative_sigma: float) -> None:
    height, width = 20, 40
    method = bound(SmoothMix(sigma_range=[relative_sigma, relative_sigma]), 3)
    mask = method.sample_mask(height, width, torch.device("cpu"))[0, 0]
    cy, cx = divmod(int(mask.argmax()), width)
    dy = 3 if cy + 3 < height else -3
    dx = 3 if cx + 3 < width else -3
    sigma_y = abs(dy) / math.sqrt(-2 * math.log(mask[cy + dy, cx].item()))
    sigma_x = abs(dx) / math.sqrt(-2 * math.log(mask[cy, cx + dx].item()))
    assert sigma_y == pytest.approx(relative_sigma * height, rel=1e-4)
    assert sigma_x == pytest.approx(relative_sigma * width, rel=1e-4)


# ------------------------------------------------------------------------------------------------- Cutout


def test_cutout_patch_is_the_length_square_clipped_at_the_borders() -> None:
    """By hand on 8x8 images, length 4: rows and columns [c - 2, c + 2) clipped to [0, 8)."""
    centres = torch.tensor([4, 0, 7, 2]), torch.tensor([3, 0, 7, 7])
    masks = cutout_masks(*centres, length=4, height=8, width=8)
    assert masks.shape == (4, 1, 8, 8) and ((masks == 0) | (masks == 1)).all()
    assert masks.sum(dim=(1, 2, 3)).tolist() == [16, 4, 9, 12]  # inside: 4 x 4; corners 2 x 2, 3 x 3; 4 x 3
    inside = torch.zeros(8, 8)
    inside[2:6, 1:5] = 1
    assert torch.equal(masks[0, 0], inside)
    assert masks[1, 0, :2, :2].all() and masks[1].sum() == 4  # the top-left corner only
    assert masks[2, 0, 5:, 5:].all() and masks[3, 0, 0:4, 5:8].all()
    odd = cutout_masks(torch.tensor([4]), torch.tensor([4]), length=5, height=8, width=8)
    assert odd.sum() == 16  # 2 * (5 // 2) per side, as the official code


@pytest.mark.parametrize("seed", range(3))
def test_cutout_zeroes_one_patch_per_image_keeps_the_rest_and_the_labels(seed: int) -> None:
    x, y = batch(seed)
    method = bound(Cutout(length=6), seed)
    cut, masks = method.cut(x)
    assert masks.shape == (BATCH, 1, SIZE, SIZE)
    hole = masks.expand_as(x) == 1
    assert (cut[hole] == 0).all() and torch.equal(cut[~hole], x[~hole])
    areas = masks.sum(dim=(1, 2, 3))
    assert ((areas >= 9) & (areas <= 36)).all()  # clipped at worst to the 3 x 3 corner
    assert len({tuple(mask.nonzero()[0].tolist()) for mask in masks}) > 1, "one centre per image"
    model = LinearNet(SIZE, CLASSES)
    loss, logs = bound(Cutout(length=6), seed).training_step(model, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(model(cut), y))  # labels untouched: plain CE
    assert logs == {}


def test_cutout_replays_with_its_generator_and_reads_nothing_from_the_device() -> None:
    x, _ = batch(0)
    rng = MixRandom(3)
    method = bound(Cutout(), rng)
    with HostSyncCounter("cpu") as syncs:
        first, _ = method.cut(x)
    assert syncs.count == 0, syncs.describe()
    rng.reseed(3)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(method.cut(x)[0], first)
    rng.reseed(4)
    assert not torch.equal(method.cut(x)[0], first)


def test_cutout_refuses_a_length_that_is_not_a_positive_integer() -> None:
    for length in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="length must be a positive number of pixels"):
            Cutout(length=length)
    assert build_method("cutout").length == 16  # configs/method/cutout.yaml: 16 px on CIFAR
