"""ResizeMix (Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and True Labels",
arXiv:2012.11101, 2020).

    tau ~ Beta(alpha, alpha), drawn again from U(scope) when outside scope = [0.1, 0.8];   perm = randperm(B)
    P = resize(x[perm], (h, w)),   h = max(1, int(tau * H)),  w = max(1, int(tau * W))   (the whole image)
    top-left corner (t, l) uniform among the positions that keep P inside the image
    x~ = x with the box [t, t + h) x [l, l + w) replaced by P;   mask = 1 on that box (the share of x[perm])
    lam' = 1 - h * w / (H * W) = 1 - mean(mask)
    loss = lam' * CE(f(x~), y) + (1 - lam') * CE(f(x~), y[perm])

The scale rule is OpenMixup's ``use_alpha=True`` (its CIFAR configs); with alpha = 1, the default, it is
exactly the paper's tau ~ U(0.1, 0.8): Beta(1, 1) is U(0, 1), and redrawing the values outside the scope from
U(scope) leaves U(scope).  One patch per batch and nearest-neighbour resizing, as in OpenMixup.

Deviation from OpenMixup (the reference implementation; we know of no official code): OpenMixup centres the
box uniformly, clips it at the image border and squeezes the whole source into the clipped box, which changes
its aspect ratio and scale; we keep the patch inside the image, so the source is always pasted whole,
undistorted, at scale tau, as the paper describes.  The label ratio is the patch's area share in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench.methods.base import InputMixMethod, MixedBatch, MixPreview
from mixbench.methods.cutmix import Box, box_area_ratio, box_mask
from mixbench.methods.registry import register_method

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def resize_and_place(source: torch.Tensor, box: Box, interpolation: str = "nearest") -> torch.Tensor:
    """``source`` (B, C, H, W) resized to ``box`` and placed there on a zero canvas of the same shape."""
    top, bottom, left, right = box
    canvas = torch.zeros_like(source)
    canvas[:, :, top:bottom, left:right] = F.interpolate(
        source, size=(bottom - top, right - left), mode=interpolation
    )
    return canvas


@register_method
class ResizeMix(InputMixMethod):
    name = "resizemix"

    def __init__(
        self,
        alpha: float = 1.0,
        scope: tuple[float, float] | list[float] = (0.1, 0.8),
        interpolation: str = "nearest",
    ) -> None:
        super().__init__()
        low, high = (float(s) for s in scope)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"resizemix scope must satisfy 0 < low <= high <= 1, got {list(scope)}")
        if interpolation not in INTERPOLATIONS:
            valid = ", ".join(INTERPOLATIONS)
            raise ValueError(f"resizemix interpolation must be one of {valid}, got {interpolation!r}")
        self.alpha = alpha
        self.scope = (low, high)
        self.interpolation = interpolation

    def sample_scale(self) -> float:
        """tau ~ Beta(alpha, alpha), redrawn from U(scope) when it falls outside the scope."""
        tau = float(self.rng.beta(self.alpha))
        low, high = self.scope
        return tau if low <= tau <= high else self.rng.uniform(low, high)

    def sample_patch_box(self, height: int, width: int) -> Box:
        """A box of side ``tau`` times the image's, placed uniformly so that it lies inside the image."""
        tau = self.sample_scale()
        patch_h, patch_w = max(1, int(tau * height)), max(1, int(tau * width))
        top, left = self.rng.integer(0, height - patch_h + 1), self.rng.integer(0, width - patch_w + 1)
        return top, top + patch_h, left, left + patch_w

    def mix_with_patch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[MixedBatch, torch.Tensor]:
        """The mixed batch and the canvas holding the resized ``x[perm]`` at its place (zero elsewhere)."""
        height, width = x.shape[-2:]
        perm = self.rng.permutation(x.shape[0])
        box = self.sample_patch_box(height, width)
        patch = resize_and_place(x[perm], box, self.interpolation)
        mask = box_mask(box, height, width, x.device)
        mixed = (1.0 - mask) * x + patch  # the canvas is zero outside the box: exact paste
        lam = 1.0 - box_area_ratio(box, height, width)
        return MixedBatch(x=mixed, y_a=y, y_b=y[perm], lam=lam, perm=perm, mask=mask), patch

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        return self.mix_with_patch(x, y)[0]

    @torch.no_grad()
    def preview(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        batch, patch = self.mix_with_patch(x, y)
        rows = {
            "source a": x,
            "source b": x[batch.perm],
            "b resized and placed": patch,
            "mask (share of b)": batch.mask.expand(x.shape[0], 1, *x.shape[-2:]),
            "mixed": batch.x,
        }
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), float(batch.lam)))
