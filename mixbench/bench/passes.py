"""A step's floor: the network passes its algorithm runs, each timed on its own.

Every method states the passes of its training step in a few units (``MixMethod.passes``; e.g. Puzzle Mix:
one vanilla step and one forward with a backward to the input, for its saliency).  The bench times every unit
that a model's rows need on that model and batch, in the same round-robin as the rows (so a change of the
device's speed hits them alike), and gives each row its floor::

    floor = sum_u count_u * t_u / t_vanilla        (t_step = vanilla's own row, paired by round)

with a 90% bootstrap interval over the rounds, like the ratios.  The floor is what the algorithm's passes
cost; ``× vanilla`` above it is what the implementation spends besides: mixing, mask solvers, the method's own
small networks (a Mix Block, a head), bookkeeping.  That difference is the overhead to remove; the floor is
not, short of changing the method.

The units run on a model built from the vanilla row's configuration, in train mode, under the run's autocast,
on the rows' batch (``mixbench.methods.base`` names them):

* ``step``: vanilla's row itself (forward, loss, backward, optimizer step, through the trainer's step);
* ``forward``: a forward that records the autograd graph, dropped unused;
* ``forward, no grad``: a forward under ``no_grad`` (a teacher's, the clean batch's predictions);
* ``stages 1-k, no grad``: ``forward_features(x, k)`` under ``no_grad`` (an EMA teacher's features);
* ``forward + backward``: a forward, the cross-entropy and a backward with the weights' gradients, no
  optimizer step (a second online loss, a saliency that also gives the clean term's weight gradients; the
  input's gradient such a saliency also needs is one 3-channel convolution more, not counted);
* ``forward + backward to the input``: the same, with the input's gradient alone (no weight gradients).

Gradients are returned by ``torch.autograd.grad``, not accumulated, so the units leave no state behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.engine.runtime import Runtime
from mixbench.methods.base import (
    FORWARD,
    FORWARD_BACKWARD,
    FORWARD_BACKWARD_INPUT,
    FORWARD_NO_GRAD,
    STEP,
)

FEATURES_PREFIX = "stages 1-"
FEATURES_SUFFIX = ", no grad"


@dataclass
class TimedUnit:
    """One pass unit, ready to be timed in the round-robin like a row (``step(x, y)``)."""

    unit: str
    step: Callable[[torch.Tensor, torch.Tensor], None]
    x: torch.Tensor
    y: torch.Tensor
    seconds: list[float] = field(default_factory=list)
    page_faults: list[int] = field(default_factory=list)


def units_needed(passes: list[dict[str, float] | None]) -> list[str]:
    """The units the rows' passes name, besides ``step`` (vanilla's row), in a stable order."""
    return sorted({unit for counts in passes if counts for unit in counts if unit != STEP})


def unit_pass(unit: str, model: nn.Module, runtime: Runtime) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The callable that runs ``unit`` once on ``model`` (train mode, the run's autocast)."""
    parameters = [p for p in model.parameters() if p.requires_grad]

    def forward(x: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(x)

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return F.cross_entropy(model(x).float(), y)

    if unit == FORWARD:

        def run(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.enable_grad():
                forward(x)

    elif unit == FORWARD_NO_GRAD:

        def run(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.no_grad():
                forward(x)

    elif unit.startswith(FEATURES_PREFIX) and unit.endswith(FEATURES_SUFFIX):
        stage = int(unit.removeprefix(FEATURES_PREFIX).removesuffix(FEATURES_SUFFIX))

        def run(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.no_grad(), runtime.autocast():
                model.forward_features(x, stage)

    elif unit == FORWARD_BACKWARD:

        def run(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.enable_grad():
                torch.autograd.grad(loss_of(x, y), parameters)

    elif unit == FORWARD_BACKWARD_INPUT:

        def run(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                torch.autograd.grad(loss_of(leaf, y), [leaf])

    else:
        raise ValueError(f"unknown pass unit {unit!r}")
    return run


def prepare_units(
    units: list[str], model: nn.Module, runtime: Runtime, x: torch.Tensor, y: torch.Tensor, warmup: int
) -> list[TimedUnit]:
    """Each unit on ``model`` (put in train mode), run ``warmup`` times untimed."""
    model.train()
    timed = [TimedUnit(unit, unit_pass(unit, model, runtime), x, y) for unit in units]
    for entry in timed:
        for _ in range(warmup):
            entry.step(x, y)
    return timed


def floor_seconds(
    counts: dict[str, float], vanilla_seconds: list[float], unit_seconds: dict[str, list[float]]
) -> list[float]:
    """Per round, the time of the passes ``counts`` (``step`` taken from vanilla's row in that round)."""
    rounds = len(vanilla_seconds)
    return [
        sum(
            count * (vanilla_seconds[r] if unit == STEP else unit_seconds[unit][r])
            for unit, count in counts.items()
        )
        for r in range(rounds)
    ]


def passes_text(counts: dict[str, float] | None) -> str:
    """``step; 2× forward + backward; forward, no grad``: the units, counts other than 1 in front."""
    if counts is None:
        return ""
    return "; ".join(unit if count == 1 else f"{count:g}× {unit}" for unit, count in counts.items())


__all__ = ["TimedUnit", "floor_seconds", "passes_text", "prepare_units", "unit_pass", "units_needed"]
