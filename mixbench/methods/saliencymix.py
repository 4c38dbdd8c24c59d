"""SaliencyMix (Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better
Regularization", ICLR 2021).

    lam ~ Beta(alpha, alpha),   perm = randperm(B)
    S_i = saliency map of the source x[perm][i]     (spectral residual, mixbench.methods.saliency_spectral)
    (cy_i, cx_i) = argmax S_i
    box_i = rows [cy_i - h // 2, cy_i + h // 2) x columns [cx_i - w // 2, cx_i + w // 2), clipped,
            h = int(H sqrt(1 - lam)),  w = int(W sqrt(1 - lam))          (CutMix's size rule)
    mask_i = 1 on box_i (the share of x[perm]);   x~_i = (1 - mask_i) * x_i + mask_i * x[perm]_i
    lam'_i = 1 - area(box_i) / (H * W) = 1 - mean(mask_i)             (recomputed after clipping)
    loss = mean_i [ lam'_i * CE(f(x~_i), y_i) + (1 - lam'_i) * CE(f(x~_i), y[perm]_i) ]

The salient region of the source is pasted at the same place in the target (as in the official code).  The
saliency maps of the whole batch are computed at once in torch on the device (no OpenCV, no host copy).

Per-sample boxes (``per_sample=True``, the default): each pair gets a box on the peak of its own source, so
the label ratio is per sample.  This is a deliberate deviation: the official code computes the saliency of one
source, ``x[perm][0]``, and pastes the box at that peak for the whole batch, so for the other B - 1 pairs the
box is unrelated to their source's salient region; the paper describes a box on each source's salient region.
``per_sample=False`` reproduces the official behaviour (one box, at the peak of ``x[perm][0]``).

Other differences from the official code:

* Saliency: spectral residual (Hou & Zhang 2007), as METHODS.md specifies.  The official code (and OpenMixup)
  call OpenCV's ``StaticSaliencyFineGrained`` (Montabone & Soto 2010) instead; see saliency_spectral.py for
  how our spectral residual differs from OpenCV's.  The official peak is taken on the map quantised to uint8
  (first maximum on ties); ours on the float map.
* The official CIFAR script mixes with probability 0.5 (``--salmix_prob``) and alpha (``--beta``) 1.0; like
  ``cutmix`` here we mix every step, and the config uses OpenMixup's CIFAR alpha 0.2 (METHODS.md).
"""

from __future__ import annotations

import torch

from mixbench.methods.base import InputMixMethod, MixedBatch, MixPreview
from mixbench.methods.masks import blend, centred_box_masks, cut_size, label_ratio
from mixbench.methods.registry import register_method
from mixbench.methods.saliency_spectral import saliency_peaks, spectral_residual_saliency


@register_method
class SaliencyMix(InputMixMethod):
    name = "saliencymix"

    def __init__(self, alpha: float = 1.0, per_sample: bool = True) -> None:
        super().__init__()
        self.alpha = alpha
        self.per_sample = per_sample

    def source_saliency(self, sources: torch.Tensor) -> torch.Tensor:
        """(B, H, W) saliency of each source, or of ``sources[0]`` repeated when boxes are per batch."""
        if self.per_sample:
            return spectral_residual_saliency(sources)
        return spectral_residual_saliency(sources[:1]).expand(sources.shape[0], -1, -1)

    def mix_with_saliency(self, x: torch.Tensor, y: torch.Tensor) -> tuple[MixedBatch, torch.Tensor]:
        """The mixed batch and the saliency maps its boxes were centred on."""
        height, width = x.shape[-2:]
        lam = float(self.rng.beta(self.alpha))
        perm = self.rng.permutation(x.shape[0])
        sources = x[perm]
        saliency = self.source_saliency(sources)
        centre_y, centre_x = saliency_peaks(saliency)
        cut_h, cut_w = cut_size(height, width, lam)
        mask = centred_box_masks(centre_y, centre_x, cut_h, cut_w, height, width)
        batch = MixedBatch(
            x=blend(x, sources, mask), y_a=y, y_b=y[perm], lam=label_ratio(mask), perm=perm, mask=mask
        )
        return batch, saliency

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        return self.mix_with_saliency(x, y)[0]

    @torch.no_grad()
    def preview(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        batch, saliency = self.mix_with_saliency(x, y)
        rows = {
            "source a": x,
            "source b": x[batch.perm],
            "saliency of b": saliency.unsqueeze(1),
            "box (share of b)": batch.mask,
            "mixed": batch.x,
        }
        note = (
            "one box per sample, on its source's saliency peak"
            if self.per_sample
            else ("one box per batch, on the saliency peak of the first source (official)")
        )
        return MixPreview(rows=rows, lam=batch.lam.float().cpu(), note=note)
