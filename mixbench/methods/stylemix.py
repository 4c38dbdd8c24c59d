"""StyleMix and StyleCutMix (Hong, Lee, Jeon & Kim, "StyleMix: Separating Content and Style for Enhanced Data
Augmentation", CVPR 2021), following the official code (github.com/alsdml/StyleMix: ``train.py``,
``net_mixup.py``, ``net_cutmix.py``, ``makeStyleDistanceMatrix.py``).

Both mix two images through the frozen AdaIN autoencoder of :mod:`mixbench.methods.adain` (encoder ``E`` to
relu4_1, decoder ``D``).  A step mixes with probability ``prob`` (``u ~ U(0, 1)``, mix when ``u < prob``);
otherwise it is plain cross-entropy on the clean batch.  On a mixing step, with ``perm = randperm(B)``,
``a = x`` and ``b = x[perm]`` (both resized bilinearly to ``style_size`` x ``style_size``, 224 as in the
official code, and the result resized back to the batch's size), ``f_a = E(a)``, ``f_b = E(b)`` and
``r = content_weight`` (the official ``--r``, 0.7):

**StyleMix** (``ratio_alpha`` = ``--alpha1``, 0.5)::

    r_c ~ Beta(alpha1, alpha1)  (a's share of the content),   r_s ~ Beta(alpha1, alpha1)  (a's share of style)
    t ~ U(max(0, r_c + r_s - 1), min(r_c, r_s))
    x~ = D( t f_a + (1 - r_c - r_s + t) f_b + (r_c - t) AdaIN(f_a, f_b) + (r_s - t) AdaIN(f_b, f_a) )
    lam = r r_c + (1 - r) r_s,   loss = lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[perm])

The four weights are non-negative and sum to 1; the content of ``a`` has weight ``t + (r_c - t) = r_c`` and
its style ``t + (r_s - t) = r_s`` (AdaIN(c, s) keeps c's content and takes s's style).  The official loss
``r (r_c CE_a + (1 - r_c) CE_b) + (1 - r) (r_s CE_a + (1 - r_s) CE_b)`` is the ``lam`` form above.

**StyleCutMix** (``ratio_alpha`` = ``--alpha1``, 1.0; ``gamma_alpha`` = ``--alpha2``, 0.8; ``delta``, 3.0)::

    gamma = tanh(S[y, y[perm]] / delta) per sample (auto_gamma; S: the class style-distance matrix, 2 added
            to its diagonal as the official code does),  or  gamma ~ Beta(alpha2, alpha2) (auto_gamma=false)
    r_s ~ Beta(alpha1, alpha1),   lam_box ~ Beta(alpha1, alpha1)
    R_c: a CutMix box of side style_size * sqrt(lam_box) (the official rand_bbox(1 - lam_box)), centre
         uniform, clipped; lam_c = area(R_c) / style_size^2 (a's share of the content)
    g_ab = gamma a + (1 - gamma) D(AdaIN(f_a, f_b)),   g_ba = gamma b + (1 - gamma) D(AdaIN(f_b, f_a))
    x~ = R_c (r_s a + (1 - r_s) g_ab) + (1 - R_c) ((1 - r_s) b + r_s g_ba)
    lam = r lam_c + (1 - r) (gamma lam_c + (1 - gamma) r_s)

The official image is ``T a + (1 - R_c - r_s + T) b + (R_c - T) g_ab + (r_s - T) g_ba`` with
``T = max(0, R_c + r_s - 1)``; for the binary box this is the form above.  Note that ``a`` and ``b`` enter
StyleCutMix undecoded, while StyleMix decodes the whole mixture.

The class style-distance matrix ``S`` (``style_distance_path``) is the official ``styleDistanceMatrix100.pt``
/ ``styleDistanceMatrix10.pt`` for CIFAR-100 / CIFAR-10, or one made the same way for another dataset by
:func:`class_style_distances`: the per-class mean of each image's style vector (mean and standard deviation of
relu1_1..relu4_1, 1920 values, of the augmented training images resized to 224) and, for classes i and j, the
mean squared difference of their class means.

Checked equal to the official code: the AdaIN layouts (``net_mixup.py`` / ``net_cutmix.py``: ``vgg`` cut at
31 layers, ``decoder``), ``function.py``'s ``calc_mean_std`` (unbiased variance + 1e-5), ``Net_D.forward``
of both files (the four-term feature mixture with ``t ~ U(max(0, rc + rs - 1), min(rc, rs))``; the pixel
mixture with ``T = max(0, Rc + Rs - 1)``), ``train.py``'s ``train`` (draw order, the ``r``-weighted label,
bilinear 224 / back to the batch size, clean steps on the unresized batch) and ``rand_bbox`` (side
``int(224 sqrt(lam_box))``, halves ``side // 2``, the first centre indexes rows).

**The official draws, in order** (NumPy's generator; here the run's :class:`~mixbench.rng.MixRandom`):
``u``; on a mixing step ``perm`` (torch), then StyleMix ``r_c, r_s, t``, StyleCutMix ``gamma`` (only without
auto gamma), ``r_s``, ``lam_box``, the box's row centre and column centre.

**Pixel range.**  The official code feeds the CIFAR-normalised batch (``(x - mean) / std``) to ``E``,
upsampled, and trains the classifier on the decoded output as it comes out; the AdaIN networks were trained on
[0, 1] images, so their input is off their range, but that is what the published numbers used, and it is the
default here (``input_mean`` and ``input_std`` null).  Given the data's normalisation (e.g.
``method.input_mean='${data.mean}' method.input_std='${data.std}'``), the batch is mapped back to [0, 1]
before the AdaIN networks and the mixed image is normalised again afterwards.

**The AdaIN weights** are the user's local files (``encoder_path``, ``decoder_path``; mixbench never
downloads them): loaded strictly at construction, frozen, always in eval mode and run under
``torch.no_grad``.  They are kept outside the method's parameters and ``state_dict``: not in the optimizer,
not counted in ``method_params``, not written to checkpoints (the files are the source), not broadcast by DDP;
they follow the method's ``.to()`` and are moved to the model's device by :meth:`setup`.  The distance matrix
likewise (a non-persistent buffer).  Without the two paths the constructor fails in one line naming both
files.

**Deviations from the official code.**

* The AdaIN statistics (mean, standard deviation) are computed in float32, also under bf16 autocast.
* A decoded image whose side is not ``style_size`` (a side that is not a multiple of 8: the encoder pools
  with ``ceil_mode``) is resized bilinearly to it; at the official 224 (and 32, 16) nothing changes.
* ``style_size`` may be null: the AdaIN networks then run at the batch's own size (cheap, for CPU tests); the
  official 224 is the default.
* Label smoothing, where a recipe sets it, applies to both cross-entropies (the official code has none).
* :func:`class_style_distances` averages every image of a class.  ``makeStyleDistanceMatrix.py`` accumulates
  with ``res[0, target] += sv`` and ``res[1, target] += 1``, an indexed assignment that keeps one of the
  repeated indices: per batch it adds one (unspecified) image per class present and counts 1.  Its class
  means have the same expectation but rest on fewer images: measured by simulating shuffled CIFAR label
  orders, 3.9% of the images for CIFAR-10 at its script's batch 256, 36% for CIFAR-100 at 256 (57% at the
  default 128).  The released matrices (used with ``auto_gamma``) are what they are; this only concerns
  matrices made here for other datasets.
* The official ``train.py`` keeps the ``rs`` draw of StyleCutMix on ``--alpha1`` and draws the box from
  ``Beta(alpha1, alpha1)`` too; ``--alpha2`` only draws gamma without auto gamma.  We follow it (the former
  config's ``ratio_alpha: 0.8`` for StyleCutMix was ``--alpha2``, now ``gamma_alpha``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.adain import AdaINAutoencoder, adaptive_instance_norm, load_adain, load_local_file
from mixbench.methods.base import (
    Logs,
    MixMethod,
    MixPreview,
    device_scalar,
    in_layout_of,
    mixed_cross_entropy,
)
from mixbench.methods.cutmix import Box, box_area_ratio, box_mask, sample_box
from mixbench.methods.registry import register_method

WEIGHTS_SOURCE = (
    "the VGG-normalised encoder (vgg_normalised.pth) and decoder (decoder.pth) released with AdaIN "
    "(github.com/xunhuang1995/AdaIN-style; PyTorch files in github.com/naoto0804/pytorch-AdaIN)"
)
DISTANCE_SOURCE = (
    "styleDistanceMatrix100.pt / styleDistanceMatrix10.pt of github.com/alsdml/StyleMix for CIFAR-100 / "
    "CIFAR-10, or a (classes x classes) tensor made by mixbench.methods.stylemix.class_style_distances"
)
DIAGONAL_OFFSET = 2.0  # added to S's diagonal by the official code ("prevent diagonal lines from zero")
OFFICIAL_STYLE_SIZE = 224


def refuse_style_method(name: str, encoder_path: str | None, decoder_path: str | None) -> None:
    """Raise the one-line ValueError naming the AdaIN files that are not given."""
    missing = [
        key for key, path in (("encoder_path", encoder_path), ("decoder_path", decoder_path)) if not path
    ]
    if missing:
        settings = " and ".join(f"method.{key}=<file>" for key in missing)
        raise ValueError(
            f"{name} needs a pretrained AdaIN style-transfer autoencoder that mixbench does not ship or "
            f"download: set {settings} to local copies of {WEIGHTS_SOURCE}"
        )


def style_mix_weights(content_ratio: float, style_ratio: float, shared: float) -> tuple[float, ...]:
    """StyleMix's weights of ``(f_a, f_b, AdaIN(f_a, f_b), AdaIN(f_b, f_a))`` for a's content share
    ``content_ratio``, a's style share ``style_ratio`` and the shared part ``t``."""
    return (
        shared,
        1.0 - content_ratio - style_ratio + shared,
        content_ratio - shared,
        style_ratio - shared,
    )


def style_mix_label(content_ratio: float | torch.Tensor, style_ratio, content_weight: float):
    """``lam = r content_ratio + (1 - r) style_ratio``: the share of ``y`` in the label."""
    return content_weight * content_ratio + (1.0 - content_weight) * style_ratio


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (the official ``nn.Upsample(mode="bilinear")``); the same tensor at its own size."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def load_distance_matrix(path: str | Path) -> torch.Tensor:
    """The class style-distance matrix in ``path`` (``weights_only``), with the official diagonal offset."""
    path = Path(path).expanduser()
    fix = f"set method.style_distance_path to {DISTANCE_SOURCE}, or method.auto_gamma=false"
    matrix = load_local_file(path, "style_distance_path", "", fix)
    if not torch.is_tensor(matrix) or matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"style_distance_path {path} is not a square (classes x classes) tensor; {fix}")
    matrix = matrix.float().clone()
    matrix.diagonal().add_(DIAGONAL_OFFSET)
    return matrix


@torch.no_grad()
def class_style_distances(
    autoencoder: AdaINAutoencoder,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    style_size: int | None = OFFICIAL_STYLE_SIZE,
) -> torch.Tensor:
    """The (classes x classes) style-distance matrix of ``makeStyleDistanceMatrix.py``: the mean style vector
    of each class over ``batches`` (images as the training step sees them, resized to ``style_size``), then
    the mean squared difference of every pair of class means.  Save it with ``torch.save`` for
    ``style_distance_path`` (the diagonal offset is added when it is loaded)."""
    sums, counts = None, torch.zeros(num_classes)
    for images, labels in batches:
        vectors = autoencoder.style_vector(resize(images, style_size or images.shape[-1])).cpu()
        if sums is None:
            sums = torch.zeros(num_classes, vectors.shape[1])
        sums.index_add_(0, labels.cpu(), vectors)
        counts += torch.bincount(labels.cpu(), minlength=num_classes).float()
    if sums is None or (counts == 0).any():
        raise ValueError("class_style_distances needs at least one image of every class")
    means = sums / counts[:, None]
    return (means[:, None, :] - means[None, :, :]).pow(2).mean(dim=2)


@dataclass
class StyleDraw:
    """The random choices of one step (``mix`` False: a clean step, the rest unused)."""

    mix: bool
    perm: torch.Tensor | None = None
    content_ratio: float = 1.0  # StyleMix's r_c
    style_ratio: float = 1.0  # r_s
    shared: float = 1.0  # StyleMix's t
    box: Box | None = None  # StyleCutMix's content box (a's content) on the canvas
    gamma: float | None = None  # StyleCutMix without auto gamma


class StyleMethod(MixMethod):
    """What StyleMix and StyleCutMix share: the frozen AdaIN networks, the canvas, the clean/mixed step."""

    needs_external_weights = True  # tests that train every method leave these out (they need weight files)

    def passes(self) -> None:
        """Not modelled: the cost of a mixing step is the AdaIN encoder and decoder at ``style_size``, not
        passes of the model (see the module docstring's cost)."""
        return None

    def __init__(
        self,
        encoder_path: str | None,
        decoder_path: str | None,
        prob: float,
        content_weight: float,
        ratio_alpha: float,
        style_size: int | None,
        input_mean: Sequence[float] | None,
        input_std: Sequence[float] | None,
    ) -> None:
        super().__init__()
        refuse_style_method(self.name, encoder_path, decoder_path)
        if not 0.0 <= content_weight <= 1.0:
            raise ValueError(f"content_weight must lie in [0, 1], got {content_weight}")
        if style_size is not None and (isinstance(style_size, bool) or int(style_size) < 8):
            raise ValueError(f"style_size must be null or an image side of at least 8, got {style_size}")
        if (input_mean is None) != (input_std is None) or any(
            values is not None and len(values) != 3 for values in (input_mean, input_std)
        ):
            raise ValueError("input_mean and input_std must both be null or both list 3 channel values")
        self.prob, self.content_weight, self.ratio_alpha = prob, content_weight, ratio_alpha
        self.style_size = None if style_size is None else int(style_size)
        self.unit_range = input_mean is not None
        normalisation = (input_mean, input_std) if self.unit_range else ((0.0,) * 3, (1.0,) * 3)
        for key, values in zip(("input_mean", "input_std"), normalisation, strict=True):
            self.register_buffer(
                key, torch.tensor([float(v) for v in values]).view(1, 3, 1, 1), persistent=False
            )
        # outside the module tree: no parameters (optimizer, DDP, counts) and no state_dict entries
        object.__setattr__(self, "adain", load_adain(encoder_path, decoder_path))

    def _apply(self, fn, recurse: bool = True):
        """``.to()`` / ``.cuda()`` move the AdaIN networks too, though they are not submodules."""
        super()._apply(fn, recurse)
        self.adain._apply(fn, recurse)
        return self

    def setup(self, model: nn.Module, num_classes: int) -> None:
        device = next(model.parameters()).device
        self.to(device)

    # ---------------------------------------------------------------------------------------- the step

    def draw(self, batch_size: int, canvas: tuple[int, int], force_mix: bool = False) -> StyleDraw:
        """The step's random choices, in the official order; ``canvas`` is the (H, W) the AdaIN nets see."""
        raise TypeError(f"{type(self).__name__} must define draw()")

    def mix_on_canvas(self, a: torch.Tensor, y: torch.Tensor, draw: StyleDraw):
        """(mixed canvas, lam) from the canvas ``a`` (B, 3, S, S) and the draw."""
        raise TypeError(f"{type(self).__name__} must define mix_on_canvas()")

    def canvas_side(self, x: torch.Tensor) -> tuple[int, int]:
        return (self.style_size, self.style_size) if self.style_size else tuple(x.shape[-2:])

    def to_canvas(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as the AdaIN networks see it: in [0, 1] when the normalisation is given, resized."""
        if self.unit_range:
            x = x * self.input_std + self.input_mean
        return resize(x, self.canvas_side(x))

    def from_canvas(self, canvas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mixed = resize(canvas, tuple(x.shape[-2:]))
        if self.unit_range:
            mixed = (mixed - self.input_mean) / self.input_std
        return in_layout_of(mixed.to(x.dtype), x)

    def decode_to(self, features: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """``D(features)`` at the canvas's size (it differs only for sides that are not multiples of 8)."""
        return resize(self.adain.decode(features).float(), tuple(canvas.shape[-2:]))

    @torch.no_grad()
    def mixed_batch(self, x: torch.Tensor, y: torch.Tensor, draw: StyleDraw):
        """(mixed images at the batch's size and normalisation, lam)."""
        canvas, lam = self.mix_on_canvas(self.to_canvas(x).float(), y, draw)
        return self.from_canvas(canvas, x), lam

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        draw = self.draw(x.shape[0], self.canvas_side(x))
        if not draw.mix:
            loss = F.cross_entropy(model(x), y, label_smoothing=self.label_smoothing)
            return loss, {"lam": device_scalar(1.0, x.device)}
        mixed, lam = self.mixed_batch(x, y, draw)
        loss = mixed_cross_entropy(model(mixed), y, y[draw.perm], lam, self.label_smoothing)
        lam_mean = lam.mean().to(torch.float32) if torch.is_tensor(lam) else device_scalar(lam, x.device)
        return loss, {"lam": lam_mean}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        draw = self.draw(x.shape[0], self.canvas_side(x), force_mix=True)
        mixed, lam = self.mixed_batch(x, y, draw)
        lam = torch.as_tensor(lam, dtype=torch.float32, device=x.device).expand(x.shape[0]).cpu()
        rows = {"source a (content, style)": x, "source b": x[draw.perm], "mixed": mixed}
        return MixPreview(rows=rows, lam=lam, note=f"{self.name}: label share of a = r*content + (1-r)*style")


@register_method
class StyleMix(StyleMethod):
    name = "stylemix"

    def __init__(
        self,
        encoder_path: str | None = None,
        decoder_path: str | None = None,
        prob: float = 0.2,
        content_weight: float = 0.7,
        ratio_alpha: float = 0.5,
        style_size: int | None = OFFICIAL_STYLE_SIZE,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            encoder_path, decoder_path, prob, content_weight, ratio_alpha, style_size, input_mean, input_std
        )

    def draw(self, batch_size: int, canvas: tuple[int, int], force_mix: bool = False) -> StyleDraw:
        if not (self.rng.uniform() < self.prob or force_mix):
            return StyleDraw(mix=False)
        perm = self.rng.permutation(batch_size)
        content_ratio = float(self.rng.beta(self.ratio_alpha))
        style_ratio = float(self.rng.beta(self.ratio_alpha))
        low, high = max(0.0, content_ratio + style_ratio - 1.0), min(content_ratio, style_ratio)
        shared = self.rng.uniform(low, high)
        return StyleDraw(True, perm, content_ratio, style_ratio, shared)

    def mix_on_canvas(self, a: torch.Tensor, y: torch.Tensor, draw: StyleDraw):
        features_a = self.adain.encode(a)
        features_b = features_a[draw.perm]
        weights = style_mix_weights(draw.content_ratio, draw.style_ratio, draw.shared)
        terms = (
            features_a,
            features_b,
            adaptive_instance_norm(features_a, features_b),
            adaptive_instance_norm(features_b, features_a),
        )
        mixed_features = sum(weight * term.float() for weight, term in zip(weights, terms, strict=True))
        lam = style_mix_label(draw.content_ratio, draw.style_ratio, self.content_weight)
        return self.decode_to(mixed_features, a), lam


@register_method
class StyleCutMix(StyleMethod):
    name = "stylecutmix"

    def __init__(
        self,
        encoder_path: str | None = None,
        decoder_path: str | None = None,
        prob: float = 0.5,
        content_weight: float = 0.7,
        ratio_alpha: float = 1.0,
        auto_gamma: bool = True,
        delta: float = 3.0,
        style_distance_path: str | None = None,
        gamma_alpha: float = 0.8,
        style_size: int | None = OFFICIAL_STYLE_SIZE,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            encoder_path, decoder_path, prob, content_weight, ratio_alpha, style_size, input_mean, input_std
        )
        self.auto_gamma, self.delta, self.gamma_alpha = bool(auto_gamma), delta, gamma_alpha
        if self.auto_gamma and not style_distance_path:
            raise ValueError(
                f"stylecutmix with auto_gamma=true needs the class style-distance matrix: set "
                f"method.style_distance_path=<file> to {DISTANCE_SOURCE}; or method.auto_gamma=false "
                "(gamma ~ Beta(gamma_alpha, gamma_alpha))"
            )
        if self.auto_gamma and not delta > 0:
            raise ValueError(f"delta must be positive (gamma = tanh(distance / delta)), got {delta}")
        matrix = load_distance_matrix(style_distance_path) if self.auto_gamma else torch.zeros(0, 0)
        self.register_buffer("style_distances", matrix, persistent=False)

    def setup(self, model: nn.Module, num_classes: int) -> None:
        super().setup(model, num_classes)
        if self.auto_gamma and self.style_distances.shape[0] != num_classes:
            raise ValueError(
                f"style_distance_path holds a {self.style_distances.shape[0]}-class matrix, but the data has "
                f"{num_classes} classes; give the matrix of this dataset ({DISTANCE_SOURCE})"
            )

    def draw(self, batch_size: int, canvas: tuple[int, int], force_mix: bool = False) -> StyleDraw:
        if not (self.rng.uniform() < self.prob or force_mix):
            return StyleDraw(mix=False)
        perm = self.rng.permutation(batch_size)
        gamma = None if self.auto_gamma else float(self.rng.beta(self.gamma_alpha))
        style_ratio = float(self.rng.beta(self.ratio_alpha))
        lam_box = float(self.rng.beta(self.ratio_alpha))
        # a box of side sqrt(lam_box) (CutMix's rule for 1 - lam_box, the official rand_bbox(size, 1 - lam))
        box = sample_box(*canvas, 1.0 - lam_box, self.rng)
        return StyleDraw(True, perm, style_ratio=style_ratio, box=box, gamma=gamma)

    def gamma(self, draw: StyleDraw, y: torch.Tensor) -> torch.Tensor | float:
        if not self.auto_gamma:
            return draw.gamma
        return torch.tanh(self.style_distances[y, y[draw.perm]] / self.delta)

    def mix_on_canvas(self, a: torch.Tensor, y: torch.Tensor, draw: StyleDraw):
        height, width = a.shape[-2:]
        lam_content = box_area_ratio(draw.box, height, width)  # a's content: the clipped box's area
        gamma = self.gamma(draw, y)
        gamma_image = gamma.view(-1, 1, 1, 1) if torch.is_tensor(gamma) else gamma
        b = a[draw.perm]
        features_a = self.adain.encode(a)
        features_b = features_a[draw.perm]
        stylised_ab = self.decode_to(adaptive_instance_norm(features_a, features_b), a)
        stylised_ba = self.decode_to(adaptive_instance_norm(features_b, features_a), a)
        g_ab = gamma_image * a + (1.0 - gamma_image) * stylised_ab
        g_ba = gamma_image * b + (1.0 - gamma_image) * stylised_ba
        inside = box_mask(draw.box, height, width, a.device)
        rs = draw.style_ratio
        mixed = inside * (rs * a + (1.0 - rs) * g_ab) + (1.0 - inside) * ((1.0 - rs) * b + rs * g_ba)
        style_share = gamma * lam_content + (1.0 - gamma) * rs
        return mixed, style_mix_label(lam_content, style_share, self.content_weight)
