"""A random switch between mixing methods, drawn afresh for every training step.

Suggested by the benchmark's reproduction report (e.g. AlignMixup vs CutMix with p = 0.5 each), and generic:

    choices = [m_1, ..., m_n],  probs = [p_1, ..., p_n]  (default uniform; p_k >= 0, sum p_k = 1)
    each step:  k ~ Categorical(probs)  (from the run's generator),  loss = loss of m_k on the batch

Each choice is built from its own ``configs/method/<name>.yaml`` defaults plus ``options.<name>`` overrides
(``method=switch method.choices=[mixup,cutmix] method.options={cutmix: {alpha: 0.2}}``) and held in an
``nn.ModuleDict``, so that its trainable parts and EMA copies are checkpointed and optimised.  Every choice
shares the run's generator, and every choice's ``after_step`` runs after every step (an EMA keeps tracking the
online network whether or not its method was drawn).  ``check_model`` and ``required_stages`` are the union
over the choices: the switch runs on a model only if every choice does.

Every choice must train and evaluate the model itself, with its own head: after ``setup``, a choice's
``eval_models(model)`` must list ``model`` as the online network ``""`` (extra networks such as an EMA copy
are fine).  A choice that classifies through a network of its own breaks this: the switch would train two
different classifiers on alternate steps and evaluate one.  The registered method that does so,
``alignmixup_ae`` (its own embedding ``f`` and classifier ``g`` replace the model's head, its decoder adds a
reconstruction loss, and it evaluates ``g(f(GAP(F(x))))``), is refused when the switch is built
(``HEAD_REPLACING_METHODS``); any other choice that breaks the rule is refused by :meth:`Switch.setup`, which
checks ``eval_models`` of every choice once the model exists.  Both refusals are one line.

Logs: ``choice`` (the drawn index), ``choice_<name>`` (1 for the drawn choice, else 0: its epoch mean is that
choice's share of the steps) and each choice's own logs as ``<name>_<key>``.  The trainer averages a key over
all the steps of an epoch, so the mean of ``<name>_<key>`` over the steps that drew ``<name>`` is
``train_<name>_<key> / train_choice_<name>``.

There is no official code for a switch; OpenMixup's ``mix_mode`` list with ``mix_prob`` is the same idea.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from mixbench.config import CONFIG_DIR, ConfigError, check_method_values
from mixbench.methods.base import Logs, MixMethod, MixPreview
from mixbench.methods.registry import METHODS, register_method
from mixbench.models.base import StagedNet, StageUnavailableError
from mixbench.rng import MixRandom

PROBABILITY_TOLERANCE = 1e-6
# Registered methods whose eval_models evaluates a network of their own instead of the model (see above).
HEAD_REPLACING_METHODS = {
    "alignmixup_ae": "it classifies through its own embedding and classifier (the model's head goes unused), "
    "adds a decoder's reconstruction loss, and evaluates that network instead of the model",
}


def method_defaults(name: str) -> dict[str, Any]:
    """The options of ``configs/method/<name>.yaml`` (everything but ``name``)."""
    path = CONFIG_DIR / "method" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"method '{name}' has no config {path}")
    options = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    options.pop("name", None)
    return options


def _accepted_options(cls: type) -> set[str] | None:
    """Keyword arguments of ``cls``'s constructor; ``None`` when it takes ``**kwargs``."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.name != "self"}


def build_configured_method(name: str, overrides: Mapping[str, Any] | None, where: str) -> MixMethod:
    """Method ``name`` built from its config's defaults updated by ``overrides``.

    ``where`` is the config key the overrides come from (``method.options.cutmix``), used in error messages.
    """
    if name not in METHODS:
        raise ValueError(
            f"{where}: method '{name}' is not available; registered: {', '.join(sorted(METHODS))}"
        )
    options = {**method_defaults(name), **dict(overrides or {})}
    accepted = _accepted_options(METHODS[name])
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(
            f"{where}: method '{name}' does not take option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(accepted)) or 'none'}"
        )
    check_method_values(OmegaConf.create(options), prefix=where)
    return METHODS[name](**options)


def _checked_probabilities(probs: Sequence[float] | None, choices: list[str]) -> list[float]:
    if probs is None:
        return [1.0 / len(choices)] * len(choices)
    values = [float(p) for p in probs]
    valid = (
        len(values) == len(choices)
        and all(math.isfinite(p) and p >= 0 for p in values)
        and abs(sum(values) - 1.0) <= PROBABILITY_TOLERANCE
    )
    if not valid:
        raise ValueError(
            f"method.probs={values} must give one non-negative probability per choice ({len(choices)}: "
            f"{', '.join(choices)}) summing to 1"
        )
    total = sum(values)
    return [p / total for p in values]  # exact sum for NumPy's sampler


def _checked_choices(choices: Sequence[str]) -> list[str]:
    names = [str(name) for name in choices]
    if not names:
        raise ValueError("method.choices is empty; give at least one method, e.g. [mixup,cutmix]")
    if len(set(names)) != len(names):
        raise ValueError(f"method.choices={names} names a method twice; each method may appear once")
    if "switch" in names:
        raise ValueError("method.choices may not contain switch itself")
    for name in names:
        if name in HEAD_REPLACING_METHODS:
            raise ValueError(
                f"method.choices: switch cannot use {name}: {HEAD_REPLACING_METHODS[name]}, while the other "
                "choices train and evaluate the model's own head; drop it from method.choices"
            )
    return names


@register_method
class Switch(MixMethod):
    name = "switch"

    def __init__(
        self,
        choices: Sequence[str] = ("mixup", "cutmix"),
        probs: Sequence[float] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.choices = _checked_choices(choices)
        self.probs = _checked_probabilities(probs, self.choices)
        options = dict(options or {})
        strays = sorted(set(options) - set(self.choices))
        if strays:
            raise ValueError(
                f"method.options names {', '.join(strays)}, not among the choices {self.choices}"
            )
        self.methods = nn.ModuleDict(
            {
                name: build_configured_method(name, options.get(name), f"method.options.{name}")
                for name in self.choices
            }
        )
        self.required_stages = tuple(sorted({s for m in self.methods.values() for s in m.required_stages}))

    # -- delegation to every choice ------------------------------------------------------------------
    def setup(self, model: StagedNet, num_classes: int) -> None:
        """Set up every choice, then refuse one whose evaluated network is not ``model`` (see the module)."""
        for method in self.methods.values():
            method.setup(model, num_classes)
        for name, method in self.methods.items():
            if method.eval_models(model).get("") is not model:
                raise ConfigError(
                    f"method.choices: switch cannot use {name}: it evaluates a network of its own instead of "
                    "the model, while the other choices train and evaluate the model's own head; "
                    "drop it from method.choices"
                )

    def bind(self, rng: MixRandom, label_smoothing: float = 0.0, total_steps: int = 1) -> None:
        super().bind(rng, label_smoothing, total_steps)
        for method in self.methods.values():
            method.bind(rng, label_smoothing, total_steps)

    def check_model(self, model: StagedNet) -> None:
        for name, method in self.methods.items():
            try:
                method.check_model(model)
            except StageUnavailableError as error:
                raise StageUnavailableError(f"switch choice {name}: {error}") from error

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [group for method in self.methods.values() for group in method.param_groups(lr, weight_decay)]

    def after_step(self, model: nn.Module) -> None:
        for method in self.methods.values():
            method.after_step(model)

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """The online network once, plus each choice's extra networks labelled ``<choice>_<label>``."""
        networks: dict[str, nn.Module] = {"": model}
        for name, method in self.methods.items():
            networks.update(
                {f"{name}_{label}": net for label, net in method.eval_models(model).items() if label}
            )
        return networks

    # -- the switch ----------------------------------------------------------------------------------
    def draw_choice(self) -> int:
        """Index of the method for this step, drawn with ``probs`` from the run's generator."""
        return self.rng.choice(list(range(len(self.choices))), p=self.probs)

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        index = self.draw_choice()
        chosen = self.choices[index]
        loss, chosen_logs = self.methods[chosen].training_step(model, x, y)
        logs = {f"{chosen}_{key}": value for key, value in chosen_logs.items()}
        logs["choice"] = torch.full((), float(index), device=x.device)
        for position, name in enumerate(self.choices):
            logs[f"choice_{name}"] = torch.full((), float(position == index), device=x.device)
        return loss, logs

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        index = self.draw_choice()
        chosen = self.choices[index]
        shown = self.methods[chosen].preview(model, x, y)
        note = f"switch drew {chosen} (p={self.probs[index]:.2f} among {', '.join(self.choices)})"
        return MixPreview(
            rows=shown.rows, lam=shown.lam, note=f"{note}; {shown.note}" if shown.note else note
        )
