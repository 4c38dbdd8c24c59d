"""Forward passes a method makes outside its training step: in eval mode, without gradient.

Methods that own modules sized to a hidden state of the model (AutoMix's and AdAutoMix's Mix Block,
AlignMixup/AE's embedding and decoder) find that state's shape with one dummy batch, :func:`stage_shape`;
previews of the learned methods read the EMA teacher's features the same way.  Eval mode keeps the dummy or
preview batch out of the BatchNorm running statistics, and :func:`evaluating` puts the module back in the
mode it was in, even when the forward pass raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mixbench.models.base import StagedNet


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the ``with`` block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def stage_shape(model: StagedNet, stage: int, image_size: int) -> torch.Size:
    """(C, h, w) of ``model``'s hidden state at ``stage`` for one ``image_size`` square image (eval mode)."""
    model.check_stage(stage)
    reference = next(model.parameters())
    probe = torch.zeros(1, 3, image_size, image_size, device=reference.device, dtype=reference.dtype)
    with evaluating(model):
        return model.forward_features(probe, stage).shape[1:]
