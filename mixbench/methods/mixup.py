"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

    lam ~ Beta(alpha, alpha),   perm = randperm(B)
    x~ = lam * x + (1 - lam) * x[perm]
    loss = lam * CE(f(x~), y) + (1 - lam) * CE(f(x~), y[perm])

One lam per batch, as in the official code.  Default alpha 1.0 (CIFAR, OpenMixup).
"""

from __future__ import annotations

import torch

from mixbench.methods.base import InputMixMethod, MixedBatch
from mixbench.methods.registry import register_method


@register_method
class Mixup(InputMixMethod):
    name = "mixup"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        return MixedBatch(x=lam * x + (1.0 - lam) * x[perm], y_a=y, y_b=y[perm], lam=lam, perm=perm)
