"""SmoothMix (Lee et al., "SmoothMix: a Simple Yet Effective Data Augmentation to Train Robust
Classifiers", CVPR Workshops 2020).

    perm = randperm(B),   centre (cy, cx) uniform over the pixels,   s ~ U(sigma_range) (default U(0.25, 0.5))
    G(i, j) = exp( -((i - cy)^2 / (2 (s H)^2) + (j - cx)^2 / (2 (s W)^2)) )      (1 at the centre, soft edge)
    x~ = (1 - G) * x + G * x[perm]                  (G is the share of x[perm] at every pixel)
    lam' = 1 - mean(G)
    loss = lam' * CE(f(x~), y) + (1 - lam') * CE(f(x~), y[perm])

The mask is the paper's Gaussian ("circle") mask with OpenMixup's parameters: width ``s * H`` with
s ~ U(0.25, 0.5), centre uniform, one mask per batch; the label ratio is the mask's mean, so there is no
Beta-distributed lam and no alpha.  For a non-square image the width scales with each side (``s H`` down,
``s W`` across); on square images the mask is isotropic as in OpenMixup.

Differences from OpenMixup (the reference implementation the benchmark tables use):

* OpenMixup weights ``CE(y)`` by ``mean(G)``, which is the share of ``x[perm]``: its label ratio is inverted.
  We weight ``CE(y)`` by ``1 - mean(G)``, the share of ``x``: in the paper each label's weight is the pixel
  share of its image (``lam = sum(G) / (W H)`` for the image that G selects).
* OpenMixup draws lam ~ Beta(alpha, alpha) and then ignores it; we draw no lam.
* Its centre lies on a half-pixel lattice (a rolled 2H x 2H grid); ours is a pixel chosen uniformly.
* The paper's other mask, a square with smoothed edges, is not implemented (OpenMixup has only this one).
"""

from __future__ import annotations

import torch

from mixbench.methods.base import InputMixMethod, MixedBatch
from mixbench.methods.masks import blend, gaussian_mask, label_ratio
from mixbench.methods.registry import register_method


@register_method
class SmoothMix(InputMixMethod):
    name = "smoothmix"

    def __init__(self, sigma_range: tuple[float, float] | list[float] = (0.25, 0.5)) -> None:
        super().__init__()
        low, high = (float(s) for s in sigma_range)
        if not 0.0 < low <= high:
            raise ValueError(f"smoothmix sigma_range must satisfy 0 < low <= high: {list(sigma_range)}")
        self.sigma_range = (low, high)

    def sample_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, 1, H, W) Gaussian mask, 1 at a uniformly drawn pixel, of width ``s`` times each side."""
        centre_y, centre_x = self.rng.integer(0, height), self.rng.integer(0, width)
        relative_sigma = self.rng.uniform(*self.sigma_range)
        sigma_y, sigma_x = relative_sigma * height, relative_sigma * width
        return gaussian_mask(height, width, centre_y, centre_x, sigma_y, sigma_x, device)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        height, width = x.shape[-2:]
        perm = self.rng.permutation(x.shape[0])
        mask = self.sample_mask(height, width, x.device)
        return MixedBatch(
            x=blend(x, x[perm], mask), y_a=y, y_b=y[perm], lam=label_ratio(mask)[0], perm=perm, mask=mask
        )
