"""The configs and the Python API build with the same defaults, except where a reason is written down.

``configs/method/<name>.yaml`` holds what a run uses; :func:`mixbench.build_method` uses the constructor's
defaults (a composite's: its named children's, :func:`~mixbench.engine.method_config.option_defaults`).  For
every registered method, the config must name exactly the options the method takes, with the same values,
except for the entries of ``DELIBERATE_DIFFERENCES``, each with its reason.  A new disagreement fails, and
so does an entry of the list that no longer differs.  The same holds for the models' configs and builders.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR
from mixbench.engine.method_config import option_defaults, option_parameters
from mixbench.methods import METHODS
from mixbench.models import MODELS
from mixbench.models.adl import ADL_POSITIONS

# (method, option) -> why the config's value differs from the constructor's default
DELIBERATE_DIFFERENCES: dict[tuple[str, str], str] = {
    ("alignmixup_ae", "image_size"): "the decoder's output size: a run's is the data's (${data.image_size}); "
    "the constructor, which has no run, defaults to CIFAR's 32",
    ("fmix", "alpha"): "the FMix paper's alpha 1 in the constructor; the config holds OpenMixup's CIFAR "
    "setting 0.2, which METHODS.md specifies and the benchmark tables use",
    (
        "saliencymix",
        "alpha",
    ): "the official SaliencyMix script's alpha 1 in the constructor; the config holds "
    "OpenMixup's CIFAR setting 0.2, which METHODS.md specifies and the benchmark tables use",
}
# (model, option) -> why the config's value differs from the builder's default
DELIBERATE_MODEL_DIFFERENCES: dict[tuple[str, str], str] = {
    ("swin_t", "drop_path_rate"): "the builder's None keeps timm's architecture default (0.1 for Swin-T); "
    "the config states the recipe's 0.1 explicitly",
    ("deit_s", "drop_path_rate"): "the builder's None keeps timm's architecture default (0.0 for DeiT-S); "
    "the config sets the 0.1 of OpenMixup's DeiT-S recipe",
}
RUN_ARGUMENTS = ("num_classes", "image_size")  # a model's arguments that come from the data, not its config


def config_values(group: str, name: str) -> dict[str, Any]:
    """``configs/<group>/<name>.yaml`` without ``name``, interpolations kept as written."""
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"), resolve=False)
    assert values.pop("name") == name
    return values


def plain(value: Any) -> Any:
    """``value`` with tuples as lists (a YAML list equals a tuple default)."""
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def differences(config: dict[str, Any], defaults: dict[str, Any]) -> set[str]:
    return {key for key in config if key in defaults and plain(config[key]) != plain(defaults[key])}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_config_names_every_option_with_the_constructor_default(name: str) -> None:
    config = config_values("method", name)
    parameters = option_parameters(name)
    assert parameters is not None, f"{name}'s constructor takes **kwargs: its options cannot be checked"
    assert set(config) == set(parameters), (
        f"configs/method/{name}.yaml names {sorted(config)}, the method takes {sorted(parameters)}"
    )
    defaults = option_defaults(name)
    assert set(config) <= set(defaults), (
        f"{name}: options without a default {sorted(set(config) - set(defaults))}"
    )
    allowed = {option for method, option in DELIBERATE_DIFFERENCES if method == name}
    differing = differences(config, defaults)
    assert differing == allowed, {
        key: {"config": config[key], "default": defaults[key]} for key in differing ^ allowed
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_model_config_names_every_option_with_the_builder_default(name: str) -> None:
    config = config_values("model", name)
    parameters = {
        key: p.default
        for key, p in inspect.signature(MODELS[name]).parameters.items()
        if key not in RUN_ARGUMENTS
    }
    parameters.setdefault("pretrained_path", None)  # build_model loads the file for builders without it
    if name in ADL_POSITIONS:
        parameters.setdefault("adl", None)  # build_model inserts ADL layers (mixbench/models/adl.py)
    assert set(config) == set(parameters), (
        f"configs/model/{name}.yaml names {sorted(config)}, the builder takes {sorted(parameters)}"
    )
    allowed = {option for model, option in DELIBERATE_MODEL_DIFFERENCES if model == name}
    differing = differences(config, parameters)
    assert differing == allowed, {
        key: {"config": config[key], "default": parameters[key]} for key in differing ^ allowed
    }


def test_every_deliberate_difference_names_a_registered_option_and_a_reason() -> None:
    for (method, option), reason in DELIBERATE_DIFFERENCES.items():
        assert method in METHODS and option in (option_parameters(method) or {}) and len(reason) > 20
    for (model, option), reason in DELIBERATE_MODEL_DIFFERENCES.items():
        assert model in MODELS and option in inspect.signature(MODELS[model]).parameters and len(reason) > 20


def test_composite_defaults_are_their_named_children() -> None:
    """The switch and SUMix take built methods; by name, their defaults are the children the configs name."""
    assert option_defaults("switch") == {"choices": ("mixup", "cutmix"), "options": None, "probs": None}
    assert option_defaults("sumix") == {
        "base": "cutmix",
        "base_options": None,
        "gamma": 0.5,
        "distance": "signed",
    }
