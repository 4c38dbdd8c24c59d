"""AlignMixup/AE (Venkataramanan, Kijak, Amsaleg & Avrithis, "AlignMixup: Improving Representations By
Interpolating Aligned Features", CVPR 2022, Sec. "AlignMixup/AE"): AlignMixup with a vanilla autoencoder
whose decoder is trained on clean images only, so that the classifier never sees a decoded image.

The network during training and evaluation (``F`` = the backbone up to its last stage ``n``)::

    A = F(x)                  (c x h x w)
    e = f(N(GAP(A)))          (N: BatchNorm1d over the c pooled channels; f: Linear c -> 512, the paper's
                               extra FC layer; e in R^512)
    logits = g(e)             (g: Linear 512 -> classes)
    x^ = D(e)                 (D: residual decoder, used only for the reconstruction loss)

Per step, with ``lam ~ Beta(alpha, alpha)`` (alpha 2) and ``perm = randperm(B)``, one mixing level is drawn
uniformly from ``levels`` (default the paper's mixing set {x, A, e}):

* ``input``:     x~ = lam * x + (1 - lam) * x[perm], then the whole network;
* ``feature``:   AlignMix of ``A`` exactly as in :mod:`mixbench.methods.alignmixup` (Sinkhorn assignment,
                 detached plan, direction drawn 0.5/0.5), with the same Table 6 ablation options
                 (``align``, ``mix_grid``, ``direction``, ``remove_last_downsampling``: the rows
                 ``{x, A2x2, e}`` and ``{x, A8x8, e}`` and the "unaligned" column are AlignMixup/AE's);
* ``embedding``: e~ = lam * e + (1 - lam) * e[perm] (a vector: nothing to align);

    L = lam * CE(g(.), y) + (1 - lam) * CE(g(.), y[perm])
        + [reconstruction step] * reconstruction_weight * mean((D(f(GAP(F(x)))) - x)^2)

where a reconstruction step happens with probability ``reconstruction_prob`` (0.2: the paper's cost note
trains the decoder about one step in five) and always uses the **clean** batch ``x``: the decoder gets
gradients from clean images only, and the reconstruction loss also trains ``f`` and the encoder (the two
are trained jointly, which is how the autoencoder can improve the representation).  ``D`` learns at
``decoder_lr_scale`` (0.1) times the run's learning rate; ``N``, ``f`` and ``g`` at the run's rate.

No official code exists (the authors' answer to the repository's issue #4: the decoder is trained on clean
examples only, with no alignment).  The paper fixes f, D, the clean-only L2 reconstruction and the mixing set
{x, A, e}; every other choice below is ours and deliberate:

* The classifier reads the embedding (``g(e)``): mixing ``e`` only affects training if ``e`` feeds the
  classifier.  ``f``, ``g`` and ``D`` belong to the method (created in :meth:`setup`, optimised through
  :meth:`param_groups`, saved in its ``state_dict``); the backbone's own head is not used, and
  :meth:`eval_models` returns the ``F -> f -> g`` network, which is the one evaluated.
* ``f`` acts on the globally pooled ``A`` (c -> 512), not on the flattened tensor: the paper's parameter count
  (+10M on ResNet-50) rules out a 2048*7*7 -> 512 layer (51M).  As ``f`` and ``g`` are linear and follow a
  linear pooling, embedding mixup gives the logits of mixing the pooled features (and, as for AlignMixup on a
  pooling head, the "keep A's geometry" feature mix gives them too, the column sums of R being exact).
* ``N`` (BatchNorm1d before ``f``) centres and scales the pooled features.  Two stacked linear layers
  ``g(f(.))`` trained by SGD feed each other's growth (the gradient of ``g`` scales with ``|f(a)|``, that of
  ``f`` with ``|g|*|a|``), and the pooled post-ReLU features of a bottleneck ResNet share a large common mean
  (``|GAP(A)|`` is about 37 at initialisation for ResNeXt-50 at width 32 on the digits, against 2.3 for
  WRN16-8 and 4.3 for PreActResNet18): without ``N`` the cross-entropy alone (no reconstruction step yet)
  takes the ResNeXt run from loss 2.3 to 142 within 6 steps at lr 0.1, momentum 0.9, with ``|f|`` and ``|g|``
  growing together until NaN; with ``N`` its loss stays within 2.3-4.3 over its first 15 steps.  ``N`` is
  affine at evaluation, so the evaluated network is still linear after the pooling; during training it uses
  the statistics of the batch it sees (the mixed batch after input or feature mixing, the clean batch before
  embedding mixing).
* ``decoder_lr_scale``: the decoder regresses pixels under a mean squared error, whose curvature is not
  bounded as the cross-entropy's is, and at the classification recipe's SGD rate (0.1, momentum 0.9) its
  updates overshoot: on WRN16-8 (width 8, digits) the reconstruction loss of the successive reconstruction
  steps went 1.1, 2.4, 21, 97 (1.1, 2.5, 24, 52 with the encoder cut off from it: the decoder alone is
  unstable), and that last step sent a gradient of norm 161 into the backbone (0.4-1.3 on other steps),
  after which the classifier diverged to NaN on ordinary steps.  PreActResNet18 stayed just below the limit
  (the decoder's last convolution reads 32 channels there, 64 on WRN16-8).  At a tenth of the rate the
  reconstruction loss falls steadily (1.1 -> 0.5 over the first 130 steps of WRN16-8).  Only ``D`` is
  slowed: the reconstruction gradient reaches ``f`` and the encoder at full strength, so the joint training
  is unchanged.
* ``D``: a linear layer to a ``decoder_width x h x w`` grid (the feature grid at ``image_size``), then
  ``log2(image_size / h)`` residual up-sampling blocks (BigGAN-style: BN-ReLU-upsample-conv-BN-ReLU-conv plus
  an upsample-1x1-conv shortcut; widths halve down to 32) and BN-ReLU-conv3x3 to 3 channels, no output
  non-linearity (images are normalised).  A batch of another size is compared with the decoded image
  resized bilinearly to it.
* The reconstruction loss is the mean squared error over pixels of the normalised image, weight 1.
* Sizes with the defaults: N + f + g + D add 3.0M parameters to PreActResNet18 (CIFAR-100), 9.3M to WRN16-8
  (its 8x8 grid makes D's first layer large) and 8.7M to ResNet-50 at 224 px (whose own 2.0M classifier then
  goes unused; the paper reports +10M).
* On a reconstruction step the clean encoder pass is shared with the mixing when the mix happens at ``A`` or
  ``e``; after input mixup the clean batch needs its own encoder pass.
* The pass through the backbone calls ``forward_features`` (the method replaces the head): under DDP the
  trainer must wrap the model and the method's modules together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.alignmixup import (
    AblationOptions,
    AlignMixDraw,
    AlignMixMethod,
    Direction,
    SinkhornMode,
    last_feature_stage,
    mix_with_partners,
    unaligned_logs,
)
from mixbench.methods.base import Logs, MixPreview, device_scalar, mixed_cross_entropy
from mixbench.methods.registry import register_method
from mixbench.methods.stage_probe import stage_shape

LEVELS = ("input", "feature", "embedding")
MIN_DECODER_WIDTH = 32


@dataclass
class AEDraw:
    """The random choices of one AlignMixup/AE step."""

    level: str
    lam: float
    perm: torch.Tensor
    reconstruct: bool
    keep_first_geometry: bool


class ResidualUpBlock(nn.Module):
    """``conv(ReLU(BN(conv(up(ReLU(BN(h))))))) + conv1x1(up(h))``: doubles the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(F.relu(self.bn1(h)), scale_factor=2.0, mode="nearest")
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + self.shortcut(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class ResidualDecoder(nn.Module):
    """``D: e -> x^``: a linear map to a ``width x h x w`` grid, ``upsamplings`` residual up-blocks, a 3x3
    conv."""

    def __init__(
        self, embedding_dim: int, width: int, grid: tuple[int, int], upsamplings: int, out_channels: int = 3
    ) -> None:
        super().__init__()
        self.width, self.grid = width, grid
        self.project = nn.Linear(embedding_dim, width * grid[0] * grid[1])
        blocks, channels = [], width
        for _ in range(upsamplings):
            blocks.append(ResidualUpBlock(channels, max(channels // 2, MIN_DECODER_WIDTH)))
            channels = max(channels // 2, MIN_DECODER_WIDTH)
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )

    def forward(self, embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h = self.project(embedding).view(embedding.shape[0], self.width, *self.grid)
        image = self.to_image(self.blocks(h))
        if tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return image


class EmbeddingClassifier(nn.Module):
    """The evaluated network ``x -> g(f(N(GAP(F(x)))))``: the backbone without its own head, then ``N``, ``f``
    and ``g``."""

    def __init__(
        self, backbone: nn.Module, feature_norm: nn.Module, embed: nn.Module, classifier: nn.Module
    ) -> None:
        super().__init__()
        self.backbone, self.feature_norm, self.embed, self.classifier = (
            backbone,
            feature_norm,
            embed,
            classifier,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(x, last_feature_stage(self.backbone))
        return self.classifier(self.embed(self.feature_norm(features.mean(dim=(-2, -1)))))


@register_method
class AlignMixupAE(AlignMixMethod):
    name = "alignmixup_ae"

    def __init__(
        self,
        alpha: float = 2.0,
        levels: tuple[str, ...] | list[str] = LEVELS,
        embedding_dim: int = 512,
        reconstruction_prob: float = 0.2,
        reconstruction_weight: float = 1.0,
        decoder_lr_scale: float = 0.1,
        decoder_width: int = 256,
        image_size: int = 32,
        eps: float = 0.1,
        max_iter: int = 100,
        threshold: float = 0.1,
        sinkhorn: SinkhornMode = "official",
        converged_tol: float = 1e-3,
        converged_max_iter: int = 1000,
        align: bool = True,
        mix_grid: int | None = None,
        direction: Direction = "random",
        remove_last_downsampling: bool = False,
        cuda_graph: bool = True,
    ) -> None:
        ablation = AblationOptions(align, mix_grid, direction, remove_last_downsampling)
        super().__init__(
            alpha, eps, max_iter, threshold, sinkhorn, converged_tol, converged_max_iter, ablation, cuda_graph
        )
        unknown = sorted(set(levels) - set(LEVELS))
        if not levels or unknown:
            raise ValueError(f"levels must be a non-empty subset of {', '.join(LEVELS)}; got {list(levels)}")
        if not 0.0 <= reconstruction_prob <= 1.0:
            raise ValueError(f"reconstruction_prob must lie in [0, 1], got {reconstruction_prob}")
        if not decoder_lr_scale > 0.0:
            raise ValueError(f"decoder_lr_scale must be positive, got {decoder_lr_scale}")
        self.levels = tuple(levels)
        self.embedding_dim = int(embedding_dim)
        self.reconstruction_prob = reconstruction_prob
        self.reconstruction_weight = reconstruction_weight
        self.decoder_lr_scale = float(decoder_lr_scale)
        self.decoder_width = int(decoder_width)
        self.image_size = int(image_size)
        self.feature_norm: nn.BatchNorm1d | None = None
        self.embed: nn.Linear | None = None
        self.classifier: nn.Linear | None = None
        self.decoder: ResidualDecoder | None = None

    def setup(self, model: nn.Module, num_classes: int) -> None:
        """Apply the model-side ablation, then size ``f``, ``g`` and ``D`` from the last feature tensor of a
        dummy ``image_size`` batch."""
        self.check_model(model)
        self.prepare_model(model)
        device = next(model.parameters()).device
        channels, height, width = stage_shape(model, last_feature_stage(model), self.image_size)
        upsamplings = max(round(math.log2(self.image_size / height)), 0)
        self.feature_norm = nn.BatchNorm1d(channels).to(device)
        self.embed = nn.Linear(channels, self.embedding_dim).to(device)
        self.classifier = nn.Linear(self.embedding_dim, num_classes).to(device)
        self.decoder = ResidualDecoder(
            self.embedding_dim, self.decoder_width, (height, width), upsamplings
        ).to(device)

    def _require_setup(self) -> None:
        if self.decoder is None:
            raise RuntimeError("alignmixup_ae: call setup(model, num_classes) before training or evaluating")

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        self._require_setup()
        return {"": EmbeddingClassifier(model, self.feature_norm, self.embed, self.classifier)}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """``N``, ``f`` and ``g`` at ``lr``; the decoder at ``decoder_lr_scale * lr`` (see the module
        docstring)."""
        self._require_setup()
        head = [*self.feature_norm.parameters(), *self.embed.parameters(), *self.classifier.parameters()]
        return [
            {"params": head, "lr": lr, "weight_decay": weight_decay},
            {
                "params": list(self.decoder.parameters()),
                "lr": lr * self.decoder_lr_scale,
                "weight_decay": weight_decay,
            },
        ]

    def embedding(self, features: torch.Tensor) -> torch.Tensor:
        """``e = f(N(GAP(A)))``."""
        return self.embed(self.feature_norm(features.mean(dim=(-2, -1))))

    def reconstruction_loss(self, clean_embedding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``mean((D(e) - x)^2)`` on the clean batch, in float32."""
        reconstruction = self.decoder(clean_embedding, tuple(x.shape[-2:]))
        return F.mse_loss(reconstruction.float(), x.float())

    def draw(self, batch_size: int) -> AEDraw:
        """This step's level, lam, pairing, reconstruction flag and AlignMix direction."""
        level = self.rng.choice(list(self.levels))
        lam, perm = self.draw_lam_and_pairing(batch_size)
        reconstruct = self.rng.uniform() < self.reconstruction_prob
        keep_first_geometry = level == "feature" and self.draw_keep_first_geometry()
        return AEDraw(level, lam, perm, reconstruct, keep_first_geometry)

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        self._require_setup()
        draw = self.draw(x.shape[0])
        lam = device_scalar(draw.lam, x.device)
        logs: Logs = {"lam": lam, "reconstruct_step": device_scalar(draw.reconstruct, x.device)}
        logs.update({f"level_{name}": device_scalar(draw.level == name, x.device) for name in LEVELS})
        embedding, clean_embedding = self._embeddings(model, x, draw, lam, logs)
        loss = mixed_cross_entropy(
            self.classifier(embedding), y, y[draw.perm], draw.lam, self.label_smoothing
        )
        reconstruction = torch.zeros((), device=x.device)
        if draw.reconstruct:
            reconstruction = self.reconstruction_loss(clean_embedding, x)
            loss = loss + self.reconstruction_weight * reconstruction
        logs["reconstruction"] = reconstruction.detach()
        return loss, logs

    def _embeddings(
        self, model: nn.Module, x: torch.Tensor, draw: AEDraw, lam: torch.Tensor, logs: Logs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mixed embedding the classifier reads, and (on reconstruction steps) the clean one."""
        stage = last_feature_stage(model)
        logs.update(unaligned_logs(x.device))
        if draw.level == "input":
            embedding = self.embedding(model.forward_features(mix_with_partners(x, draw.perm, lam), stage))
            clean = self.embedding(model.forward_features(x, stage)) if draw.reconstruct else None
            return embedding, clean
        features = model.forward_features(x, stage)
        if draw.level == "embedding":
            clean = self.embedding(features)
            return mix_with_partners(clean, draw.perm, lam), clean
        mixed = self.mix_features(features, draw.perm, lam, draw.keep_first_geometry, logs)
        return self.embedding(mixed), self.embedding(features) if draw.reconstruct else None

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """The alignments (as moved image patches), the input mix, the reconstruction ``D(e)`` of the clean
        images and the decoding of the embedding mix (decoded images are never shown to the classifier)."""
        self._require_setup()
        lam, perm = self.draw_lam_and_pairing(x.shape[0])
        draw = AlignMixDraw(lam, perm, input_mix=False, keep_first_geometry=True)
        rows = self.preview_rows(model, x, draw)
        embedding = self.embedding(model.forward_features(x, last_feature_stage(model)))
        size = tuple(x.shape[-2:])
        rows["reconstruction D(e)"] = self.decoder(embedding, size)
        rows["decoded embedding mix"] = self.decoder(mix_with_partners(embedding, perm, lam), size)
        note = "mixing levels " + ", ".join(self.levels) + "; decoded rows illustrate D only"
        return MixPreview(rows=rows, lam=torch.full((x.shape[0],), lam), note=note)
