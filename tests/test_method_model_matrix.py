"""Every method serves every backbone it can, and refuses the others in one line (issue 3).

For each trainable registered method (all but those that need external weights) on PreActResNet18,
WRN16-8, ResNeXt-50, VGG-GAP and MobileNetV2 (and two on ResNet-34), for the input-space methods that run the
model to mix on Swin-T, for AutoMix, AdAutoMix and SUMix on Swin-T, DeiT-S and ConvNeXt-T (timm models
exposing their four stages as maps) and the other feature methods on DeiT-S, the config
``tools/train.py method=<m> model=<model> data=cifar100`` would train with is validated, the model and the
method are built by the trainer's own :func:`build_model_and_method`, and one training step runs on a tiny
random batch: the loss is finite and a finite, non-zero gradient reaches the backbone's first layer
(DeiT-S: its class token).

The configs are the very ones the command line's own check (:func:`mixbench.cli.check_overrides`) composes
for ``method=<every method> model=<model> data=cifar100 --cfg job``: the last test asserts that this check
passes for every method on every model, and the other tests take what it composed (Hydra's compose is the
slow part, so each combination is composed once, by the check itself).

Sizes keep it fast on a CPU: the CNNs at width 8 (ResNeXt-50 at 16, the narrowest its 32 groups allow) on
16 px images, the timm models at 32 px (Swin-T: the smallest size whose token grid, 8 -> 4 -> 2 -> 1, survives
its three patch merges; DeiT-S: a 2x2 patch grid; ConvNeXt-T: 8 -> 4 -> 2 -> 1), batches of 4; the configs are
shrunk to these sizes after composition, as the overrides ``model.width=<w> data.image_size=<s>`` would.  Each
timm model's weights (22-28M) are initialised once and handed to every case of that model (a step changes no
weights: no optimizer runs; gradients are cleared between cases).  ``scripts/test.sh`` distributes the suite
by file (``--dist loadfile``), so the checks and the timm models are made once.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from omegaconf import DictConfig

from mixbench import cli
from mixbench.cli import MAX_CHECKED_COMBINATIONS, check_overrides
from mixbench.config import ConfigError, validate
from mixbench.engine import build as engine_build
from mixbench.engine.build import build_model_and_method
from mixbench.engine.runtime import Runtime
from mixbench.methods import METHODS
from mixbench.models import build_model
from mixbench.rng import MixRandom

NEEDS_EXTERNAL_WEIGHTS = {
    name for name, cls in METHODS.items() if getattr(cls, "needs_external_weights", False)
}
TRAINABLE = sorted(set(METHODS) - NEEDS_EXTERNAL_WEIGHTS)
# Methods that read hidden feature tensors: none of them can run on a model exposing only its input.  Every
# other method must train on Swin-T, so a new method is tested on Swin-T unless it is added here.
FEATURE_SPACE = {"manifoldmix", "alignmixup", "alignmixup_ae", "automix", "samix", "adautomix", "sumix"}
INPUT_SPACE = sorted(set(TRAINABLE) - FEATURE_SPACE)
# on Swin-T: the input-space methods that run the model to mix (input-gradient saliency: Puzzle Mix, Co-Mixup;
# the switch's choices) and two that only cut or blend images; the others touch images only
INPUT_SPACE_ON_SWIN = ["comixup", "cutmix", "mixup", "puzzlemix", "switch", "vanilla"]
# model -> width: the narrowest that avoids a PyTorch 2.14 CPU bug (oneDNN backward of a 1x1 stride-2
# convolution on a channels-last input with a channel count not a multiple of 8 corrupts the heap; Puzzle
# Mix's cell moves give such inputs), and ResNeXt-50's narrowest (32 groups).
CNNS = {"r18": 8, "wrn16_8": 8, "rx50": 16, "vgg_gap": 8, "mobilenet_v2": 8}
# torchvision's ImageNet-stem ResNets share one builder (resnet18_imagenet, resnet34, resnet50): resnet34
# trains an input-space and a feature-space method's step (below); the command-line check covers every method
TORCHVISION_RESNETS = {"resnet34": 8}
TIMM_MODELS = ["convnext_t", "deit_s", "swin_t"]  # every stage exposed, as maps; fixed width
MODELS_CHECKED = [*sorted(CNNS), *sorted(TORCHVISION_RESNETS), *TIMM_MODELS]
# on every timm model: the methods of the papers' ViT tables (AutoMix, AdAutoMix, SUMix); the other feature
# methods on DeiT-S, whose maps carry the class token beside the patch tokens (the least ordinary one)
TIMM_TABLE_METHODS = ["adautomix", "automix", "sumix"]
CNN_SIZE, TIMM_SIZE, BATCH, CLASSES = 16, 32, 4, 100  # cifar100's 100 classes
CPU = Runtime(device=torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)


pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),  # see tests/conftest.py
    pytest.mark.xdist_group("method_model_matrix"),
]


@functools.cache
def command_line_checked(model: str) -> dict[str, DictConfig]:
    """Run the command line's check of ``method=<every method> model=<model> data=cifar100 --cfg job``;
    returns the config it composed for each method (raises its :class:`ConfigError` if it fails)."""
    composed: dict[str, DictConfig] = {}

    def recording_compose(*args, **kwargs):
        cfg = cli_compose(*args, **kwargs)
        composed[cfg.method.name] = cfg
        return cfg

    cli_compose = cli.compose
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "compose", recording_compose)
        check_overrides(
            [f"method={','.join(sorted(METHODS))}", f"model={model}", "data=cifar100", "--cfg", "job"]
        )
    return composed


def cli_config(method: str, model: str, image_size: int) -> DictConfig:
    """The config ``tools/train.py method=<method> model=<model> data=cifar100`` trains with, shrunk to
    ``image_size`` (and the CNNs to their width of ``CNNS``) as the command-line overrides would."""
    cfg = copy.deepcopy(command_line_checked(model)[method])
    cfg.device = "cpu"
    cfg.data.image_size = image_size
    if model in CNNS or model in TORCHVISION_RESNETS:
        cfg.model.width = {**CNNS, **TORCHVISION_RESNETS}[model]
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def shared_timm_builder():
    """``build_model`` that builds each timm model once and then returns that network with its gradients
    cleared."""
    built: dict[tuple, torch.nn.Module] = {}

    def build(name: str, **arguments):
        key = (name, *sorted(arguments.items()))
        if key not in built:
            built[key] = build_model(name, **arguments)
        built[key].zero_grad(set_to_none=True)
        return built[key]

    return build


def one_training_step(cfg: DictConfig, image_size: int) -> None:
    """Build as the trainer does, run one step on random data, check the loss and the backbone's gradient."""
    torch.manual_seed(0)
    model, method = build_model_and_method(cfg, CPU)
    method.bind(MixRandom(0), label_smoothing=float(cfg.schedule.label_smoothing), total_steps=10)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, image_size, image_size, generator=generator)
    y = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    model.train()
    loss, logs = method.training_step(model, x, y)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())), f"loss {loss}"
    assert all(torch.isfinite(torch.as_tensor(value)).all() for value in logs.values()), logs
    loss.backward()
    first = next(model.parameters())  # the stem's convolution / the patch embedding / DeiT's class token
    assert first.grad is not None, "no gradient reached the backbone's first layer"
    assert torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    trained = [p.grad for p in [*model.parameters(), *method.parameters()] if p.grad is not None]
    assert all(torch.isfinite(grad).all() for grad in trained)


@pytest.mark.parametrize("model", sorted(CNNS))
@pytest.mark.parametrize("method", TRAINABLE)
def test_every_method_trains_a_step_on_every_cnn(method: str, model: str) -> None:
    cfg = cli_config(method, model, CNN_SIZE)
    assert (cfg.model.name, cfg.model.width, cfg.data.image_size) == (model, CNNS[model], CNN_SIZE)
    one_training_step(cfg, CNN_SIZE)


@pytest.mark.parametrize("method", ["cutmix", "automix"])
def test_resnet34_trains_a_step(method: str) -> None:
    cfg = cli_config(method, "resnet34", CNN_SIZE)
    assert (cfg.model.name, cfg.model.width) == ("resnet34", TORCHVISION_RESNETS["resnet34"])
    one_training_step(cfg, CNN_SIZE)


@pytest.mark.xdist_group("method_model_matrix_timm")  # beside the CNN matrix, on another worker
@pytest.mark.parametrize("method", INPUT_SPACE_ON_SWIN)
def test_input_space_methods_train_a_step_on_swin_t(method: str, shared_timm_builder, monkeypatch) -> None:
    monkeypatch.setattr(engine_build, "build_model", shared_timm_builder)
    cfg = cli_config(method, "swin_t", TIMM_SIZE)
    one_training_step(cfg, TIMM_SIZE)


@pytest.mark.xdist_group("method_model_matrix_timm")
@pytest.mark.parametrize(
    ("method", "model"),
    [(method, model) for method in TIMM_TABLE_METHODS for model in TIMM_MODELS]
    + [(method, "deit_s") for method in sorted(FEATURE_SPACE - set(TIMM_TABLE_METHODS))],
)
def test_feature_space_methods_train_a_step_on_the_timm_models(
    method: str, model: str, shared_timm_builder, monkeypatch
) -> None:
    """Manifold Mixup, AlignMixup(/AE), AutoMix, AdAutoMix and SUMix (on its default base, and on AutoMix
    below) read the stage maps of Swin-T, DeiT-S and ConvNeXt-T."""
    monkeypatch.setattr(engine_build, "build_model", shared_timm_builder)
    cfg = cli_config(method, model, TIMM_SIZE)
    one_training_step(cfg, TIMM_SIZE)


@pytest.mark.xdist_group("method_model_matrix_timm")
@pytest.mark.parametrize("model", TIMM_MODELS)
def test_sumix_on_automix_trains_a_step_on_the_timm_models(
    model: str, shared_timm_builder, monkeypatch
) -> None:
    """SUMix's learned base: the Mix Block reads stage 3, the uncertainty head the last stage."""
    monkeypatch.setattr(engine_build, "build_model", shared_timm_builder)
    cfg = cli_config("sumix", model, TIMM_SIZE)
    cfg.method.base = "automix"
    cfg.method.base_options = None
    one_training_step(cfg, TIMM_SIZE)


@pytest.mark.parametrize("model", MODELS_CHECKED)
def test_every_method_passes_the_command_line_check_on_every_model_without_data(model: str) -> None:
    """``tools/train.py method=<m> model=<model> data=cifar100 --cfg job`` for every registered method.

    The command line's check composes and validates each combination of a sweep, so one sweep over the methods
    checks them all; it needs no data (``--cfg job`` prints the config), and a method/model pair that cannot
    train (alignmixup on swin_t) still composes: the stage check needs built objects.
    """
    assert len(METHODS) <= MAX_CHECKED_COMBINATIONS, "the check would stop before the last methods"
    composed = command_line_checked(model)  # raises the check's ConfigError if any method fails it
    assert sorted(composed) == sorted(METHODS), "the check did not compose every method"
    assert {cfg.model.name for cfg in composed.values()} == {model}
    with pytest.raises(ConfigError, match="unknown model 'nosuch'"):
        check_overrides(["method=alignmixup", "model=nosuch", "data=cifar100", "--cfg", "job"])
