"""The AdaIN style-transfer autoencoder (Huang & Belongie, "Arbitrary Style Transfer in Real-time with
Adaptive Instance Normalization", ICCV 2017) that StyleMix and StyleCutMix mix images with.

    E: the "normalised" VGG-19 up to relu4_1 (a 1x1 colour convolution, then VGG-19's 3x3 convolutions with
       reflection padding, max-pooling with ceil_mode), 512 channels at 1/8 of the input's side
    AdaIN(c, s) = sigma(s) * (c - mu(c)) / sigma(c) + mu(s)
       mu, sigma: per sample and channel over the spatial positions; sigma^2 is the unbiased variance plus
       1e-5 (the release's ``calc_mean_std``)
    D: the trained decoder, E's mirror image (nearest-neighbour up-sampling), relu4_1 features -> RGB

The weights are the user's local copies of the public release (github.com/xunhuang1995/AdaIN-style, in
PyTorch at github.com/naoto0804/pytorch-AdaIN): ``vgg_normalised.pth`` holds the *whole* VGG-19 (53 layers,
to relu5_4) as one ``nn.Sequential``, whose state-dict keys are the layer indices (``0.weight``,
``2.weight``, ...), and ``decoder.pth`` the decoder's ``nn.Sequential``.  :func:`release_encoder_layout` and
:func:`release_decoder_layout` rebuild those layouts so that both files load with ``strict=True``; the encoder
then keeps its first 31 layers (up to relu4_1), as the release and the StyleMix code do.  Files are read with
``torch.load(weights_only=True)``; a missing file, a file that is not a state dict, or one with other keys or
shapes is refused with one ``ValueError`` line naming the file and the fix.

The two networks are frozen (no gradients, always in eval mode) and only ever run under ``torch.no_grad``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mixbench.rundir import first_line

# VGG-19's convolution blocks: (output channels, 3x3 convolutions); a 2x2 max-pool follows all but the last
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
RELU4_1_LAYERS = 31  # the release's layers [0, 31) end at relu4_1
# where the release's relu1_1, relu2_1, relu3_1 and relu4_1 end (layer counts), for style statistics
STYLE_LAYER_ENDS = (4, 11, 18, 31)
# the decoder's convolutions from relu4_1 back to RGB: (in, out) or "up" for a 2x nearest up-sampling
DECODER_PLAN: tuple[tuple[int, int] | str, ...] = (
    (512, 256),
    "up",
    (256, 256),
    (256, 256),
    (256, 256),
    (256, 128),
    "up",
    (128, 128),
    (128, 64),
    "up",
    (64, 64),
    (64, 3),
)
STD_EPS = 1e-5  # added to the variance, as in the release
ENCODER_FILE, DECODER_FILE = "vgg_normalised.pth", "decoder.pth"


def padded_conv3x3(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Reflection padding by 1 and a 3x3 convolution (two layers of the release's layout)."""
    return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(in_channels, out_channels, (3, 3))]


def release_encoder_layout() -> nn.Sequential:
    """The full 53-layer "normalised" VGG-19 of ``vgg_normalised.pth``, layer for layer."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, (1, 1))]
    channels = 3
    for block, (width, convolutions) in enumerate(VGG19_BLOCKS):
        if block > 0:
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
        for _ in range(convolutions):
            layers += [*padded_conv3x3(channels, width), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


def release_decoder_layout() -> nn.Sequential:
    """The decoder of ``decoder.pth``, layer for layer (no ReLU after the last convolution)."""
    layers: list[nn.Module] = []
    for step in DECODER_PLAN:
        if step == "up":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += padded_conv3x3(*step)
            layers.append(nn.ReLU())
    return nn.Sequential(*layers[:-1])


def mean_std(features: torch.Tensor, eps: float = STD_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel: the spatial mean and ``sqrt(unbiased variance + eps)``, shaped (B, C, 1, 1)
    and computed in float32 (bf16 autocast would otherwise round the variance)."""
    flat = features.float().flatten(2)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``AdaIN(c, s) = sigma(s) * (c - mu(c)) / sigma(c) + mu(s)``, per sample and channel (float32)."""
    content_mean, content_std = mean_std(content)
    style_mean, style_std = mean_std(style)
    return (content.float() - content_mean) / content_std * style_std + style_mean


class AdaINAutoencoder(nn.Module):
    """The frozen encoder (to relu4_1) and decoder; ``encode``/``decode`` run without gradients."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> AdaINAutoencoder:
        """Always in eval mode: these networks are never trained."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """relu4_1 features (B, 512, ceil(H/8), ceil(W/8))."""
        return self.encoder(images)

    @torch.no_grad()
    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features)

    @torch.no_grad()
    def style_vector(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1920): the means and standard deviations of relu1_1, relu2_1, relu3_1 and relu4_1, concatenated
        in that order (mean then std per layer), the style description of StyleMix's class distances."""
        parts, features, start = [], images, 0
        for end in STYLE_LAYER_ENDS:
            features = self.encoder[start:end](features)
            mean, std = mean_std(features)
            parts += [mean.flatten(1), std.flatten(1)]
            start = end
        return torch.cat(parts, dim=1)


def load_local_file(path: Path, setting: str, what: str, fix: str) -> object:
    """``torch.load(path, weights_only=True)`` of a user's local file; a missing or unreadable file is one
    ``ValueError`` line naming the setting, the file and ``fix``."""
    if not path.is_file():
        raise ValueError(f"{setting} {path} is not a file; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, or not plain tensors
        read_as = f"cannot be read {what}".rstrip()
        raise ValueError(f"{setting} {path} {read_as} ({first_line(error)}); {fix}") from None


def load_release_file(path: str | Path, layout: nn.Sequential, setting: str, release_name: str) -> None:
    """Load the state dict in ``path`` into ``layout`` strictly; any problem is one ``ValueError`` line."""
    path = Path(path).expanduser()
    fix = f"set method.{setting} to a local copy of the AdaIN release's {release_name}"
    state = load_local_file(path, setting, "as a state dict", fix)
    if not isinstance(state, dict) or not all(torch.is_tensor(value) for value in state.values()):
        raise ValueError(f"{setting} {path} is not a state dict of tensors; {fix}")
    problem = layout_problem(state, layout.state_dict())
    if problem:
        raise ValueError(
            f"{setting} {path} is not the layout of the AdaIN release's {release_name} ({problem}); {fix}"
        )
    layout.load_state_dict(state, strict=True, assign=True)


def layout_problem(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """The first differences of keys and shapes between ``state`` and ``expected``, or ``""``."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    resized = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", resized)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    return "; ".join(problems)


def load_adain(encoder_path: str | Path, decoder_path: str | Path) -> AdaINAutoencoder:
    """The frozen autoencoder from the release's two files (the encoder cut at relu4_1), in float32.

    The layouts are built on the meta device and take the files' tensors (``assign=True``): no time is spent
    initialising 20M weights that the files replace."""
    with torch.device("meta"):
        encoder, decoder = release_encoder_layout(), release_decoder_layout()
    load_release_file(encoder_path, encoder, "encoder_path", ENCODER_FILE)
    load_release_file(decoder_path, decoder, "decoder_path", DECODER_FILE)
    return AdaINAutoencoder(encoder[:RELU4_1_LAYERS], decoder).float()
