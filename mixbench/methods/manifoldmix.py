"""Manifold Mixup (Verma et al., "Manifold Mixup: Better Representations by Interpolating Hidden
States", ICML 2019).

    k ~ Uniform(stages)  (default {0: input, 1: after stage 1, 2: after stage 2})
    lam ~ Beta(alpha, alpha),   perm = randperm(B)
    h_k~ = lam * h_k + (1 - lam) * h_k[perm];  the network continues from h_k~
    loss = lam * CE(f(x), y) + (1 - lam) * CE(f(x), y[perm])

Deviation from the official code: it trains with BCE on softmax outputs against the mixed one-hot target;
we use the mixed cross-entropy shared by every method here, so that methods differ only in their mixing.
Default alpha 2.0 (CIFAR).
"""

from __future__ import annotations

import torch
from torch import nn

from mixbench.methods.base import Logs, MixMethod, MixPreview, device_scalar, mixed_cross_entropy
from mixbench.methods.registry import register_method


@register_method
class ManifoldMix(MixMethod):
    name = "manifoldmix"

    def __init__(self, alpha: float = 2.0, stages: tuple[int, ...] | list[int] = (0, 1, 2)) -> None:
        super().__init__()
        if not stages:
            raise ValueError("manifoldmix needs at least one stage to mix at")
        self.alpha = alpha
        self.stages = tuple(int(s) for s in stages)
        self.required_stages = self.stages

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        stage = self.rng.choice(list(self.stages))
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        # lam as a tensor: a Python float in the closure would make torch.compile recompile for every value.
        lam_tensor = device_scalar(lam, x.device)
        logits = model(x, mix_stage=stage, mix_fn=lambda h: lam_tensor * h + (1.0 - lam_tensor) * h[perm])
        loss = mixed_cross_entropy(logits, y, y[perm], lam, self.label_smoothing)
        return loss, {"lam": lam_tensor, "stage": device_scalar(stage, x.device)}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """Sources and their pixel mix; a mix at stage k >= 1 happens on hidden states, which have no
        image."""
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        rows = {
            "source a": x,
            "source b": x[perm],
            "input-space mix (stage 0)": lam * x + (1 - lam) * x[perm],
        }
        note = (
            f"stages {list(self.stages)}: at stages >= 1 the same lam mixes hidden states instead of pixels"
        )
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), lam), note=note)
