"""ADL (mixbench/models/adl.py): the layer's two maps, eval identity, no host sync, official positions
inserted without new state-dict keys (torchvision files still load strictly), the ``adl`` model option and its
refusals, a training step through the composed config."""

from __future__ import annotations

import pytest
import torch
import torchvision

from mixbench.engine.build import build_model_and_method
from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.engine.runtime import resolve_runtime
from mixbench.models import build_model
from mixbench.models.adl import ADL, ADL_POSITIONS, adl_positions, insert_adl
from tests.helpers import compose_config

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py

OPTION = {"vgg_gap": {"drop_rate": 0.75, "gamma": 0.8}, "resnet50": {"drop_rate": 0.75, "gamma": 0.9}}


def hand_map() -> torch.Tensor:
    """One image, two channels on a 2x3 grid; channel means 0.1, 0.5, 0.9 / 1.0, 0.7, 0.0 (peak 1.0)."""
    first = torch.tensor([[0.0, 0.4, 0.8], [1.2, 0.6, 0.0]])
    second = torch.tensor([[0.2, 0.6, 1.0], [0.8, 0.8, 0.0]])
    return torch.stack([first, second])[None]


def test_eval_mode_is_the_identity() -> None:
    layer = ADL(drop_rate=1.0, gamma=0.5).eval()
    x = torch.rand(2, 3, 4, 4)
    assert layer(x) is x
    assert list(layer.state_dict()) == [] and list(layer.parameters()) == []


def test_drop_mask_zeroes_exactly_where_the_attention_reaches_gamma_of_the_peak() -> None:
    """drop_rate 1: attention = channel mean [[0.1, 0.5, 0.9], [1.0, 0.7, 0.0]], gamma * peak = 0.8: the
    positions at 0.9 and 1.0 are zeroed in every channel, the rest pass unchanged."""
    x = hand_map()
    out = ADL(drop_rate=1.0, gamma=0.8).train()(x)
    keep = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert torch.equal(out, x * keep)
    # per image: a second image ten times larger has its own peak, hence the same mask
    both = ADL(drop_rate=1.0, gamma=0.8).train()(torch.cat([x, 10 * x]))
    assert torch.equal(both[1], 10 * x[0] * keep)


def test_importance_map_is_the_sigmoid_of_the_channel_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 4)
    out = ADL(drop_rate=0.0, gamma=0.8).train()(x)
    torch.testing.assert_close(out, x * torch.sigmoid(x.mean(1, keepdim=True)), rtol=0, atol=0)


def test_the_choice_is_one_per_batch_at_the_drop_rate_and_reads_nothing_on_the_host() -> None:
    torch.manual_seed(0)
    layer = ADL(drop_rate=0.75, gamma=0.8).train()
    x = hand_map().repeat(4, 1, 1, 1).requires_grad_()
    dropped = []
    with HostSyncCounter("cpu", raise_on_sync=True):
        for _ in range(400):
            out = layer(x)
            out.sum().backward()
            dropped.append(out[:, :, 0, 2] == 0)  # 0 under the drop mask, > 0 under the importance map
    dropped = torch.stack(dropped)  # steps x batch x channels
    assert bool((dropped == dropped[:, :1, :1]).all())  # the same map for every sample and channel
    assert 0.68 < float(dropped[:, 0, 0].float().mean()) < 0.82  # 400 draws at 0.75: sd 0.022


def test_official_positions_name_the_layers_they_follow() -> None:
    vgg = build_model("vgg_gap", 10, 32, width=4)
    positions = adl_positions(vgg)
    assert positions["pool3"] is vgg.features[16] and positions["conv4_3"] is vgg.features[22]
    assert positions["conv5_3"] is vgg.features[29] and "pool1" not in positions  # the stem is not a stage
    resnet = build_model("resnet50", 10, 32, width=8)
    assert adl_positions(resnet)["layer4.2"] is resnet.layer4[2]
    assert set(ADL_POSITIONS["vgg_gap"]) <= set(positions) and set(ADL_POSITIONS["resnet50"]) <= set(
        adl_positions(resnet)
    )


@pytest.mark.parametrize("name", ["vgg_gap", "resnet50"])
def test_adl_runs_on_the_output_of_the_layers_it_follows(name: str) -> None:
    """Each inserted layer receives exactly the output of its position's layer, in the official order, and is
    registered under ``<key>_adl`` next to it."""
    torch.manual_seed(0)
    model = build_model(name, 10, 32, width=4 if name == "vgg_gap" else 8)
    targets = adl_positions(model)
    layers = insert_adl(model, ADL_POSITIONS[name], drop_rate=1.0, gamma=0.5)
    outputs: dict[str, torch.Tensor] = {}
    inputs: list[tuple[str, torch.Tensor]] = []
    for layer, position in zip(layers, ADL_POSITIONS[name], strict=True):
        targets[position].register_forward_hook(lambda m, a, out, p=position: outputs.__setitem__(p, out))
        layer.register_forward_pre_hook(lambda m, args, p=position: inputs.append((p, args[0])))
    model.train()(torch.randn(2, 3, 32, 32))
    assert [position for position, _ in inputs] == list(ADL_POSITIONS[name])
    assert all(x is outputs[position] for position, x in inputs)
    assert sum(isinstance(m, ADL) for m in model.modules()) == 3
    if name == "vgg_gap":
        keys = [key for key, module in model.features.named_children() if isinstance(module, ADL)]
        assert keys == ["16_adl", "22_adl", "29_adl"]
    else:
        assert [key for key, m in model.layer3.named_children() if isinstance(m, ADL)] == ["0_adl"]
        assert [key for key, m in model.layer4.named_children() if isinstance(m, ADL)] == ["0_adl", "2_adl"]


def test_torchvision_state_dicts_still_load_strictly() -> None:
    """Same keys and shapes with and without ADL; torchvision's resnet50 loads strictly into resnet50 with ADL
    and torchvision's vgg16 features into vgg_gap's ``features`` (its classifier is VGG-GAP's own)."""
    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None)
        model = build_model("resnet50", 1000, 224, adl=OPTION["resnet50"])
        plain = build_model("resnet50", 1000, 224)
        assert list(model.state_dict()) == list(plain.state_dict())
        model.load_state_dict(reference.state_dict(), strict=True)
        vgg16 = torchvision.models.vgg16(weights=None)
        vgg = build_model("vgg_gap", 200, 224, adl=OPTION["vgg_gap"])
        assert list(vgg.state_dict()) == list(build_model("vgg_gap", 200, 224).state_dict())
        state = vgg16.state_dict()
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        vgg.features.load_state_dict(features, strict=True)


def test_a_weights_file_loads_through_pretrained_path_with_adl(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_model("resnet50", 10, 32, width=8)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet50", 10, 32, width=8, pretrained_path=str(path), adl=OPTION["resnet50"])
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["vgg_gap", "resnet50"])
def test_eval_logits_equal_the_model_without_adl_on_the_same_weights(name: str) -> None:
    torch.manual_seed(0)
    width = 4 if name == "vgg_gap" else 8
    plain = build_model(name, 10, 32, width=width).eval()
    model = build_model(name, 10, 32, width=width, adl=OPTION[name])
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))
        assert torch.equal(model.forward_features(x, 4), plain.forward_features(x, 4))  # CAM features
        assert not torch.equal(model.train()(x), plain.train()(x))  # ADL acts in training only


def test_a_training_step_on_vgg_gap_with_adl_from_the_config() -> None:
    """``model.adl={...}`` over the shipped null composes, builds as the trainer builds and trains a step."""
    torch.manual_seed(0)
    cfg = compose_config(
        [
            "data=digits",
            "model=vgg_gap",
            "method=vanilla",
            "model.width=4",
            "model.adl={drop_rate: 0.75, gamma: 0.8}",
            "data.image_size=32",
            "device=cpu",
        ]
    )
    model, method = build_model_and_method(cfg, resolve_runtime(cfg))
    assert sum(isinstance(m, ADL) for m in model.modules()) == 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    loss, _ = method.training_step(model, x, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model.features[0].weight.grad is not None


def test_refusals() -> None:
    with pytest.raises(ValueError, match="no ADL positions"):
        build_model("r18", 10, 32, width=4, adl={"drop_rate": 0.75, "gamma": 0.9})
    with pytest.raises(ValueError, match="missing: gamma"):
        build_model("vgg_gap", 10, 32, width=4, adl={"drop_rate": 0.75})
    with pytest.raises(ValueError, match="unknown: rate"):
        build_model("vgg_gap", 10, 32, width=4, adl={"rate": 0.75, "drop_rate": 0.7, "gamma": 0.8})
    with pytest.raises(ValueError, match="unknown ADL position"):
        build_model("vgg_gap", 10, 32, width=4, adl={"drop_rate": 0.75, "gamma": 0.8, "positions": ["pool5"]})
    with pytest.raises(ValueError, match="drop_rate must be in"):
        ADL(drop_rate=1.5)
    model = build_model("resnet50", 10, 32, width=8, adl=OPTION["resnet50"])
    with pytest.raises(ValueError, match="already has ADL"):
        insert_adl(model, ["layer3.1"], 0.75, 0.9)
    assert build_model("r18", 10, 32, width=4, adl=None) is not None  # null is today's behaviour everywhere
