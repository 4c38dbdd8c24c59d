"""Backbones: stage shapes, the stage contract, parameter counts, torchvision compatibility, timm wrappers.

Full-width models are built on the ``meta`` device (shapes and parameter counts without memory or compute);
real forward passes use small widths.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import nn

from mixbench.evaluation.localization import compute_cams
from mixbench.models import MODELS, StagedNet, StageUnavailableError, build_model
from mixbench.models.preact_resnet import PreActBlock
from mixbench.models.timm_models import swin_window_size
from mixbench.models.wide_resnet import WideBasicBlock, wrn28_10

CNNS = ["r18", "wrn16_8", "wrn28_8", "resnet18", "rx50", "resnet50", "resnet18_imagenet", "rx50_imagenet"]
TIMM_MODELS = ["swin_t", "deit_s"]
MODELS_TESTED_ELSEWHERE = ["resnet34", "convnext_t"]  # tests/test_models_transformers.py
TORCHVISION_CNNS = ["vgg_gap", "mobilenet_v2"]  # tested at the end of this file
DEFAULT_WIDTH = {
    "r18": 64,
    "wrn16_8": 128,
    "wrn28_8": 128,
    "resnet18": 64,
    "rx50": 64,
    "resnet50": 64,
    "resnet18_imagenet": 64,
    "rx50_imagenet": 64,
}
SMALL_WIDTH = {
    "r18": 8,
    "wrn16_8": 8,
    "wrn28_8": 8,
    "resnet18": 8,
    "rx50": 16,
    "resnet50": 8,
    "resnet18_imagenet": 8,
    "rx50_imagenet": 16,
}


def expected_stage_shapes(name: str, width: int) -> list[tuple[int, int, int]]:
    """(C, H, W) of stages 0..n on a 32 px input, from the architecture's definition."""
    if name in ("r18", "resnet18"):
        stages = [(width * 2**i, 32 >> i, 32 >> i) for i in range(4)]
    elif name in ("wrn16_8", "wrn28_8"):
        stages = [(width * 2**i, 32 >> i, 32 >> i) for i in range(3)]
    elif name == "rx50":
        stages = [(4 * width * 2**i, 32 >> i, 32 >> i) for i in range(4)]
    elif name == "resnet18_imagenet":  # the ImageNet stem divides the resolution by 4
        stages = [(width * 2**i, 8 >> i, 8 >> i) for i in range(4)]
    else:  # resnet50, rx50_imagenet: ImageNet stem, bottlenecks expand by 4
        stages = [(4 * width * 2**i, 8 >> i, 8 >> i) for i in range(4)]
    return [(3, 32, 32), *stages]


def stage_shapes(model: StagedNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(model.forward_features(x, k).shape[1:]) for k in model.feature_stages]


def meta_model(name: str, num_classes: int = 100, width: int | None = None) -> StagedNet:
    with torch.device("meta"):
        return build_model(name, num_classes, 32, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny CPU forwards are much slower with several intra-op threads when another process holds a core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def timm_models() -> dict[str, StagedNet]:
    torch.manual_seed(0)
    return {name: build_model(name, 10, 32).eval() for name in TIMM_MODELS}


# --- CNN stage shapes and the stage contract -------------------------------------------------------------


def test_published_feature_shapes_at_default_width() -> None:
    """The feature maps the AlignMixup paper mixes: PreActResNet18 512x4x4, WRN16-8 512x8x8, on 32 px."""
    x = torch.empty(2, 3, 32, 32, device="meta")
    assert stage_shapes(meta_model("r18"), x)[-1] == (512, 4, 4)
    assert stage_shapes(meta_model("wrn16_8"), x)[-1] == (512, 8, 8)


@pytest.mark.parametrize("name", CNNS)
def test_stage_shapes_at_default_width(name: str) -> None:
    x = torch.empty(2, 3, 32, 32, device="meta")
    assert stage_shapes(meta_model(name), x) == expected_stage_shapes(name, DEFAULT_WIDTH[name])


@pytest.mark.parametrize("name", CNNS)
def test_stage_shapes_and_contract_at_small_width(name: str) -> None:
    """Real forward at a small width: shapes per stage, and forward_from(forward_features(x, k), k) ==
    model(x).
    """
    torch.manual_seed(0)
    model = build_model(name, 10, 32, width=SMALL_WIDTH[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert stage_shapes(model, x) == expected_stage_shapes(name, SMALL_WIDTH[name])
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        for k in model.feature_stages:
            resumed = model.forward_from(model.forward_features(x, k), k)
            torch.testing.assert_close(resumed, logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", CNNS)
def test_width_option_scales_every_stage(name: str) -> None:
    """Real forwards of one image: at these widths faster than the meta device's Python shape functions."""
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        narrow = stage_shapes(build_model(name, 10, 32, width=SMALL_WIDTH[name]).eval(), x)
        wide = stage_shapes(build_model(name, 10, 32, width=2 * SMALL_WIDTH[name]).eval(), x)
    assert narrow == expected_stage_shapes(name, SMALL_WIDTH[name])
    assert [2 * s[0] for s in narrow[1:]] == [s[0] for s in wide[1:]]
    assert [s[1:] for s in narrow] == [s[1:] for s in wide]


@pytest.mark.parametrize("name", CNNS)
def test_cnns_expose_every_stage(name: str) -> None:
    model = meta_model(name)
    assert model.feature_stages == tuple(range(model.num_stages + 1))
    with pytest.raises(StageUnavailableError, match=name):
        model.forward_features(torch.empty(1, 3, 32, 32, device="meta"), model.num_stages + 1)


# --- parameter counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "num_classes", "count", "published"),
    [
        ("r18", 100, 11_217_444, 11.2e6),
        ("wrn16_8", 100, 11_012_036, 11.0e6),
        ("wrn28_8", 100, 23_409_092, 23.4e6),
        ("resnet18", 100, 11_220_132, 11.2e6),
        ("rx50", 100, 23_177_124, 23.2e6),
        ("resnet50", 1000, 25_557_032, 25.6e6),
        ("resnet18_imagenet", 1000, 11_689_512, 11.7e6),
        ("rx50_imagenet", 1000, 25_028_904, 25.0e6),
    ],
)
def test_parameter_counts(name: str, num_classes: int, count: int, published: float) -> None:
    measured = count_parameters(meta_model(name, num_classes))
    assert measured == count
    assert abs(measured - published) / published < 0.01


def test_wrn28_10_parameter_count() -> None:
    """The WRN family's best-known member: 36.5M parameters with 100 classes."""
    with torch.device("meta"):
        measured = count_parameters(wrn28_10(100))
    assert measured == 36_546_980
    assert abs(measured - 36.5e6) / 36.5e6 < 0.01


# --- architecture details --------------------------------------------------------------------------------


def test_preact_block_identity_shortcut_carries_the_preactivation() -> None:
    """AlignMixup's block adds ReLU(BN(x)), not x: with a zero residual branch it returns ReLU(BN(x))."""
    block = PreActBlock(4, 4, stride=1).eval()
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.bn1(x)))


def test_wide_block_identity_shortcut_is_the_raw_input() -> None:
    block = WideBasicBlock(4, 4, stride=1, dropout=0.0).eval()
    nn.init.zeros_(block.conv2.weight)
    nn.init.zeros_(block.conv2.bias)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("name", ["r18"])
def test_last_stage_is_before_any_final_activation(name: str) -> None:
    """The PreActResNet (no final BN) does not end its stages with a ReLU (the WRN does: see below)."""
    torch.manual_seed(0)
    model = build_model(name, 10, 32, width=8).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 3, 32, 32), model.num_stages)
    assert (features < 0).any()


def test_wrn_stem_and_blocks_have_biases_and_dropout_option_reaches_blocks() -> None:
    model = build_model("wrn16_8", 10, 32, width=8, dropout=0.3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.bias is not None for conv in convs)
    rates = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.3}


@pytest.mark.parametrize("name", ["rx50", "rx50_imagenet"])
def test_rx50_uses_32_groups_of_4_channels(name: str) -> None:
    model = meta_model(name)
    first = model.layer1[0].conv2
    assert (first.groups, first.in_channels) == (32, 128)


def test_rx50_rejects_a_width_too_small_for_its_groups() -> None:
    with pytest.raises(ValueError, match="bottleneck width is 0"):
        meta_model("rx50", width=8)


def test_resnet_init_is_torchvision_default() -> None:
    """Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, and no zero-init of the last BN of a branch."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 32, width=32)
    conv = model.layer1[0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


# --- torchvision compatibility ---------------------------------------------------------------------------


def shapes(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def test_resnet50_matches_torchvision_names_shapes_and_outputs() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    ours = build_model("resnet50", 1000, 224).eval()
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    assert count_parameters(ours) == 25_557_032
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize(
    ("name", "torchvision_builder"),
    [
        ("resnet18_imagenet", torchvision.models.resnet18),
        ("rx50_imagenet", torchvision.models.resnext50_32x4d),
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
    ],
)
def test_imagenet_stem_models_are_torchvision_models(name: str, torchvision_builder) -> None:
    """Same parameter count, names and shapes as torchvision's model; its state dict loads strictly (the form
    of its ImageNet weights) and then both compute the same function."""
    torch.manual_seed(0)
    reference = torchvision_builder(weights=None).eval()
    ours = build_model(name, 1000, 224).eval()
    assert count_parameters(ours) == count_parameters(reference)
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_imagenet_weights_file_fine_tunes_with_a_new_classifier(tmp_path) -> None:
    """``model.pretrained_path`` with a torchvision ResNet-18 file: every tensor but the 1000-way fc is loaded
    into a CUB-200 model, whose 200-way fc stays at init."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18_imagenet", 200, 224, pretrained_path=str(path))
    assert model.fc.weight.shape == (200, 512)
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def cifar_stem(model: torchvision.models.ResNet) -> torchvision.models.ResNet:
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def test_cifar_resnet18_matches_torchvision_with_a_3x3_stem() -> None:
    """Same names and shapes as torchvision's resnet18 with a 3x3 conv1, and the same function once loaded."""
    torch.manual_seed(0)
    reference = cifar_stem(torchvision.models.resnet18(weights=None, num_classes=100)).eval()
    ours = build_model("resnet18", 100, 32).eval()
    assert shapes(ours.state_dict()) == shapes(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_rx50_matches_torchvision_resnext50_with_a_3x3_stem() -> None:
    with torch.device("meta"):
        reference = cifar_stem(torchvision.models.resnext50_32x4d(weights=None, num_classes=100))
    assert shapes(meta_model("rx50").state_dict()) == shapes(reference.state_dict())


# --- timm transformers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["swin_t", "deit_s"])
def test_timm_models_run_at_32px_and_resume_from_their_input_stage(
    name: str, timm_models: dict[str, StagedNet]
) -> None:
    """At 32 px the logits come out of the input stage's resumption; stages 0-4 exist (every stage is
    checked against timm in tests/test_models_transformers.py), nothing beyond."""
    model = timm_models[name]
    x = torch.randn(2, 3, 32, 32)
    assert model.feature_stages == (0, 1, 2, 3, 4)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        assert model.forward_features(x, 0) is x
        torch.testing.assert_close(model.forward_from(x, 0), logits)
    with pytest.raises(StageUnavailableError, match=name):
        model.forward_from(x, 5)


def test_swin_window_size_divides_the_token_grid(timm_models: dict[str, StagedNet]) -> None:
    assert [swin_window_size(s) for s in (224, 32, 64, 96)] == [7, 4, 4, 6]
    first_block = timm_models["swin_t"].net.layers[0].blocks[0]
    assert tuple(first_block.window_size) == (4, 4)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_reject_a_width(name: str) -> None:
    with pytest.raises(ValueError, match="width"):
        build_model(name, 10, 32, width=64)


def test_no_weight_decay_names_are_real_parameters(timm_models: dict[str, StagedNet]) -> None:
    for model in timm_models.values():
        names = dict(model.named_parameters())
        exempt = model.no_weight_decay() & set(names)
        assert exempt and all(name.startswith("net.") for name in exempt)


def test_pretrained_path_loads_backbone_and_drops_a_mismatched_head(
    tmp_path, timm_models: dict[str, StagedNet]
) -> None:
    """Also checks that drop_path_rate reaches timm (one build serves both)."""
    source = timm_models["deit_s"]
    path = tmp_path / "deit_s.pth"
    torch.save({"model": source.net.state_dict()}, path)  # nested like the official DeiT release
    target = build_model("deit_s", 100, 32, pretrained_path=str(path), drop_path_rate=0.25)
    assert target.net.blocks[-1].drop_path1.drop_prob == pytest.approx(0.25)
    assert target.net.head.weight.shape == (100, 384)
    for key, value in source.net.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(target.net.state_dict()[key], value, rtol=0, atol=0)


def test_missing_pretrained_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_model("swin_t", 10, 32, pretrained_path=str(path))


# --- registry --------------------------------------------------------------------------------------------


def test_registry_lists_every_model() -> None:
    assert sorted(MODELS) == sorted(CNNS + TORCHVISION_CNNS + TIMM_MODELS + MODELS_TESTED_ELSEWHERE)


def test_unknown_model_error_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'x'") as error:
        build_model("x", 10, 32)
    assert all(name in str(error.value) for name in MODELS)


@pytest.mark.parametrize("name", CNNS)
def test_built_model_carries_its_registry_name(name: str) -> None:
    assert meta_model(name).name == name


def test_option_a_model_does_not_take_is_rejected() -> None:
    with pytest.raises(ValueError, match="dropout"):
        build_model("r18", 10, 32, width=8, dropout=0.1)


def test_local_pretrained_weights_load_into_a_cnn_and_a_foreign_file_is_refused(tmp_path) -> None:
    """torchvision-format weights load by name (classifier of another size left at init); a file of another
    architecture is refused rather than half-loaded."""
    source = build_model("resnet18", num_classes=10, image_size=32, width=8)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = build_model("resnet18", num_classes=7, image_size=32, width=8, pretrained_path=str(path))
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert torch.equal(loaded.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert loaded.fc.weight.shape == (7, 64)
    with pytest.raises(ValueError, match="does not fit this model"):
        build_model("r18", num_classes=10, image_size=32, width=8, pretrained_path=str(path))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("r18", num_classes=10, image_size=32, width=8, pretrained_path=str(tmp_path / "none.pt"))


def test_wrn_last_stage_is_the_activated_tensor_the_classifier_pools() -> None:
    """As in the official AlignMixup encoder: the final BN-ReLU belongs to stage 3, so methods reading the
    last stage see what the classifier pools, and the state dict keeps one copy of every tensor."""
    model = build_model("wrn16_8", 10, 16, width=8).eval()
    x = torch.randn(2, 3, 16, 16)
    features = model.forward_features(x, 3)
    assert features.min() >= 0  # after the ReLU
    expected = model.relu(model.final_bn(model.layer3(model.forward_features(x, 2))))
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(model(x), model.fc(features.mean(dim=(2, 3))))
    assert not any(key.startswith("_stages") for key in model.state_dict())


def final_bn_running_mean_after_one_batch(name: str, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The final BN's running mean after one training batch, and that batch's mean of the BN's input."""
    torch.manual_seed(0)
    model = build_model(name, 10, 16, width=8, **options).train()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batch_mean = model.layer3(model.forward_features(x, 2)).mean(dim=(0, 2, 3))
        model(x)
    return model.final_bn.running_mean, batch_mean


def test_wrn16_8_final_bn_follows_the_official_momentum_0_9() -> None:
    """AlignMixup's WRN builds its final BN with momentum 0.9 (PyTorch's convention: the new batch's weight),
    so one batch moves the running mean from 0 to 0.9 * the batch mean; the other BNs keep 0.1."""
    running, batch_mean = final_bn_running_mean_after_one_batch("wrn16_8")
    assert batch_mean.abs().max() > 0.1  # the check below could not tell 0.9 from 0.1 on a zero mean
    torch.testing.assert_close(running, 0.9 * batch_mean)
    model = build_model("wrn16_8", 10, 16, width=8)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1, 0.9}
    assert model.final_bn.momentum == 0.9

    running, batch_mean = final_bn_running_mean_after_one_batch("wrn16_8", final_bn_momentum=0.1)
    torch.testing.assert_close(running, 0.1 * batch_mean)
    running, batch_mean = final_bn_running_mean_after_one_batch("wrn28_8")  # not AlignMixup's: PyTorch's
    torch.testing.assert_close(running, 0.1 * batch_mean)
    with pytest.raises(ValueError, match="final_bn_momentum"):
        build_model("wrn16_8", 10, 16, width=8, final_bn_momentum=0.0)


# --- VGG-GAP and MobileNetV2 (torchvision layouts) -------------------------------------------------------


TORCHVISION_SMALL_WIDTH = {"vgg_gap": 8, "mobilenet_v2": 8}
TORCHVISION_STAGES_224 = {  # (C, H, W) of stages 0..4 at full width on a 224 px input
    "vgg_gap": [(3, 224, 224), (128, 56, 56), (256, 28, 28), (512, 14, 14), (1024, 14, 14)],
    "mobilenet_v2": [(3, 224, 224), (24, 56, 56), (32, 28, 28), (96, 14, 14), (1280, 7, 7)],
}
TORCHVISION_STAGES_32_SMALL = {  # the same at width 8 on a 32 px input
    "vgg_gap": [(3, 32, 32), (16, 8, 8), (32, 4, 4), (64, 2, 2), (128, 2, 2)],
    # torchvision's width_mult = 8 / 32 rounds every width to a multiple of 8; the last conv keeps 1280
    "mobilenet_v2": [(3, 32, 32), (8, 8, 8), (8, 4, 4), (24, 2, 2), (1280, 1, 1)],
}


@pytest.mark.parametrize("name", TORCHVISION_CNNS)
def test_torchvision_cnn_stage_shapes_at_224px(name: str) -> None:
    """On the meta device: VGG-GAP's last map is 14x14 (no pool5) with the added conv's 1024 channels."""
    with torch.device("meta"):
        model = build_model(name, 1000, 224)
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert model.feature_stages == (0, 1, 2, 3, 4)
    assert stage_shapes(model, x) == TORCHVISION_STAGES_224[name]
    assert model(x).shape == (1, 1000)
    with pytest.raises(StageUnavailableError, match=name):
        model.forward_features(x, 5)


@pytest.mark.parametrize("name", TORCHVISION_CNNS)
def test_torchvision_cnn_stage_shapes_and_contract_at_small_width(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 32, width=TORCHVISION_SMALL_WIDTH[name]).eval()
    assert model.name == name
    x = torch.randn(2, 3, 32, 32)
    assert stage_shapes(model, x) == TORCHVISION_STAGES_32_SMALL[name]
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        for k in model.feature_stages:
            resumed = model.forward_from(model.forward_features(x, k), k)
            torch.testing.assert_close(resumed, logits, rtol=0, atol=0)
        mixed = model(x, mix_stage=2, mix_fn=lambda h: h.flip(0))
    assert mixed.shape == (2, 10)


def test_vgg_gap_width_scales_every_stage_like_the_resnets() -> None:
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        narrow = stage_shapes(build_model("vgg_gap", 10, 32, width=8).eval(), x)
        wide = stage_shapes(build_model("vgg_gap", 10, 32, width=16).eval(), x)
    assert [2 * s[0] for s in narrow[1:]] == [s[0] for s in wide[1:]]
    assert [s[1:] for s in narrow] == [s[1:] for s in wide]


def test_mobilenet_v2_rejects_a_width_torchvision_would_round() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("mobilenet_v2", 10, 32, width=12)


@pytest.mark.parametrize(
    ("name", "torchvision_count", "count"),
    [
        # VGG-GAP: torchvision's vgg16 features + the 3x3 conv 512->1024 + the linear 1024->1000
        ("vgg_gap", 14_714_688, 14_714_688 + 512 * 1024 * 9 + 1024 + 1024 * 1000 + 1000),
        ("mobilenet_v2", 3_504_872, 3_504_872),
    ],
)
def test_torchvision_cnn_parameter_counts(name: str, torchvision_count: int, count: int) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, "vgg16" if name == "vgg_gap" else name)(weights=None)
    part = reference.features if name == "vgg_gap" else reference
    assert count_parameters(part) == torchvision_count
    assert count_parameters(meta_model(name, 1000)) == count


def test_mobilenet_v2_weights_file_fine_tunes_with_a_new_classifier(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("mobilenet_v2", 200, 224, pretrained_path=str(path))
    assert model.classifier[1].weight.shape == (200, 1280)
    for key, value in reference.state_dict().items():
        if not key.startswith("classifier."):
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_vgg_gap_loads_a_torchvision_vgg16_file_into_its_features(tmp_path) -> None:
    """Every ``features.N`` tensor of torchvision's vgg16 layout loads (its fully connected
    ``classifier.0/3/6`` are ignored); the added conv and the classifier stay at their init; a file missing a
    feature tensor is refused."""
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None).state_dict()  # 138M parameters: built once here
    path = tmp_path / "vgg16.pth"
    torch.save(reference, path)
    torch.manual_seed(1)
    fresh = build_model("vgg_gap", 200, 224)
    torch.manual_seed(1)
    model = build_model("vgg_gap", 200, 224, pretrained_path=str(path))
    own = model.state_dict()
    features = {key for key in reference if key.startswith("features.")}
    assert features == {key for key in own if key.startswith("features.")}
    for key in features:
        torch.testing.assert_close(own[key], reference[key], rtol=0, atol=0)
    for key in ("cam_conv.weight", "cam_conv.bias", "classifier.weight", "classifier.bias"):
        torch.testing.assert_close(own[key], fresh.state_dict()[key], rtol=0, atol=0)
    assert model.classifier.weight.shape == (200, 1024)
    partial = {key: reference[key] for key in features if key != "features.28.weight"}
    torch.save(partial, path)
    with pytest.raises(ValueError, match="does not fit this model"):
        build_model("vgg_gap", 200, 224, pretrained_path=str(path))


def test_vgg_gap_gives_the_cam_ingredients() -> None:
    """The last stage is the ReLU'd map the GAP pools, ``classifier.weight`` the class weights: the spatial
    mean of the (unnormalised) CAM of class c plus c's bias is c's logit."""
    torch.manual_seed(0)
    model = build_model("vgg_gap", 10, 32, width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x, model.num_stages)
        logits = model(x)
    assert features.shape == (2, model.feature_channels, 2, 2) and features.min() >= 0
    assert model.classifier.weight.shape == (10, model.feature_channels)
    torch.testing.assert_close(model.head(features), logits)
    classes = logits.argmax(1)
    cams = compute_cams(features, model.classifier.weight, classes, normalize=False)
    torch.testing.assert_close(
        cams.mean(dim=(1, 2)) + model.classifier.bias[classes], logits[[0, 1], classes]
    )
