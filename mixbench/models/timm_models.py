"""Vision transformers from timm, wrapped in the stage contract with only the input stage exposed.

* ``swin_t``: Swin-T (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted
  Windows", ICCV), timm ``swin_tiny_patch4_window7_224``.
* ``deit_s``: DeiT-S (Touvron et al. 2021, "Training data-efficient image transformers & distillation
  through attention", ICML), timm ``deit_small_patch16_224``.

Both are built with ``timm.create_model(name, pretrained=False, ...)`` (random init; nothing is ever
downloaded).  Weights can come from a local file (``pretrained_path``): the state dict is adapted to the
built model with timm's own ``checkpoint_filter_fn`` (which resamples DeiT's position embedding and Swin's
relative-position tables when the image or window size differs) and the classifier is dropped when its
shape differs from the requested number of classes.

Swin's window size: the official 7 assumes 224 px (a 56x56 token grid).  For another image size we pick
the largest window ``<= 7`` that divides the first stage's grid ``image_size / 4`` (224 px -> 7, 32 px -> 4,
64 px -> 4, 96 px -> 6); timm itself shrinks the window of later stages whose grid is smaller.

Stage contract: the model exposes stage 0 (the input) only, so input-space mixing works and
feature-space mixing (Manifold Mixup, AlignMixup, ...) fails with :class:`StageUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.models import swin_transformer, vision_transformer
from torch import nn

from mixbench.models.base import StagedNet, StageUnavailableError

SWIN_PATCH_SIZE = 4
SWIN_MAX_WINDOW = 7
FilterFn = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


class TimmInputStageNet(StagedNet):
    """A timm classifier seen as ``stem = forward_features``, no stages, ``head = forward_head``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def stage_modules(self) -> list[nn.Module]:
        return []

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(h)

    @property
    def feature_stages(self) -> tuple[int, ...]:
        return (0,)

    def check_stage(self, stage: int) -> None:
        if stage != 0:
            raise StageUnavailableError(
                f"model {self.name} only supports input-space mixing (stage 0), not stage {stage}"
            )

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``self.named_parameters()``) that timm exempts from weight decay."""
        return {f"net.{name}" for name in self.net.no_weight_decay()}


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


def load_pretrained(net: nn.Module, path: str | Path, filter_fn: FilterFn) -> None:
    """Load a local checkpoint into ``net``, dropping the classifier if its shape differs."""
    state_dict = filter_fn(_read_state_dict(path), net)
    own = net.state_dict()
    classifier = net.pretrained_cfg["classifier"]
    dropped = {
        k
        for k in state_dict
        if k.startswith(f"{classifier}.") and k in own and state_dict[k].shape != own[k].shape
    }
    state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    problems = [k for k in missing if k not in dropped and not k.endswith("relative_position_index")]
    if problems or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not fit: missing {problems[:5]}, unexpected {unexpected[:5]}"
        )


def _build(
    timm_name: str,
    filter_fn: FilterFn,
    num_classes: int,
    image_size: int,
    width: int | None,
    pretrained_path: str | Path | None,
    drop_path_rate: float | None,
    **timm_options: object,
) -> TimmInputStageNet:
    if width is not None:
        raise ValueError(f"{timm_name} has no width option; leave width unset (got width={width})")
    if pretrained_path is not None:
        _check_exists(pretrained_path)  # fail before the (slow) build
    if drop_path_rate is not None:
        timm_options["drop_path_rate"] = drop_path_rate
    net = timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes, img_size=image_size, **timm_options
    )
    if pretrained_path is not None:
        load_pretrained(net, pretrained_path, filter_fn)
    return TimmInputStageNet(net)


def swin_t(
    num_classes: int,
    image_size: int = 224,
    width: int | None = None,
    pretrained_path: str | Path | None = None,
    drop_path_rate: float | None = None,
) -> TimmInputStageNet:
    """Swin-T; ``drop_path_rate=None`` keeps timm's default (0.1)."""
    return _build(
        "swin_tiny_patch4_window7_224",
        swin_transformer.checkpoint_filter_fn,
        num_classes,
        image_size,
        width,
        pretrained_path,
        drop_path_rate,
        window_size=swin_window_size(image_size),
    )


def deit_s(
    num_classes: int,
    image_size: int = 224,
    width: int | None = None,
    pretrained_path: str | Path | None = None,
    drop_path_rate: float | None = None,
) -> TimmInputStageNet:
    """DeiT-S (no distillation token); ``drop_path_rate=None`` keeps timm's default (0.0)."""
    return _build(
        "deit_small_patch16_224",
        vision_transformer.checkpoint_filter_fn,
        num_classes,
        image_size,
        width,
        pretrained_path,
        drop_path_rate,
    )
