"""StyleMix and StyleCutMix (Hong et al., "StyleMix: Separating Content and Style for Enhanced Data
Augmentation", CVPR 2021): refused in this version.

Both methods mix two images through a pretrained AdaIN style-transfer autoencoder (Huang & Belongie,
"Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization", ICCV 2017): a VGG-19 encoder
(normalised weights, up to relu4_1) and its trained decoder.  StyleMix mixes the content of the two images
with one ratio and their style with another (AdaIN re-normalisation of the encoded features, then decoding);
StyleCutMix takes the content through a CutMix box and mixes the style the same way.  The label weighs the
content ratio by r = 0.7 and the style ratio by 1 - r.

Those weights are not part of mixbench and are never downloaded.  Without them (``encoder_path`` and
``decoder_path``, both null by default) the constructor fails with one line naming the missing files and
where to get them: ``vgg_normalised.pth`` and ``decoder.pth`` released with AdaIN
(github.com/xunhuang1995/AdaIN-style, converted to PyTorch in github.com/naoto0804/pytorch-AdaIN; the
StyleMix code, github.com/alsdml/StyleMix, loads the same two, the decoder as decoder.pth.tar).  The method
itself is not implemented in this version: with both paths given, the constructor fails with one line saying
so, rather than train with something else.  The other constructor arguments only mirror the official
defaults kept in the method configs ``stylemix`` and ``stylecutmix`` (for a later implementation);
they are not used.
"""

from __future__ import annotations

from mixbench.methods.base import MixMethod
from mixbench.methods.registry import register_method

WEIGHTS_SOURCE = (
    "the VGG-normalised encoder (vgg_normalised.pth) and decoder (decoder.pth) released with AdaIN "
    "(github.com/xunhuang1995/AdaIN-style; PyTorch files in github.com/naoto0804/pytorch-AdaIN)"
)


def refuse_style_method(name: str, encoder_path: str | None, decoder_path: str | None) -> None:
    """Raise the one-line ValueError that explains why ``name`` cannot be built."""
    missing = [
        key for key, path in (("encoder_path", encoder_path), ("decoder_path", decoder_path)) if not path
    ]
    if missing:
        settings = " and ".join(f"method.{key}=<file>" for key in missing)
        raise ValueError(
            f"{name} needs a pretrained AdaIN style-transfer autoencoder that mixbench does not ship or "
            f"download: set {settings} to local copies of {WEIGHTS_SOURCE}"
        )
    raise ValueError(
        f"{name} is not available in this version of mixbench (the AdaIN style-mixing step is not "
        "implemented); the weights given are not used: choose another method"
    )


class StyleMethod(MixMethod):
    """Common refusal of the two style methods."""

    needs_external_weights = True  # tests/test_all_methods_train.py leaves these out of its training runs

    def __init__(self, encoder_path: str | None, decoder_path: str | None) -> None:
        super().__init__()
        refuse_style_method(self.name, encoder_path, decoder_path)


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
    ) -> None:
        super().__init__(encoder_path, decoder_path)


@register_method
class StyleCutMix(StyleMethod):
    name = "stylecutmix"

    def __init__(
        self,
        encoder_path: str | None = None,
        decoder_path: str | None = None,
        prob: float = 0.5,
        content_weight: float = 0.7,
        auto_gamma: bool = True,
        delta: float = 3.0,
        ratio_alpha: float = 0.8,
    ) -> None:
        super().__init__(encoder_path, decoder_path)
