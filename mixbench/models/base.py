"""The stage contract shared by every backbone.

A *staged* network is ``stem -> stage_1 -> ... -> stage_n -> head``.  Stage indices follow the
feature-space mixup papers (Manifold Mixup, AlignMixup):

* stage ``0`` is the input image itself (before the stem);
* stage ``k >= 1`` is the hidden state after the stem and the first ``k`` stages.

Two calls are enough for every mixing method:

* ``forward_features(x, stage=k)`` runs the network up to stage ``k`` and returns that hidden state;
* ``forward_from(h, stage=k)`` continues from a hidden state at stage ``k`` to the logits.

``model(x)`` is ``forward_from(forward_features(x, 0), 0)``.  A method that mixes at stage ``k`` calls
``model(x, mix_stage=k, mix_fn=fn)``: the network runs to stage ``k``, ``fn`` transforms the hidden state,
and the network continues.  Going through ``forward`` keeps this working under DistributedDataParallel,
which only synchronises gradients of calls to ``forward``.  A model that cannot expose a stage raises
:class:`StageUnavailableError` with a message naming the model and the stages it does expose.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class StageUnavailableError(ValueError):
    """A method asked a model for a hidden state the model does not expose."""


class StagedNet(nn.Module):
    """Base class: subclasses define ``stem``, ``stage_modules`` (in order) and ``head``.

    ``feature_stages`` lists the stage indices a method may mix at (all of ``0..n`` for CNNs).
    ``name`` is the registry name, used in error messages.
    """

    name: str = "staged"
    new_tensors: tuple[str, ...] = ()
    """State-dict keys of layers the model adds to a published architecture (e.g. VGG-GAP's extra conv): a
    published weights file never holds them, so ``pretrained_path`` leaves them at init when the file lacks
    them."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define stem()")

    def stage_modules(self) -> list[nn.Module]:
        raise TypeError(f"{type(self).__name__} must define stage_modules()")

    def head(self, h: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define head()")

    def cam_classifier(self) -> nn.Linear | None:
        """The linear layer of a head that is global average pooling followed by it, so that ``head(h) ==
        cam_classifier()(h.mean((2, 3)))`` for the last stage's map ``h``: the structure class activation maps
        need (Zhou et al., CVPR 2016).  ``None`` where the head is not of that form (the transformers)."""
        return None

    @property
    def num_stages(self) -> int:
        return len(self.stage_modules())

    @property
    def feature_stages(self) -> tuple[int, ...]:
        return tuple(range(self.num_stages + 1))

    def check_stage(self, stage: int) -> None:
        if stage not in self.feature_stages:
            raise StageUnavailableError(
                f"model {self.name} exposes hidden states at stages {list(self.feature_stages)}, "
                f"not at stage {stage}"
            )

    def forward_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Hidden state after ``stage`` stages (0 = the input itself)."""
        self.check_stage(stage)
        if stage == 0:
            return x
        h = self.stem(x)
        for module in self.stage_modules()[:stage]:
            h = module(h)
        return h

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """Logits computed from the hidden state at ``stage``."""
        self.check_stage(stage)
        if stage == 0:
            h = self.stem(h)
        for module in self.stage_modules()[stage:]:
            h = module(h)
        return self.head(h)

    def forward(
        self,
        x: torch.Tensor,
        mix_stage: int | None = None,
        mix_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of ``x``; with ``mix_fn``, the hidden state at ``mix_stage`` is replaced by
        ``mix_fn(h)``.
        """
        if mix_fn is None:
            return self.forward_from(self.forward_features(x, 0), 0)
        if mix_stage is None:
            raise ValueError("mix_fn needs mix_stage")
        return self.forward_from(mix_fn(self.forward_features(x, mix_stage)), mix_stage)
