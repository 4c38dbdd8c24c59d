"""A mixing method built from its name and options, the children of composite methods included.

A plain method is its registered class called with its options.  A composite method takes methods already
built (``Switch(methods, probs)``, ``SUMix(base, gamma, distance)``), while its options *name* them:

    switch:  choices=[mixup, cutmix], options={cutmix: {alpha: 0.2}}, probs=[0.5, 0.5]
    sumix:   base=cutmix, base_options={alpha: 0.2}, gamma=0.5, distance=signed

This module builds each named child from its options and hands it over (``COMPOSITES``).  Every method's
options, a child's as well as the top level's, are checked before its class is called, each problem in one
line naming the config key: an unknown option lists the valid ones (``method.options.cutmix: method 'cutmix'
does not take option(s) beta; valid: alpha``), and values are checked as top-level method values are
(:func:`mixbench.config.check_method_values`).

The two entry points differ only in where a child's defaults come from:

* :func:`build_method` (the Python API, ``mixbench.build_method``): every method, children included, starts
  from its constructor's defaults (the paper's), updated by the options given.
* :func:`build_method_from_config` (runs): a run's method config already holds the method's options
  (``configs/method/<name>.yaml`` composed with the command line); each child starts from its own
  ``configs/method/<child>.yaml`` (:func:`method_defaults`), updated by its options.

Constructor defaults and configs agree except where ``tests/test_method_defaults.py`` lists the reason (FMix
and SaliencyMix: the papers' alpha 1 in the constructor, the benchmark's CIFAR 0.2 in the config).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mixbench.config import CONFIG_DIR, check_method_values
from mixbench.methods import METHODS, MixMethod
from mixbench.methods.sumix import SUMix, check_base_name
from mixbench.methods.switch import Switch, check_choice_names

TOP_LEVEL = "method"  # the config key of the method itself; a child's is e.g. method.options.cutmix

# build_child(name, option overrides or None, config key of those overrides) -> the built child
ChildBuilder = Callable[[str, Mapping[str, Any] | None, str], MixMethod]


def build_switch(
    build_child: ChildBuilder,
    choices: Sequence[str] = ("mixup", "cutmix"),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **switch_arguments: Any,
) -> Switch:
    """A :class:`Switch` over the methods named ``choices``, each built with its ``options[<name>]``; the
    other arguments (``probs``) go to the switch."""
    names = check_choice_names(choices)
    for name in names:
        _check_registered(name, "method.choices")
    overrides = _mapping(options, "method.options")
    strays = sorted(set(overrides) - set(names))
    if strays:
        raise ValueError(f"method.options names {', '.join(strays)}, not among the choices {names}")
    methods = {name: build_child(name, overrides.get(name), f"method.options.{name}") for name in names}
    return Switch(methods, **switch_arguments)


def build_sumix(
    build_child: ChildBuilder,
    base: str = "cutmix",
    base_options: Mapping[str, Any] | None = None,
    **sumix_arguments: Any,
) -> SUMix:
    """A :class:`SUMix` around the cutting method named ``base``, built with ``base_options``; the other
    arguments (``gamma``, ``distance``) go to SUMix."""
    check_base_name(base)
    return SUMix(build_child(base, base_options, "method.base_options"), **sumix_arguments)


@dataclass(frozen=True)
class Composite:
    """How a composite method is built from names: ``build(build_child, **options)`` builds the children
    and the method; ``children_argument`` is the constructor argument that takes them built, which the
    named options replace."""

    build: Callable[..., MixMethod]
    children_argument: str


COMPOSITES: dict[str, Composite] = {
    Switch.name: Composite(build_switch, children_argument="methods"),
    SUMix.name: Composite(build_sumix, children_argument="base"),
}


def _named_parameters(function: Callable[..., Any], skip: int) -> tuple[dict[str, inspect.Parameter], bool]:
    """The parameters of ``function`` that can be passed by name after the first ``skip``, and whether it
    also takes ``**kwargs``."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    named = {
        p.name: p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def option_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The options the registered method ``name`` takes by name: its constructor's arguments, where a
    composite's named children (``choices``/``options``, ``base``/``base_options``) replace the argument
    that takes them built.  ``None`` when the constructor takes any keyword (``**kwargs``)."""
    constructor, open_ended = _named_parameters(METHODS[name].__init__, skip=1)  # self
    if open_ended:
        return None
    composite = COMPOSITES.get(name)
    if composite is None:
        return constructor
    own, _ = _named_parameters(composite.build, skip=1)  # build_child; its **kwargs go to the constructor
    passed_on = {
        key: p for key, p in constructor.items() if key != composite.children_argument and key not in own
    }
    return {**own, **passed_on}


def option_defaults(name: str) -> dict[str, Any]:
    """The default of every option of ``name`` that has one (:func:`option_parameters`): the values
    :func:`build_method` builds with."""
    parameters = option_parameters(name) or {}
    return {key: p.default for key, p in parameters.items() if p.default is not inspect.Parameter.empty}


def method_defaults(name: str) -> dict[str, Any]:
    """The options of ``configs/method/<name>.yaml`` (everything but ``name``), interpolations resolved."""
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"method '{name}' has no config {path}")
    options = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    options.pop("name", None)
    return options


def constructor_defaults(name: str) -> dict[str, Any]:
    """No options: a child built by :func:`build_method` keeps its constructor's defaults."""
    return {}


def build_method(name: str, /, **options: Any) -> MixMethod:
    """The registered method ``name`` with its constructor's defaults (the paper's) updated by ``options``.

    A composite's children are named and built the same way, e.g.
    ``build_method("switch", choices=["mixup", "cutmix"], options={"cutmix": {"alpha": 0.2}})`` or
    ``build_method("sumix", base="cutmix", base_options={"alpha": 0.2})``.  Every problem is a
    ``ValueError`` of one line naming the option.  The method still has to be set up for a model and bound
    to a generator: :func:`mixbench.engine.build.prepare_method`.
    """
    return _build(name, options, TOP_LEVEL, constructor_defaults)


def build_method_from_config(method_cfg: DictConfig | Mapping[str, Any]) -> MixMethod:
    """The method of a run's method config (``name`` and every option, as composed from
    ``configs/method/<name>.yaml`` and the command line); a composite's children start from their own
    configs, updated by their options."""
    options = dict(to_container(method_cfg))
    name = str(options.pop("name"))
    return _build(name, options, TOP_LEVEL, method_defaults)


def to_container(options: DictConfig | Mapping[str, Any]) -> Mapping[str, Any]:
    """``options`` as plain Python containers (a DictConfig resolved)."""
    if isinstance(options, DictConfig):
        return OmegaConf.to_container(options, resolve=True)  # type: ignore[return-value]
    return options


def _build(
    name: str, options: Mapping[str, Any], where: str, child_defaults: Callable[[str], Mapping[str, Any]]
) -> MixMethod:
    """Method ``name`` built from ``options`` (checked; ``where`` is their config key), its children, if it
    is a composite, from ``child_defaults(child)`` updated by their own options."""
    _check_registered(name, where)
    options = dict(options)
    _check_option_names(name, options, where)
    check_method_values(options, prefix=where)
    composite = COMPOSITES.get(name)
    if composite is None:
        return METHODS[name](**options)

    def build_child(child: str, overrides: Mapping[str, Any] | None, child_where: str) -> MixMethod:
        _check_registered(child, child_where)
        merged = {**child_defaults(child), **_mapping(overrides, child_where)}
        return _build(child, merged, child_where, child_defaults)

    return composite.build(build_child, **options)


def _check_registered(name: str, where: str) -> None:
    if name not in METHODS:
        raise ValueError(f"{_label(where)}unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")


def _check_option_names(name: str, options: Mapping[str, Any], where: str) -> None:
    accepted = option_parameters(name)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(
            f"{_label(where)}method '{name}' does not take option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(accepted)) or 'none'}"
        )


def _mapping(options: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``options`` (``None``: none) as a dict, refused in one line when it is not a mapping."""
    if options is None:
        return {}
    options = to_container(options)
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a mapping of options, e.g. {{alpha: 0.2}}, got {options!r}")
    return dict(options)


def _label(where: str) -> str:
    """The message prefix naming a child's config key; none for the method itself."""
    return "" if where == TOP_LEVEL else f"{where}: "


__all__ = [
    "COMPOSITES",
    "Composite",
    "build_method",
    "build_method_from_config",
    "build_sumix",
    "build_switch",
    "method_defaults",
    "option_defaults",
    "option_parameters",
]
