"""Stand-in weight files for timing the methods that need weights mixbench does not ship.

StyleMix and StyleCutMix run a pretrained AdaIN autoencoder (``vgg_normalised.pth``, ``decoder.pth``) and
StyleCutMix reads a class style-distance matrix; a run without them is refused.  Their *cost* does not depend
on the values of those weights, so ``tools/bench.py --random-adain`` writes random tensors in the release's
exact layout (the same strict loading as the real files) and a random distance matrix into a temporary
folder, and times the rows with them; such rows say so in their note.  Nothing trained with these files means
anything, and the files live only as long as the benchmark.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mixbench.methods.adain import release_decoder_layout, release_encoder_layout

RANDOM_WEIGHTS_NOTE = "timed with random AdaIN weights in the release layout (--random-adain): same cost"


def write_random_adain_files(folder: Path, num_classes: int, seed: int = 0) -> dict[str, str]:
    """Write the stand-in files into ``folder``; return the method overrides that point to them."""
    generator = torch.Generator().manual_seed(seed)
    paths = {
        "encoder_path": folder / "vgg_normalised.pth",
        "decoder_path": folder / "decoder.pth",
        "style_distance_path": folder / f"styleDistanceMatrix{num_classes}.pt",
    }
    for key, layout in (("encoder_path", release_encoder_layout), ("decoder_path", release_decoder_layout)):
        with torch.device("meta"):
            shapes = layout().state_dict()
        state = {}
        for name, tensor in shapes.items():
            fan_in = math.prod(tensor.shape[1:]) if tensor.dim() > 1 else 1
            state[name] = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
        torch.save(state, paths[key])
    torch.save(torch.rand(num_classes, num_classes, generator=generator), paths["style_distance_path"])
    return {key: str(path) for key, path in paths.items()}
