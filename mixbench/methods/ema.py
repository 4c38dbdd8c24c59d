"""The momentum (EMA) teacher of the learned mixing methods (AutoMix, AdAutoMix) and its momentum schedule.

    theta_ema <- m * theta_ema + (1 - m) * theta          after every optimizer step (parameters)
    buffers_ema <- buffers                                (BatchNorm running statistics, copied)

AutoMix's schedule (OpenMixup ``CosineScheduleHook`` with ``adjust_scope=[0.1, 1.0]``,
``warming_up="constant"``), with ``t`` the number of updates made so far and ``T`` the run's total number of
optimizer steps::

    m(t) = m_0                                                     for t < int(0.1 * T)
    m(t) = m_end - (m_end - m_0) * (cos(pi * t / T) + 1) / 2        for int(0.1 * T) <= t <= T

``m_0 = 0.999`` and ``m_end = 0.999999`` on CIFAR/Tiny.  The cosine's phase is the *global* progress
``t / T``, as in the official hook, so at 10% the momentum steps from 0.999 to 0.999025 rather than
restarting a cosine at its start; the schedule is non-decreasing and reaches ``m_end`` at ``t = T``.

The number of updates is a buffer (``num_updates``) so that it is saved in the method's ``state_dict`` and a
resumed run continues the schedule; a Python copy of it drives the schedule so that no step reads a device
value (no host-device synchronisation per step).

Deliberate deviation from the official code: it averages parameters only and lets the teacher's BatchNorm
statistics follow the teacher's own train-mode forward passes; here the running statistics (and every other
buffer) are copied from the online network after each step, so the evaluated EMA network uses the statistics
of the online network's recent batches.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def automix_momentum(
    step: int, total_steps: int, base: float = 0.999, end: float = 0.999999, constant_fraction: float = 0.1
) -> float:
    """The EMA momentum for update number ``step`` (0-based) of a run of ``total_steps`` optimizer steps."""
    total = max(int(total_steps), 1)
    step = min(max(int(step), 0), total)
    if step < int(constant_fraction * total):
        return base
    return end - (end - base) * (math.cos(math.pi * step / total) + 1.0) / 2.0


class EmaModel(nn.Module):
    """A frozen copy of a network, moved toward the online network by :meth:`update`.

    ``module`` is the copy (``requires_grad=False`` everywhere); calling this object calls it.
    """

    def __init__(
        self,
        model: nn.Module,
        base_momentum: float = 0.999,
        end_momentum: float = 0.999999,
        constant_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= end_momentum <= 1.0:
            raise ValueError(
                f"EMA momenta must satisfy 0 <= base <= end <= 1, got base {base_momentum}, end "
                f"{end_momentum}"
            )
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.base_momentum = base_momentum
        self.end_momentum = end_momentum
        self.constant_fraction = constant_fraction
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.updates_done = 0  # host copy of num_updates: the schedule never reads the device
        self.register_load_state_dict_post_hook(_sync_update_count)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def momentum(self, total_steps: int) -> float:
        """The momentum the next :meth:`update` will use."""
        return automix_momentum(
            self.updates_done, total_steps, self.base_momentum, self.end_momentum, self.constant_fraction
        )

    @torch.no_grad()
    def update(self, online: nn.Module, total_steps: int) -> float:
        """One EMA step toward ``online`` (parameters averaged, buffers copied); returns the momentum used.

        Both halves are multi-tensor (``torch._foreach_*``) operations over the whole parameter and buffer
        lists: ``theta_ema <- m * theta_ema`` then ``theta_ema += (1 - m) * theta`` (the formula above, in
        this order of rounding), and one list copy of the buffers; no per-tensor Python loop.
        """
        momentum = self.momentum(total_steps)
        ema_params = list(self.module.parameters())
        online_params = [p.detach() for p in online.parameters()]
        ema_buffers = list(self.module.buffers())
        online_buffers = list(online.buffers())
        if len(ema_params) != len(online_params) or len(ema_buffers) != len(online_buffers):
            raise ValueError("the EMA copy and the online network have different parameter or buffer lists")
        torch._foreach_mul_(ema_params, momentum)
        torch._foreach_add_(ema_params, online_params, alpha=1.0 - momentum)
        if ema_buffers:
            torch._foreach_copy_(ema_buffers, online_buffers)
        self.num_updates.add_(1)
        self.updates_done += 1
        return momentum


def _sync_update_count(module: EmaModel, incompatible_keys) -> None:
    """After ``load_state_dict``: the host copy of the update count follows the loaded buffer (one read)."""
    module.updates_done = int(module.num_updates)
