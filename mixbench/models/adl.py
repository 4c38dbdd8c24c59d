"""ADL: the attention-based dropout layer, a training-time layer of weakly supervised localisation.

Choe and Shim (2019), "Attention-based Dropout Layer for Weakly Supervised Object Localization", CVPR.
Official code: github.com/junsukchoe/ADL (TensorFlow/tensorpack: ``ops.py``, ``backbone/vgg.py``,
``backbone/resnet.py``, ``run_train.sh``) and its PyTorch port by the same first author, linked from that
repository's README: github.com/clovaai/wsolevaluation (``wsol/method/adl.py``, ``wsol/vgg.py``,
``wsol/resnet.py``, ``config.py``).

**The layer.**  For a feature map ``F`` (``B x C x H x W``) in training mode:

* self-attention map ``A = mean_c F[:, c]`` (``B x 1 x H x W``, the channel-wise average);
* drop mask ``M_drop = [A < gamma * max_{h,w} A]`` (per image: the maximum is each image's own; 1 keeps,
  0 drops the region whose attention is at least ``gamma`` of the peak, i.e. the most discriminative part);
* importance map ``M_imp = sigmoid(A)``;
* one of the two is chosen for the whole batch: ``M = M_drop`` with probability ``drop_rate``, else ``M_imp``,
  and the output is ``F * M`` (broadcast over channels).

In eval mode the layer is the identity, so a trained network's logits and class activation maps are those of
the backbone with the same weights.  It has no parameters and no buffers.  The gradient flows through the
importance map when it is chosen (``sigmoid(A)`` depends on ``F``) and not through the drop mask (a
comparison), as in the official code.

**Random choice.**  The official code draws one scalar per layer and per forward call (``floor(U + rate)``
with ``U ~ U[0, 1)``: 1, the drop mask, with probability ``rate``), so the choice is per batch, not per
sample, and each ADL layer draws its own; this module does the same (``rand(()) < drop_rate``, the same
probability), on the feature map's device and without any read of a device value on the host.

**Positions and hyperparameters per backbone (CUB-200-2011).**

* ``resnet50``: after the first block of ``layer3`` and after the first and the last (third) blocks of
  ``layer4``: positions ``layer3.0``, ``layer4.0``, ``layer4.2``.  Official: ``run_train.sh`` (ResNet50-SE on
  CUB) passes gating positions ``31 41 5`` (``backbone/resnet.py``: ``3k`` is block ``k-1`` of ``group2``,
  the torchvision ``layer3``; ``4k`` block ``k-1`` of ``group3``, ``layer4``; ``5`` the output of ``group3``),
  ``adl_threshold 0.90`` and ``adl_keep_prob 0.25`` (``drop_rate = 1 - keep_prob = 0.75``); the PyTorch port
  inserts ADL at the same places (``_ADL_POSITION``: block 0 of ``layer3``, blocks 0 and 2 of ``layer4``) with
  ``adl_drop_rate 0.75`` and ``adl_threshold 0.9`` (its defaults).  So ``gamma = 0.9``, ``drop_rate = 0.75``.
* ``vgg_gap``: after pool3, after conv4-3 (its ReLU, before pool4) and after conv5-3 (its ReLU, before the
  added CAM conv): positions ``pool3``, ``conv4_3``, ``conv5_3``, the PyTorch port's 14x14 VGG-GAP layout
  (``configs_dict['adl']['14x14']`` in ``wsol/vgg.py``).  The tensorpack VGG-GAP can gate after any conv or
  pool (flags ``11`` .. ``53``, ``1`` .. ``4``), but the release gives no VGG command line, so the PyTorch
  layout is the one written in code; the tensorpack flags ``3 4 53`` (pool3, pool4, conv5-3) are available as
  ``positions: [pool3, pool4, conv5_3]``.  ``gamma = 0.8``, ``drop_rate = 0.75``, a deliberate choice that
  no release script fixes: the tensorpack ``config.py`` defaults are ``adl_threshold 0.5`` and
  ``adl_keep_prob 0.25`` and its only command line is the ResNet one; in the PyTorch port 0.8 is the
  constructor default of ``wsol/method/adl.py``'s ``ADL``, but ``main.py`` always passes
  ``--adl_threshold`` (default 0.9, one value for every architecture, which that study then tuned per
  architecture), so the port as run without flags gates VGG at 0.9.  0.8 is kept as the first author's own
  layer default; set ``model.adl.gamma=0.9`` for the port's run.  (The CVPR paper's own per-backbone
  values could not be read here to confirm it.)

**Insertion without new state-dict keys.**  :func:`insert_adl` puts each ADL module into the
``nn.Sequential`` that holds the layer it follows, right after it, under a new name (``<key>_adl``: ``16_adl``
after VGG's pool3 ``features.16``, ``0_adl`` after ``layer3.0``); the existing entries keep their names, and
ADL has no parameters or buffers, so the state dict's keys are unchanged and torchvision files load as before
(the PyTorch port instead renumbers the layers and remaps the pretrained keys).  VGG-GAP's stages are slices
of ``features`` that share its modules, so the layer is inserted into both the slice that runs and
``features`` (which registers it, so ``train()``/``eval()`` reach it).  Positional indexing of those
containers (``model.layer3[1]``, ``len(model.features)``) shifts; nothing in mixbench indexes them after
construction.

**Deviations.**

* The choice is drawn from the device's default torch generator (like ``nn.Dropout``), which the trainer
  seeds per epoch, not from the run's :class:`mixbench.rng.MixRandom` (a model does not own it).
* The backbones are mixbench's: ``resnet50`` is torchvision's ResNet-50 with a stride-2 ``layer4`` (7x7 maps
  at 224 px), where the official ResNet50-SE and the PyTorch port's ResNet-50 keep ``layer4`` at stride 1
  (14x14) and the tensorpack one has squeeze-and-excitation blocks; ``vgg_gap`` is Zhou et al.'s VGG-GAP as in
  both official codes.
* A map whose attention is 0 everywhere (all-zero features) gets an all-zero drop mask (``0 < 0`` is false),
  as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mixbench.models.base import StagedNet
from mixbench.models.resnet import ResNet
from mixbench.models.vgg import VGGGAP

__all__ = ["ADL", "ADL_POSITIONS", "adl_option", "adl_positions", "insert_adl"]

ADL_POSITIONS: dict[str, tuple[str, ...]] = {
    "vgg_gap": ("pool3", "conv4_3", "conv5_3"),
    "resnet50": ("layer3.0", "layer4.0", "layer4.2"),
}
"""The official positions per registered model (see the module docstring); ``adl`` is refused elsewhere."""

_OPTION_KEYS = ("drop_rate", "gamma", "positions")


class ADL(nn.Module):
    """Attention-based dropout (Choe and Shim 2019): ``F * M`` in training, with ``M`` the drop mask
    ``[mean_c F < gamma * max]`` (probability ``drop_rate``, one draw per call) or the importance map
    ``sigmoid(mean_c F)``; the identity in eval mode."""

    def __init__(self, drop_rate: float = 0.75, gamma: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError(f"ADL drop_rate must be in [0, 1], got {drop_rate}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ADL gamma (the drop threshold over the peak) must be in [0, 1], got {gamma}")
        self.drop_rate = float(drop_rate)
        self.gamma = float(gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        attention = x.mean(dim=1, keepdim=True)
        importance_map = torch.sigmoid(attention)
        peak = attention.amax(dim=(2, 3), keepdim=True)
        drop_mask = (attention < self.gamma * peak).to(x.dtype)
        use_drop = (torch.rand((), device=x.device) < self.drop_rate).to(x.dtype)  # one draw for the batch
        return x * (use_drop * drop_mask + (1.0 - use_drop) * importance_map)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, gamma={self.gamma}"


def adl_positions(model: StagedNet) -> dict[str, nn.Module]:
    """The layers of a freshly built ``vgg_gap`` or ResNet after which ADL can go, by name.

    VGG-GAP: ``conv<b>_<i>`` (the ReLU after that conv) and ``pool<b>``, for the blocks after the stem
    (``b >= 2``: the stem, conv1 and pool1, is not a stage); ResNets: ``layer<k>.<i>`` (block ``i`` of
    ``layer<k>``).
    """
    found: dict[str, nn.Module] = {}
    if isinstance(model, VGGGAP):
        block, conv = 1, 0
        for module in model.features.children():
            if isinstance(module, ADL):
                raise ValueError(f"model {model.name} already has ADL layers")
            if isinstance(module, nn.Conv2d):
                conv += 1
            elif isinstance(module, nn.ReLU) and block > 1:
                found[f"conv{block}_{conv}"] = module
            elif isinstance(module, nn.MaxPool2d):
                if block > 1:
                    found[f"pool{block}"] = module
                block, conv = block + 1, 0
    elif isinstance(model, ResNet):
        for index, layer in enumerate(model.stage_modules(), start=1):
            for key, block_module in layer.named_children():
                if isinstance(block_module, ADL):
                    raise ValueError(f"model {model.name} already has ADL layers")
                found[f"layer{index}.{key}"] = block_module
    else:
        raise ValueError(f"ADL positions are defined for vgg_gap and the ResNets, not for model {model.name}")
    return found


def _insert_after(host: nn.Sequential, target: nn.Module, layer: ADL) -> None:
    """Put ``layer`` right after ``target`` in ``host``, under the name ``<target's name>_adl``; every other
    entry keeps its name (so its state-dict keys)."""
    entries = list(host._modules.items())
    host._modules.clear()
    for key, module in entries:
        host._modules[key] = module
        if module is target:
            host.add_module(f"{key}_adl", layer)


def insert_adl(model: StagedNet, positions: Sequence[str], drop_rate: float, gamma: float) -> list[ADL]:
    """Insert one :class:`ADL` after each named layer of a built ``vgg_gap`` or ResNet (names:
    :func:`adl_positions`) and return them; the state dict's keys do not change."""
    layers = adl_positions(model)
    unknown = [position for position in positions if position not in layers]
    if unknown:
        raise ValueError(
            f"unknown ADL position(s) {', '.join(map(str, unknown))} for model {model.name}; "
            f"valid: {', '.join(layers)}"
        )
    if len(set(positions)) != len(positions):
        raise ValueError(f"ADL positions repeat: {', '.join(positions)}")
    # the containers the forward pass runs (VGG-GAP's stage slices) and the registered ones (its ``features``)
    running = [module for stage in model.stage_modules() for module in stage.modules()]
    unique = {id(module): module for module in [*running, *model.modules()]}.values()
    hosts = [module for module in unique if isinstance(module, nn.Sequential)]
    executed = {id(module) for module in running}
    inserted = []
    for position in positions:
        target, layer = layers[position], ADL(drop_rate, gamma)
        holders = [host for host in hosts if any(module is target for module in host._modules.values())]
        if not any(id(host) in executed for host in holders):  # a model whose stages do not hold the layer
            raise ValueError(f"ADL position {position} of model {model.name} is not inside a stage")
        for host in holders:
            _insert_after(host, target, layer)
        inserted.append(layer)
    return inserted


def adl_option(model_name: str, option: object) -> dict[str, object] | None:
    """The keyword arguments of :func:`insert_adl` for ``build_model``'s ``adl`` option: ``None`` (no ADL) or
    ``{drop_rate, gamma}`` with optional ``positions`` (default: the official ones, :data:`ADL_POSITIONS`).
    Refuses the option on a model without official positions."""
    if option is None:
        return None
    if model_name not in ADL_POSITIONS:
        raise ValueError(
            f"model {model_name!r} has no ADL positions (defined for {', '.join(ADL_POSITIONS)}); "
            "set model.adl=null"
        )
    if not isinstance(option, Mapping):
        raise ValueError(f"adl must be null or a mapping with drop_rate and gamma, got {option!r}")
    unknown = sorted(set(option) - set(_OPTION_KEYS))
    missing = [key for key in ("drop_rate", "gamma") if option.get(key) is None]
    if unknown or missing:
        raise ValueError(
            f"adl takes drop_rate, gamma (both required) and positions (optional); "
            f"{'unknown: ' + ', '.join(unknown) if unknown else 'missing: ' + ', '.join(missing)}"
        )
    positions = option.get("positions")
    if isinstance(positions, str):
        raise ValueError(f"adl positions must be a list of layer names, got {positions!r}")
    return {
        "positions": tuple(ADL_POSITIONS[model_name] if positions is None else positions),
        "drop_rate": float(option["drop_rate"]),  # type: ignore[arg-type]
        "gamma": float(option["gamma"]),  # type: ignore[arg-type]
    }
