"""The timm backbones' stages (Swin-T, DeiT-S, ConvNeXt-T) and ResNet-34.

Each timm model is built once at 32 px (real weights, eval mode, batches of 2); the 224 px checks run on the
``meta`` device (shapes only).  Tolerances: Swin-T and ConvNeXt-T resume from a stage bit for bit (their maps
are permutations of timm's tensors); DeiT-S reads its class token back as a mean over positions (see
``mixbench/models/timm_models.py``), so it agrees to 1e-5.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import timm
import torch
import torchvision

from mixbench.methods.stage_probe import stage_shape
from mixbench.models import StagedNet, build_model

TIMM_NAMES = {
    "swin_t": ("swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 4}),
    "deit_s": ("deit_small_patch16_224", {"img_size": 32}),
    "convnext_t": ("convnext_tiny", {}),
}
# stage k (1..4) of timm's forward_intermediates
INTERMEDIATE_INDICES = {"swin_t": [0, 1, 2, 3], "deit_s": [2, 5, 8, 11], "convnext_t": [0, 1, 2, 3]}
RESUME_TOLERANCE = {"swin_t": 0.0, "deit_s": 1e-5, "convnext_t": 0.0}
SHAPES_224 = {
    "swin_t": [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)],
    "deit_s": [(768, 14, 14)] * 4,  # 384 patch-token channels + 384 class-token channels
    "convnext_t": [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)],
}


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models() -> dict[str, StagedNet]:
    torch.manual_seed(0)
    return {name: build_model(name, 10, 32).eval() for name in TIMM_NAMES}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_logits_are_timms_on_the_same_weights(name: str, models, images) -> None:
    """A plain ``timm.create_model`` (fixed input size) with our weights gives our logits, bit for bit: the
    dynamic input size we build with does not change the numbers at the built size."""
    timm_name, options = TIMM_NAMES[name]
    reference = timm.create_model(timm_name, pretrained=False, num_classes=10, **options).eval()
    reference.load_state_dict(models[name].net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(models[name](images), reference(images), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_resuming_from_every_stage_gives_the_logits(name: str, models, images) -> None:
    model = models[name]
    assert model.feature_stages == (0, 1, 2, 3, 4) and model.num_stages == 4
    tolerance = RESUME_TOLERANCE[name]
    with torch.no_grad():
        logits = model(images)
        for stage in model.feature_stages:
            resumed = model.forward_from(model.forward_features(images, stage), stage)
            torch.testing.assert_close(resumed, logits, rtol=tolerance, atol=tolerance)
        last = model.forward_features(images, model.num_stages)
        torch.testing.assert_close(model.head(last), logits, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_stage_maps_are_timms_intermediates(name: str, models, images) -> None:
    """Stage k is timm's ``forward_intermediates`` output (NCHW, no final norm); DeiT's map holds the patch
    tokens in its first half of channels and the class token, at every position, in the second."""
    model = models[name]
    with torch.no_grad():
        if name == "deit_s":
            patches, prefixes = zip(
                *model.net.forward_intermediates(
                    images,
                    indices=INTERMEDIATE_INDICES[name],
                    return_prefix_tokens=True,
                    intermediates_only=True,
                ),
                strict=True,
            )
        else:
            patches = model.net.forward_intermediates(
                images, indices=INTERMEDIATE_INDICES[name], intermediates_only=True
            )
        for stage, expected in enumerate(patches, start=1):
            ours = model.forward_features(images, stage)
            channels = expected.shape[1]
            torch.testing.assert_close(ours[:, :channels], expected, rtol=0, atol=0)
            if name == "deit_s":
                class_token = prefixes[stage - 1][:, 0, :, None, None].expand_as(expected)
                torch.testing.assert_close(ours[:, channels:], class_token, rtol=0, atol=0)
            else:
                assert ours.shape[1] == channels == model.net.feature_info[stage - 1]["num_chs"]


def test_deit_class_token_is_mixed_with_the_maps_weights(models, images) -> None:
    """Mixing a batch of DeiT maps with ``lam`` (Manifold Mixup at stage 2) is mixing the whole token sequence
    (class token included) with ``lam`` and running timm's remaining blocks."""
    model, lam, perm = models["deit_s"], 0.3, torch.tensor([1, 0])
    net = model.net
    with torch.no_grad():
        mixed = model(images, mix_stage=2, mix_fn=lambda h: lam * h + (1 - lam) * h[perm])
        tokens = net.blocks[:6](net.norm_pre(net._pos_embed(net.patch_embed(images))))
        tokens = lam * tokens + (1 - lam) * tokens[perm]
        expected = net.forward_head(net.norm(net.blocks[6:](tokens)))
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_stage_shapes_at_224_px_and_a_32_px_probe(name: str) -> None:
    """Built for 224 px, the models still run the methods' 32 px dummy pass (Mix Block, SUMix head sizes)."""
    with torch.device("meta"):
        model = build_model(name, 100, 224)
        x = torch.empty(2, 3, 224, 224)
        shapes = [tuple(model.forward_features(x, k).shape[1:]) for k in range(1, 5)]
        assert shapes == SHAPES_224[name]
        assert model(x).shape == (2, 100)
        assert stage_shape(model, 3, 32)[0] == SHAPES_224[name][2][0]


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_no_class_activation_maps_from_heads_that_are_not_gap_plus_linear(name: str, models) -> None:
    assert models[name].cam_classifier() is None


def test_convnext_cifar_stem_keeps_32_px_maps_and_loads_the_rest_of_a_checkpoint(tmp_path, models) -> None:
    """OpenMixup's CIFAR stem (3x3, stride 1): maps 32, 16, 8, 4 at 32 px; a timm checkpoint loads except
    the patchify conv, which keeps its init."""
    source = models["convnext_t"]
    path = tmp_path / "convnext_t.pth"
    torch.save(source.net.state_dict(), path)
    torch.manual_seed(0)
    target = build_model("convnext_t", 100, 32, pretrained_path=str(path), stem="cifar")
    assert [tuple(stage_shape(target, k, 32)) for k in range(1, 5)] == [
        (96, 32, 32),
        (192, 16, 16),
        (384, 8, 8),
        (768, 4, 4),
    ]
    assert target.net.stem[0].weight.shape == (96, 3, 3, 3)
    loaded = target.net.state_dict()
    for key, value in source.net.state_dict().items():
        if not key.startswith(("head.fc.", "stem.0.weight")):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stem"):
        build_model("convnext_t", 10, 32, stem="overlap")


def test_resnet34_is_torchvisions() -> None:
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model("resnet34", 1000, 224).parameters()) == 21_797_672
    torch.manual_seed(0)
    reference = torchvision.models.resnet34(weights=None, num_classes=10).eval()
    ours = build_model("resnet34", 10, 32).eval()
    ours.load_state_dict(reference.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
        assert [tuple(ours.forward_features(x, k).shape[1:]) for k in range(1, 5)] == [
            (64, 8, 8),
            (128, 4, 4),
            (256, 2, 2),
            (512, 1, 1),
        ]
    assert ours.cam_classifier() is ours.fc
