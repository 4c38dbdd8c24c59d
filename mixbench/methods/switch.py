"""A random switch between mixing methods, drawn afresh for every training step.

Suggested by the benchmark's reproduction report (e.g. AlignMixup vs CutMix with p = 0.5 each), and generic:

    choices = [m_1, ..., m_n],  probs = [p_1, ..., p_n]  (default uniform; p_k >= 0, sum p_k = 1)
    each step:  k ~ Categorical(probs)  (from the run's generator),  loss = loss of m_k on the batch

:class:`Switch` takes the choices already built, ``Switch({"mixup": Mixup(), "cutmix": CutMix(alpha=0.2)})``
or ``Switch([Mixup(), CutMix()])`` (labelled by their names), and holds them in an ``nn.ModuleDict`` under
their labels, so that their trainable parts and EMA copies are checkpointed (``methods.<label>.*``) and
optimised.  Building them by name is not this module's business: :func:`mixbench.build_method` and a run's
config (``method=switch method.choices=[mixup,cutmix] method.options={cutmix: {alpha: 0.2}}``, see
:mod:`mixbench.engine.method_config`) build each choice and hand it over.  Every choice shares the run's
generator, and every choice's ``after_step`` runs after every step (an EMA keeps tracking the online network
whether or not its method was drawn).  ``check_model`` and ``required_stages`` are the union over the
choices: the switch runs on a model only if every choice does.

Every choice must train and evaluate the model itself, with its own head: after ``setup``, a choice's
``eval_models(model)`` must list ``model`` as the online network ``""`` (extra networks such as an EMA copy
are fine).  A choice that classifies through a network of its own breaks this: the switch would train two
different classifiers on alternate steps and evaluate one.  The registered method that does so,
``alignmixup_ae`` (its own embedding ``f`` and classifier ``g`` replace the model's head, its decoder adds a
reconstruction loss, and it evaluates ``g(f(GAP(F(x))))``), is refused by name before anything is built
(``HEAD_REPLACING_METHODS``, :func:`check_choice`); any other choice that breaks the rule is refused by
:meth:`Switch.setup`, which checks ``eval_models`` of every choice once the model exists.  Both refusals are
one line.

Logs: ``choice`` (the drawn index), ``choice_<label>`` (1 for the drawn choice, else 0: its epoch mean is that
choice's share of the steps) and each choice's own logs as ``<label>_<key>``.  The trainer averages a key over
all the steps of an epoch, so the mean of ``<label>_<key>`` over the steps that drew ``<label>`` is
``train_<label>_<key> / train_choice_<label>``.

There is no official code for a switch; OpenMixup's ``mix_mode`` list with ``mix_prob`` is the same idea.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mixbench.config import ConfigError
from mixbench.methods.base import Logs, MixMethod, MixPreview, add_passes
from mixbench.methods.registry import register_method
from mixbench.models.base import StagedNet, StageUnavailableError
from mixbench.rng import MixRandom

PROBABILITY_TOLERANCE = 1e-6
# Registered methods whose eval_models evaluates a network of their own instead of the model (see above).
HEAD_REPLACING_METHODS = {
    "alignmixup_ae": "it classifies through its own embedding and classifier (the model's head goes unused), "
    "adds a decoder's reconstruction loss, and evaluates that network instead of the model",
}


def check_choice(name: str) -> None:
    """Refuse (one line) a method the switch cannot choose, by its name: the switch itself, or a method
    that evaluates a network of its own (``HEAD_REPLACING_METHODS``)."""
    if name == Switch.name:
        raise ValueError("method.choices may not contain switch itself")
    if name in HEAD_REPLACING_METHODS:
        raise ValueError(
            f"method.choices: switch cannot use {name}: {HEAD_REPLACING_METHODS[name]}, while the other "
            "choices train and evaluate the model's own head; drop it from method.choices"
        )


def check_choice_names(choices: Sequence[str]) -> list[str]:
    """``choices`` as a list of names, refused in one line when empty, repeated or not choosable."""
    names = [str(name) for name in choices]
    if not names:
        raise ValueError("method.choices is empty; give at least one method, e.g. [mixup,cutmix]")
    if len(set(names)) != len(names):
        raise ValueError(f"method.choices={names} names a method twice; each method may appear once")
    for name in names:
        check_choice(name)
    return names


def _labelled(methods: Mapping[str, MixMethod] | Sequence[MixMethod]) -> dict[str, MixMethod]:
    """The choices by label: a mapping as given, a sequence labelled by each method's ``name``."""
    if isinstance(methods, str):
        raise TypeError(
            f"switch takes built methods, not the name '{methods}'; build choices by name with "
            "mixbench.build_method('switch', choices=[...])"
        )
    if isinstance(methods, Mapping):
        labelled = {str(label): method for label, method in methods.items()}
    else:
        labelled = {}
        for method in methods:
            label = str(getattr(method, "name", method))
            if label in labelled:
                raise ValueError(
                    f"switch: two choices are named {label}; pass a mapping {{label: method}} with distinct "
                    "labels"
                )
            labelled[label] = method
    if not labelled:
        raise ValueError("switch needs at least one method to choose from (method.choices is empty)")
    for label, method in labelled.items():
        if not isinstance(method, MixMethod):
            raise TypeError(
                f"switch choice {label} is {type(method).__name__}, not a built MixMethod; build choices by "
                "name with mixbench.build_method('switch', choices=[...])"
            )
        check_choice(method.name)
    return labelled


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


@register_method
class Switch(MixMethod):
    """One of ``methods`` per training step, drawn with ``probs`` (uniform by default); see the module."""

    name = "switch"

    def __init__(
        self,
        methods: Mapping[str, MixMethod] | Sequence[MixMethod],
        probs: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.methods = nn.ModuleDict(_labelled(methods))
        self.choices = list(self.methods)
        self.probs = _checked_probabilities(probs, self.choices)
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

    def passes(self) -> dict[str, float] | None:
        """The choices' passes weighted by their probabilities (the mean step); ``None`` if a choice's are."""
        counts = [method.passes() for method in self.methods.values()]
        if any(count is None for count in counts):
            return None
        weighted = zip(self.probs, counts, strict=True)
        return add_passes(*({unit: p * n for unit, n in count.items()} for p, count in weighted))

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
