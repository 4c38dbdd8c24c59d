"""timm backbones wrapped in the stage contract, each exposing its four stages.

* ``swin_t``: Swin-T (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted
  Windows", ICCV), timm ``swin_tiny_patch4_window7_224``.
* ``deit_s``: DeiT-S (Touvron et al. 2021, "Training data-efficient image transformers & distillation
  through attention", ICML), timm ``deit_small_patch16_224``.
* ``convnext_t``: ConvNeXt-T (Liu et al. 2022, "A ConvNet for the 2020s", CVPR), timm ``convnext_tiny``.

All are built with ``timm.create_model(name, pretrained=False, ...)`` (random init; nothing is ever
downloaded).  Weights can come from a local file (``pretrained_path``): the state dict is adapted to the
built model with timm's own ``checkpoint_filter_fn`` (which resamples DeiT's position embedding and Swin's
relative-position tables when the image or window size differs, and renames the official ConvNeXt release's
keys) and the classifier is dropped when its shape differs from the requested number of classes.

Swin's window size: the official 7 assumes 224 px (a 56x56 token grid).  For another image size we pick
the largest window ``<= 7`` that divides the first stage's grid ``image_size / 4`` (224 px -> 7, 32 px -> 4,
64 px -> 4, 96 px -> 6); timm itself shrinks the window of later stages whose grid is smaller.

Input size: the transformers are built for ``image_size`` but accept any input size (timm's
``strict_img_size=False`` for Swin, which then pads to whole windows and builds its shift masks per
forward; ``dynamic_img_size=True`` for DeiT, which resamples the position embedding for another grid and
leaves it untouched at the built one).  At the built size the logits are timm's, bit for bit; other sizes
serve the methods' 32 px dummy passes that find a stage's channel count.

Stages (``k`` = after the stem and ``k`` stages; stage 0 is the input), as maps ``(B, C, h, w)``:

* ``swin_t``: stage k is the output of timm's ``layers[k-1]`` (patch merging opens layers 1..3):
  96x56x56, 192x28x28, 384x14x14, 768x7x7 at 224 px (grids 8, 4, 2, 1 at 32 px);
* ``deit_s``: stage k is the output of blocks ``3(k-1) .. 3k-1`` of the 12: (2 * 384)x14x14 at every stage
  at 224 px (2x2 at 32 px), the class token riding along (below);
* ``convnext_t``: stage k is the output of timm's ``stages[k-1]`` (downsampling opens stages 1..3): the same
  shapes as Swin-T.

The hidden states equal timm's ``forward_intermediates`` at ``indices = [0, 1, 2, 3]`` (Swin, ConvNeXt) and
``[2, 5, 8, 11]`` (DeiT), without the final norm: the last stage's map is taken before the norm, which
belongs to the head.  Swin computes in NHWC token maps: ``forward_features`` permutes them to NCHW and
``forward_from`` back; ConvNeXt is NCHW throughout.  Inside, ``stem`` and ``stage_modules`` work in timm's
layout, while ``forward_features``, ``forward_from`` and ``head`` take and return maps.

**DeiT's class token.**  DeiT's hidden state is a sequence: one class token, which the classifier reads, and
``h x w`` patch tokens.  The map a method receives carries both, side by side on the channel axis::

    h_k = concat([patch tokens as (B, C, h, w), class token repeated at every position (B, C, h, w)], dim=1)

so a DeiT-S map has ``2C = 768`` channels: ``h_k[:, :C]`` is timm's patch map, ``h_k[:, C:]`` the class
token; ``forward_from`` reads the class token back as the mean of ``h_k[:, C:]`` over the positions.  Why:
the class token then follows whatever a method does to the batch of maps, in the same call, with the same
weights, and no method needs to know about it:

* permuting or mixing the batch with ``lam`` (Manifold Mixup) mixes the class tokens with that ``lam``;
* a spatial mask mixes them with the mask's area share (the mean over positions);
* AlignMix's transport: the class channels add the same constant ``||c - c'||^2`` to every cost entry,
  which leaves the entropic plan unchanged, and since the plan's total mass is ``r``, the mean over
  positions of ``lam * c + (1 - lam) * c' R^T`` is exactly ``lam * c + (1 - lam) * c'`` (either direction);
* a reader of the map (the Mix Block of AutoMix/AdAutoMix, SUMix's pooled uncertainty head) sees the patch
  tokens and the class token, i.e. everything the network carries at that depth.

The alternatives were worse: a class token stored on the module beside the map is not mixed by a method's
``mix_fn`` (the classifier would read the unmixed token of a mixed sample); calling ``mix_fn`` a second time
on the class token would double a method's side effects (its logs, SUMix's capture).  Reading the token back
as a mean rounds: ``forward_from(forward_features(x, k), k)`` equals the logits to float rounding (~1e-6),
not bit for bit.  The price is the doubled channel count of the maps (memory, and a Mix Block sized to 2C).

Heads and CAM: none of these heads is global average pooling + linear (Swin: LayerNorm per token, pooling,
linear; DeiT: the class token; ConvNeXt: pooling, then LayerNorm, then linear), so ``cam_classifier`` is
``None`` for all of them (see :meth:`mixbench.models.base.StagedNet.cam_classifier`).

ConvNeXt-T's stem: ``stem="patch"`` is timm's 4x4 stride-4 patchify (the paper's); ``stem="cifar"`` is
OpenMixup's ``ConvNeXt_CIFAR`` for 32 px images, a 3x3 stride-1 convolution + LayerNorm (maps 32, 16, 8, 4
at 32 px; its ``stem.0.weight`` is then left at init by ``pretrained_path``).  ``drop_path_rate=None`` keeps
timm's default (0.0 for ConvNeXt-T; OpenMixup's CIFAR ConvNeXt-T config uses 0.3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.models import convnext, swin_transformer, vision_transformer
from torch import nn

from mixbench.models.base import StagedNet

SWIN_PATCH_SIZE = 4
SWIN_MAX_WINDOW = 7
NUM_STAGES = 4
CONVNEXT_STEMS = ("patch", "cifar")
FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


class TimmStagedNet(StagedNet):
    """A timm classifier ``net`` cut into ``stem``, four stages and a head.

    Subclasses say how timm's layout becomes a map (``tokens_to_map``) and back (``map_to_tokens``); the
    stages run in timm's layout, so no conversion happens between two stages.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def tokens_to_map(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return tokens

    def map_to_tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's output in timm's layout (final norm, pooling, classifier)."""
        raise TypeError(f"{type(self).__name__} must define classify()")

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classify(self.map_to_tokens(h))

    def cam_classifier(self) -> None:
        """``None``: no head here is global average pooling + linear (module docstring), so no CAM."""
        return None

    def forward_features(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        self.check_stage(stage)
        if stage == 0:
            return x
        tokens = self.stem(x)
        for module in self.stage_modules()[:stage]:
            tokens = module(tokens)
        return self.tokens_to_map(tokens, (x.shape[-2], x.shape[-1]))

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        self.check_stage(stage)
        tokens = self.stem(h) if stage == 0 else self.map_to_tokens(h)
        for module in self.stage_modules()[stage:]:
            tokens = module(tokens)
        return self.classify(tokens)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``self.named_parameters()``) that timm exempts from weight decay."""
        exempt = self.net.no_weight_decay() if hasattr(self.net, "no_weight_decay") else set()
        return {f"net.{name}" for name in exempt}


class SwinStagedNet(TimmStagedNet):
    """Swin-T: ``stem`` = patch embedding (NHWC tokens), stage k = ``layers[k-1]``, maps NCHW."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.patch_embed(x)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.net.layers)

    def tokens_to_map(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return tokens.permute(0, 3, 1, 2)

    def map_to_tokens(self, h: torch.Tensor) -> torch.Tensor:
        return h.permute(0, 2, 3, 1)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.norm(tokens))


class DeiTStagedNet(TimmStagedNet):
    """DeiT-S: ``stem`` = patch embedding + class token + position embedding, stage k = blocks
    ``3(k-1) .. 3k-1``; maps carry the class token in their second half of channels (module docstring)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        if net.num_prefix_tokens != 1 or len(net.blocks) % NUM_STAGES:
            raise ValueError(
                f"DeiT staging needs one class token and blocks divisible into {NUM_STAGES} stages, got "
                f"{net.num_prefix_tokens} prefix tokens and {len(net.blocks)} blocks"
            )
        self.blocks_per_stage = len(net.blocks) // NUM_STAGES

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))

    def stage_modules(self) -> list[nn.Module]:
        # Slices of timm's own Sequential: the same block modules, so no parameter is registered twice.
        per = self.blocks_per_stage
        return [self.net.blocks[k * per : (k + 1) * per] for k in range(NUM_STAGES)]

    def tokens_to_map(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        batch, _, channels = tokens.shape
        height, width = self.net.patch_embed.dynamic_feat_size(image_size)
        patches = tokens[:, 1:].transpose(1, 2).reshape(batch, channels, height, width)
        class_token = tokens[:, 0, :, None, None].expand(batch, channels, height, width)
        return torch.cat([patches, class_token], dim=1)

    def map_to_tokens(self, h: torch.Tensor) -> torch.Tensor:
        channels = h.shape[1] // 2
        patches = h[:, :channels].flatten(2).transpose(1, 2)
        class_token = h[:, channels:].mean(dim=(2, 3))
        return torch.cat([class_token[:, None], patches], dim=1)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.norm(tokens))


class ConvNeXtStagedNet(TimmStagedNet):
    """ConvNeXt-T: NCHW throughout; ``stem`` = timm's stem, stage k = ``stages[k-1]``, head = pooling,
    LayerNorm, linear (not a CAM head: the norm sits between pooling and the classifier)."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.stem(x)

    def stage_modules(self) -> list[nn.Module]:
        return list(self.net.stages)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.norm_pre(tokens))


def swin_window_size(image_size: int) -> int:
    """Largest window ``<= 7`` dividing Swin's first-stage token grid (``image_size / 4``)."""
    if image_size % SWIN_PATCH_SIZE != 0:
        raise ValueError(f"swin_t needs an image size divisible by {SWIN_PATCH_SIZE}, got {image_size}")
    grid = image_size // SWIN_PATCH_SIZE
    return max(w for w in range(1, SWIN_MAX_WINDOW + 1) if grid % w == 0)


def _check_exists(path: str | Path) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    _check_exists(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # official DeiT/Swin releases nest the weights under "model"
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return checkpoint


def load_pretrained(
    net: nn.Module, path: str | Path, filter_fn: FilterFn, replaced: tuple[str, ...] = ()
) -> None:
    """Load a local checkpoint into ``net``, dropping the classifier, and the tensors named in ``replaced``
    (layers the model changes, e.g. a CIFAR stem), where their shape differs."""
    state_dict = filter_fn(_read_state_dict(path), net)
    own = net.state_dict()
    classifier = net.pretrained_cfg["classifier"]
    dropped = {
        k
        for k in state_dict
        if (k.startswith(f"{classifier}.") or k in replaced)
        and k in own
        and state_dict[k].shape != own[k].shape
    }
    state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    problems = [k for k in missing if k not in dropped and not k.endswith("relative_position_index")]
    if problems or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not fit: missing {problems[:5]}, unexpected {unexpected[:5]}"
        )


def _create(
    timm_name: str, width: int | None, drop_path_rate: float | None, **timm_options: object
) -> nn.Module:
    if width is not None:
        raise ValueError(f"{timm_name} has no width option; leave width unset (got width={width})")
    if drop_path_rate is not None:
        timm_options["drop_path_rate"] = drop_path_rate
    return timm.create_model(timm_name, pretrained=False, **timm_options)


def swin_t(
    num_classes: int,
    image_size: int = 224,
    width: int | None = None,
    pretrained_path: str | Path | None = None,
    drop_path_rate: float | None = None,
) -> SwinStagedNet:
    """Swin-T; ``drop_path_rate=None`` keeps timm's default (0.1)."""
    if pretrained_path is not None:
        _check_exists(pretrained_path)  # fail before the (slow) build
    net = _create(
        "swin_tiny_patch4_window7_224",
        width,
        drop_path_rate,
        num_classes=num_classes,
        img_size=image_size,
        window_size=swin_window_size(image_size),
        strict_img_size=False,
    )
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, swin_transformer.checkpoint_filter_fn)
    return SwinStagedNet(net)


def deit_s(
    num_classes: int,
    image_size: int = 224,
    width: int | None = None,
    pretrained_path: str | Path | None = None,
    drop_path_rate: float | None = None,
) -> DeiTStagedNet:
    """DeiT-S (no distillation token); ``drop_path_rate=None`` keeps timm's default (0.0)."""
    if pretrained_path is not None:
        _check_exists(pretrained_path)
    net = _create(
        "deit_small_patch16_224",
        width,
        drop_path_rate,
        num_classes=num_classes,
        img_size=image_size,
        dynamic_img_size=True,
    )
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, vision_transformer.checkpoint_filter_fn)
    return DeiTStagedNet(net)


def convnext_t(
    num_classes: int,
    image_size: int = 224,
    width: int | None = None,
    pretrained_path: str | Path | None = None,
    drop_path_rate: float | None = None,
    stem: str = "patch",
) -> ConvNeXtStagedNet:
    """ConvNeXt-T (timm ``convnext_tiny``); ``stem="cifar"`` for OpenMixup's 32 px variant; any input size
    (``image_size`` is taken for a uniform signature only)."""
    if stem not in CONVNEXT_STEMS:
        raise ValueError(f"unknown convnext_t stem '{stem}'; valid: {', '.join(CONVNEXT_STEMS)}")
    if pretrained_path is not None:
        _check_exists(pretrained_path)
    net = _create("convnext_tiny", width, drop_path_rate, num_classes=num_classes)
    if stem == "cifar":  # OpenMixup's ConvNeXt_CIFAR: 3x3 stride-1 conv + LayerNorm2d
        first = net.stem[0]
        net.stem[0] = nn.Conv2d(first.in_channels, first.out_channels, kernel_size=3, stride=1, padding=1)
        # timm's own initialisation for the new conv (truncated normal std 0.02, zero bias)
        nn.init.trunc_normal_(net.stem[0].weight, std=0.02)
        nn.init.zeros_(net.stem[0].bias)
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, convnext.checkpoint_filter_fn, replaced=("stem.0.weight",))
    return ConvNeXtStagedNet(net)
