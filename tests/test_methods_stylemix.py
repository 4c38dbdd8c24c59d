"""StyleMix and StyleCutMix (mixbench/methods/stylemix.py), the AdaIN autoencoder (mixbench/methods/adain.py).

The weight files are random weights written in the exact layout of the public AdaIN release
(``vgg_normalised.pth``: the whole 53-layer VGG-19 ``nn.Sequential``; ``decoder.pth``: the decoder's), written
once per module.  The AdaIN networks run at the batch's own 16 px (``style_size`` null) to stay fast.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

from mixbench.config import validate
from mixbench.engine.build import build_model_and_method
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.runtime import resolve_runtime
from mixbench.engine.step import build_training_step
from mixbench.methods.adain import (
    RELU4_1_LAYERS,
    adaptive_instance_norm,
    load_adain,
    mean_std,
    release_decoder_layout,
    release_encoder_layout,
)
from mixbench.methods.cutmix import box_area_ratio, box_mask
from mixbench.methods.stylemix import (
    StyleCutMix,
    StyleDraw,
    StyleMix,
    class_style_distances,
    style_mix_weights,
)
from mixbench.rng import MixRandom
from mixbench.rundir import run_identity
from tests.helpers import compose_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py

SIZE, CLASSES = 16, 10
# the public release's layouts, as read in github.com/naoto0804/pytorch-AdaIN's net.py: the indices of the
# convolutions in each nn.Sequential, and a few of their shapes
RELEASE_ENCODER_CONVS = [0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51]
RELEASE_DECODER_CONVS = [1, 5, 8, 11, 14, 18, 21, 25, 28]
RELEASE_SHAPES = {
    "encoder": {"0.weight": (3, 3, 1, 1), "2.weight": (64, 3, 3, 3), "29.weight": (512, 256, 3, 3)},
    "decoder": {"1.weight": (256, 512, 3, 3), "14.weight": (128, 256, 3, 3), "28.weight": (3, 64, 3, 3)},
}


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Random weights in the release's layouts, and a random 10-class style-distance matrix."""
    folder = tmp_path_factory.mktemp("adain")
    generator = torch.Generator().manual_seed(0)
    paths = {
        "encoder": folder / "vgg_normalised.pth",
        "decoder": folder / "decoder.pth",
        "distances": folder / "styleDistanceMatrix10.pt",
    }
    for name, layout in (("encoder", release_encoder_layout), ("decoder", release_decoder_layout)):
        with torch.device("meta"):
            shapes = layout()
        torch.save(random_weights(shapes, generator), paths[name])
    torch.save(torch.rand(CLASSES, CLASSES, generator=generator), paths["distances"])
    return paths


def random_weights(layout: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Gaussian weights of scale 1/sqrt(fan-in) and zero biases, for every key of ``layout`` (on meta)."""
    state = {}
    for key, tensor in layout.state_dict().items():
        fan_in = math.prod(tensor.shape[1:]) if tensor.dim() > 1 else 1
        state[key] = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in) * (tensor.dim() > 1)
    return state


def style_mix(files, **options) -> StyleMix:
    method = StyleMix(str(files["encoder"]), str(files["decoder"]), style_size=None, **options)
    method.bind(MixRandom(0))
    return method


def style_cut_mix(files, **options) -> StyleCutMix:
    options.setdefault("style_distance_path", str(files["distances"]))
    method = StyleCutMix(str(files["encoder"]), str(files["decoder"]), style_size=None, **options)
    method.bind(MixRandom(0))
    return method


def images(batch: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=generator), torch.arange(batch) % CLASSES


# ------------------------------------------------------------------------------------------------ AdaIN


def test_the_layouts_are_the_releases_keys_and_shapes() -> None:
    with torch.device("meta"):
        encoder, decoder = release_encoder_layout(), release_decoder_layout()
    for name, layout, convolutions in (
        ("encoder", encoder, RELEASE_ENCODER_CONVS),
        ("decoder", decoder, RELEASE_DECODER_CONVS),
    ):
        state = layout.state_dict()
        assert list(state) == [f"{i}.{kind}" for i in convolutions for kind in ("weight", "bias")]
        for key, shape in RELEASE_SHAPES[name].items():
            assert tuple(state[key].shape) == shape
    assert len(encoder) == 53 and len(decoder) == 29


def test_release_files_load_strictly_and_the_encoder_stops_at_relu4_1(files) -> None:
    autoencoder = load_adain(files["encoder"], files["decoder"])
    saved = torch.load(files["encoder"], weights_only=True)
    assert len(autoencoder.encoder) == RELU4_1_LAYERS
    assert isinstance(autoencoder.encoder[-1], torch.nn.ReLU)
    assert torch.equal(autoencoder.encoder[29].weight, saved["29.weight"])  # conv4_1
    assert torch.equal(
        autoencoder.decoder[28].weight, torch.load(files["decoder"], weights_only=True)["28.weight"]
    )
    assert not any(p.requires_grad for p in autoencoder.parameters())
    features = autoencoder.encode(torch.rand(2, 3, SIZE, SIZE))
    assert features.shape == (2, 512, SIZE // 8, SIZE // 8)
    assert autoencoder.decode(features).shape == (2, 3, SIZE, SIZE)


def test_a_wrong_missing_or_foreign_file_is_one_line_naming_it(files, tmp_path) -> None:
    state = torch.load(files["decoder"], weights_only=True)
    renamed = tmp_path / "renamed.pth"
    torch.save({("decoder." + k if k == "1.weight" else k): v for k, v in state.items()}, renamed)
    resized = tmp_path / "resized.pth"
    torch.save({**state, "28.weight": torch.zeros(4, 64, 3, 3)}, resized)
    not_torch = tmp_path / "notes.txt"
    not_torch.write_text("not weights")
    cases = {
        renamed: "missing 1.weight; unexpected decoder.1.weight",
        resized: "28.weight (4, 64, 3, 3) instead of (3, 64, 3, 3)",
        tmp_path / "absent.pth": "is not a file",
        not_torch: "cannot be read",
    }
    for path, problem in cases.items():
        with pytest.raises(ValueError) as info:
            load_adain(files["encoder"], path)
        message = one_line(info)
        assert f"decoder_path {path}" in message and problem in message and "decoder.pth" in message
    with pytest.raises(ValueError) as info:  # the decoder's file given as the encoder
        load_adain(files["decoder"], files["decoder"])
    assert "encoder_path" in one_line(info) and "vgg_normalised.pth" in str(info.value)


def test_adain_matches_a_hand_computation() -> None:
    generator = torch.Generator().manual_seed(2)
    content = torch.randn(2, 3, 4, 5, generator=generator) * 3 + 1
    style = torch.randn(2, 3, 6, 2, generator=generator) * 0.5 - 2
    out = adaptive_instance_norm(content, style)
    for n in range(2):
        for c in range(3):
            values_c, values_s = content[n, c].flatten().tolist(), style[n, c].flatten().tolist()
            mean_c, mean_s = sum(values_c) / len(values_c), sum(values_s) / len(values_s)
            std_c = math.sqrt(sum((v - mean_c) ** 2 for v in values_c) / (len(values_c) - 1) + 1e-5)
            std_s = math.sqrt(sum((v - mean_s) ** 2 for v in values_s) / (len(values_s) - 1) + 1e-5)
            expected = [(v - mean_c) / std_c * std_s + mean_s for v in values_c]
            assert out[n, c].flatten().tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    mean_out, std_out = mean_std(out)
    mean_style, std_style = mean_std(style)
    assert torch.allclose(mean_out, mean_style, atol=1e-5) and torch.allclose(std_out, std_style, atol=1e-3)


# ------------------------------------------------------------------------------------------------ StyleMix


def test_style_methods_refuse_without_weights_naming_both_files() -> None:
    for cls in (StyleMix, StyleCutMix):
        with pytest.raises(ValueError) as info:
            cls()
        message = one_line(info)
        assert "encoder_path" in message and "decoder_path" in message
        assert "vgg_normalised.pth" in message and "decoder.pth" in message


def test_stylemix_weights_keep_a_content_share_rc_and_a_style_share_rs() -> None:
    rng = MixRandom(3)
    for _ in range(50):
        rc, rs = float(rng.beta(0.5)), float(rng.beta(0.5))
        t = rng.uniform(max(0.0, rc + rs - 1.0), min(rc, rs))
        same, other, a_content_b_style, b_content_a_style = style_mix_weights(rc, rs, t)
        assert min(same, other, a_content_b_style, b_content_a_style) >= -1e-12
        assert same + other + a_content_b_style + b_content_a_style == pytest.approx(1.0)
        assert same + a_content_b_style == pytest.approx(rc)  # a's content
        assert same + b_content_a_style == pytest.approx(rs)  # a's style


def test_stylemix_with_all_of_a_is_a_decoded_and_labelled_y(files) -> None:
    method = style_mix(files)
    x, y = images()
    perm = torch.tensor([1, 2, 3, 0])
    mixed, lam = method.mixed_batch(
        x, y, StyleDraw(True, perm, content_ratio=1.0, style_ratio=1.0, shared=1.0)
    )
    assert lam == 1.0
    assert torch.allclose(mixed, method.adain.decode(method.adain.encode(x)), atol=1e-5)
    mixed, lam = method.mixed_batch(
        x, y, StyleDraw(True, perm, content_ratio=0.0, style_ratio=0.0, shared=0.0)
    )
    assert lam == 0.0 and torch.allclose(mixed, method.adain.decode(method.adain.encode(x[perm])), atol=1e-5)
    # a's content with b's style: label r * 1 + (1 - r) * 0
    mixed, lam = method.mixed_batch(
        x, y, StyleDraw(True, perm, content_ratio=1.0, style_ratio=0.0, shared=0.0)
    )
    features = method.adain.encode(x)
    assert lam == pytest.approx(0.7)
    assert torch.allclose(
        mixed, method.adain.decode(adaptive_instance_norm(features, features[perm])), atol=1e-5
    )


def test_stylemix_draws_follow_the_official_order_and_prob(files) -> None:
    method = style_mix(files, prob=0.2)
    draws = [method.draw(4, (SIZE, SIZE)) for _ in range(400)]
    assert 0.14 < sum(d.mix for d in draws) / len(draws) < 0.26
    method.bind(MixRandom(5))
    draw = method.draw(4, (SIZE, SIZE), force_mix=True)
    reference = MixRandom(5)
    reference.uniform()
    assert torch.equal(draw.perm, reference.permutation(4))
    rc, rs = float(reference.beta(0.5)), float(reference.beta(0.5))
    assert (draw.content_ratio, draw.style_ratio) == (rc, rs)
    assert draw.shared == reference.uniform(max(0.0, rc + rs - 1.0), min(rc, rs))


# --------------------------------------------------------------------------------------------- StyleCutMix


def test_stylecutmix_content_box_area_is_its_content_lam(files) -> None:
    method = style_cut_mix(files, auto_gamma=False, content_weight=0.7)
    x, y = images()
    for seed in range(5):
        method.bind(MixRandom(seed))
        draw = method.draw(4, (SIZE, SIZE), force_mix=True)
        area = box_area_ratio(draw.box, SIZE, SIZE)
        # gamma 1 and style ratio 1: the stylised images drop out, the box holds a, the rest b
        draw.gamma, draw.style_ratio = 1.0, 1.0
        mixed, lam = method.mixed_batch(x, y, draw)
        inside = box_mask(draw.box, SIZE, SIZE).bool().expand_as(x)
        assert torch.equal(mixed[inside], x[inside]) and torch.equal(mixed[~inside], x[draw.perm][~inside])
        assert lam == pytest.approx(area)
        # any gamma and style ratio: lam = r * area + (1 - r) * (gamma * area + (1 - gamma) * r_s)
        draw.gamma, draw.style_ratio = 0.25, 0.6
        _, lam = method.mixed_batch(x, y, draw)
        assert lam == pytest.approx(0.7 * area + 0.3 * (0.25 * area + 0.75 * 0.6))


def test_stylecutmix_box_side_follows_the_official_rand_bbox(files) -> None:
    """rand_bbox(size, 1 - lam_box): a side of int(S * sqrt(lam_box)) before clipping."""
    method = style_cut_mix(files, auto_gamma=False)
    method.bind(MixRandom(7))
    draw = method.draw(4, (224, 224), force_mix=True)
    reference = MixRandom(7)
    reference.uniform(), reference.permutation(4)
    gamma, style_ratio, lam_box = (float(reference.beta(a)) for a in (0.8, 1.0, 1.0))
    assert (draw.gamma, draw.style_ratio) == (gamma, style_ratio)
    side = int(224 * math.sqrt(lam_box))
    centre_y, centre_x = reference.integer(0, 224), reference.integer(0, 224)
    top, bottom, left, right = draw.box
    assert (top, left) == (max(centre_y - side // 2, 0), max(centre_x - side // 2, 0))
    assert (bottom, right) == (min(centre_y + side // 2, 224), min(centre_x + side // 2, 224))


def test_auto_gamma_reads_the_distance_matrix_with_the_official_diagonal(files) -> None:
    method = style_cut_mix(files, delta=3.0)
    matrix = torch.load(files["distances"], weights_only=True)
    y = torch.tensor([0, 1, 2, 3])
    draw = StyleDraw(True, torch.tensor([0, 2, 1, 0]))
    expected = torch.tanh(torch.stack([matrix[0, 0] + 2, matrix[1, 2], matrix[2, 1], matrix[3, 0]]) / 3.0)
    assert torch.allclose(method.gamma(draw, y), expected)
    with pytest.raises(ValueError) as info:
        StyleCutMix(str(files["encoder"]), str(files["decoder"]))
    assert "style_distance_path" in one_line(info) and "auto_gamma=false" in str(info.value)
    with pytest.raises(ValueError) as info:
        method.setup(torch.nn.Linear(2, 2), num_classes=100)
    assert "10-class" in one_line(info)


def test_class_style_distances_are_mean_squared_differences_of_class_style_means(files) -> None:
    autoencoder = load_adain(files["encoder"], files["decoder"])
    x, _ = images(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    distances = class_style_distances(autoencoder, [(x[:3], y[:3]), (x[3:], y[3:])], 3, style_size=None)
    vectors = autoencoder.style_vector(x)
    assert vectors.shape == (6, 2 * (64 + 128 + 256 + 512))
    means = torch.stack([vectors[y == k].mean(0) for k in range(3)])
    assert torch.allclose(distances[0, 2], ((means[0] - means[2]) ** 2).mean())
    assert torch.allclose(distances.diagonal(), torch.zeros(3))


def test_class_style_distances_average_every_image_even_when_a_batch_repeats_a_class(files) -> None:
    """Unlike the official ``res[0, target] += sv`` (one image per class and batch survives the indexed
    assignment), every image counts: a batch holding a class twice contributes both images."""
    autoencoder = load_adain(files["encoder"], files["decoder"])
    x, _ = images(6)
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    distances = class_style_distances(autoencoder, [(x[:3], y[:3]), (x[3:], y[3:])], 2, style_size=None)
    vectors = autoencoder.style_vector(x)
    means = torch.stack([vectors[y == k].mean(0) for k in range(2)])
    assert torch.allclose(distances[0, 1], ((means[0] - means[1]) ** 2).mean())


# --------------------------------------------------------------------------------------------- as run


def run_config(files, method: str, *extra: str):
    cfg = composed(method, files["encoder"], files["decoder"], files["distances"], extra)
    return copy.deepcopy(cfg)


@functools.cache
def composed(method: str, encoder: Path, decoder: Path, distances: Path, extra: tuple[str, ...]):
    files = {"encoder": encoder, "decoder": decoder, "distances": distances}
    overrides = [
        f"method={method}",
        "model=r18",
        "data=digits",
        "model.width=8",
        f"data.image_size={SIZE}",
        "schedule.batch_size=4",
        "device=cpu",
        f"method.encoder_path={files['encoder']}",
        f"method.decoder_path={files['decoder']}",
        "method.style_size=null",
        "method.prob=1.0",
        *extra,
    ]
    if method == "stylecutmix":
        overrides.append(f"method.style_distance_path={files['distances']}")
    cfg = compose_config(overrides)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("name", ["stylemix", "stylecutmix"])
def test_a_training_step_through_the_config_path_is_finite_sync_free_and_leaves_adain_alone(
    files, name: str
) -> None:
    cfg = run_config(files, name)
    runtime = resolve_runtime(cfg)
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, runtime)
    step = build_training_step(cfg, runtime, model, method, updates_per_epoch=2)
    adain_before = {k: v.clone() for k, v in method.adain.state_dict().items()}
    optimised = {id(p) for group in step.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in method.adain.parameters())
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 0  # method_params
    assert not any(key.startswith("adain") for key in method.state_dict())  # not in checkpoints
    x, y = images()
    model.train(), method.train()
    with HostSyncCounter("cpu") as syncs:
        for _ in range(2):
            loss = step(x, y)
    assert syncs.count == 0, syncs.describe()
    assert math.isfinite(float(loss))
    assert not method.adain.training
    assert all(torch.equal(v, adain_before[k]) for k, v in method.adain.state_dict().items())
    assert any(p.grad is not None for p in model.parameters())


def test_the_adain_networks_follow_the_method(files) -> None:
    method = style_mix(files)
    method.to(torch.float64)
    assert method.adain.encoder[0].weight.dtype == torch.float64


def test_the_run_identity_does_not_depend_on_where_the_files_are(files, tmp_path) -> None:
    here = run_config(files, "stylecutmix")
    elsewhere = {
        "encoder": tmp_path / "a" / "vgg_normalised.pth",
        "decoder": tmp_path / "b" / "decoder.pth",
        "distances": tmp_path / "c" / "styleDistanceMatrix10.pt",
    }
    there = copy.deepcopy(here)
    there.method.encoder_path = str(elsewhere["encoder"])
    there.method.decoder_path = str(elsewhere["decoder"])
    there.method.style_distance_path = str(elsewhere["distances"])
    assert there.method.encoder_path != here.method.encoder_path
    assert run_identity(here) == run_identity(there)
    assert str(files["encoder"].parent) not in str(run_identity(here).relative_path())
    there.method.delta = 1.0
    assert run_identity(there) != run_identity(here)
