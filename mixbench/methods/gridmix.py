"""GridMix (Baek et al., "GridMix: Strong regularization through local context mapping", Pattern
Recognition 110, 2021).

    lam ~ Beta(alpha, alpha),   perm = randperm(B),   n ~ U{n_min, ..., n_max}   (default 2..6)
    the image is cut into an n x n grid of cells (pixel row i is in cell row floor(i n / H); columns alike);
    each cell independently comes from x[perm] with probability 1 - lam:  c_uv ~ Bernoulli(1 - lam)
    mask = c upsampled to H x W (constant over each cell; the share of x[perm]),
    x~ = (1 - mask) * x + mask * x[perm]
    lam' = 1 - mean(mask)          (pixel share of x; cells of a grid that does not divide H are unequal)
    loss = lam' * CE(f(x~), y) + (1 - lam') * CE(f(x~), y[perm])

One grid per batch, as every cutting method here.  Defaults: alpha 0.2 and n in 2..6, OpenMixup's CIFAR
setting (its ``n_holes=(2, 6)``).

Choices and differences from the references:

* The paper mixes a grid of cells between two images and adds an auxiliary "local context mapping" loss that
  predicts a label for every cell.  The auxiliary head and loss are not implemented: this is the input-space
  mixing only, trained with the mixed cross-entropy every method here shares.
* OpenMixup's ``gridmix`` (after the unofficial GridMixup repository) draws a different pattern: a
  GridMask-like lattice of square holes, one at the corner of every cell, inside a random sub-rectangle of the
  image, with hole side ``cell side * sqrt(1 - lam)``.  We follow the paper's grid of whole cells; numbers
  from OpenMixup's tables therefore come from a related but different mask.
* lam' is the realised pixel share rather than the sampled lam, so it is exact whatever the cells drawn.
"""

from __future__ import annotations

import torch

from mixbench.methods.base import InputMixMethod, MixedBatch
from mixbench.methods.masks import blend, grid_cells_mask, label_ratio
from mixbench.methods.registry import register_method


@register_method
class GridMix(InputMixMethod):
    name = "gridmix"

    def __init__(self, alpha: float = 0.2, grid_sizes: tuple[int, int] | list[int] = (2, 6)) -> None:
        super().__init__()
        low, high = (int(n) for n in grid_sizes)
        if not 1 <= low <= high:
            raise ValueError(f"gridmix grid_sizes must be [min, max], 1 <= min <= max: {list(grid_sizes)}")
        self.alpha = alpha
        self.grid_sizes = (low, high)

    def sample_mask(self, height: int, width: int, lam: float, device: torch.device) -> torch.Tensor:
        """(1, 1, H, W) mask of an n x n grid, each cell 1 (from ``x[perm]``) with probability 1 - lam."""
        cells_per_side = self.rng.integer(self.grid_sizes[0], self.grid_sizes[1] + 1)
        uniform = torch.rand(cells_per_side, cells_per_side, generator=self.rng.torch, device=device)
        cells = uniform < (1.0 - lam)
        return grid_cells_mask(cells, height, width)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        height, width = x.shape[-2:]
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        mask = self.sample_mask(height, width, lam, x.device)
        return MixedBatch(
            x=blend(x, x[perm], mask), y_a=y, y_b=y[perm], lam=label_ratio(mask)[0], perm=perm, mask=mask
        )
