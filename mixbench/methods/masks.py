"""Pure mask functions of the input-space cutting methods (FMix, GridMix, SmoothMix, SaliencyMix).

Every mask here is the per-pixel share of the *second* source ``x[perm]`` in the mixed image, shaped
``(1 or B, 1, H, W)`` and in [0, 1], so that a method's label ratio (the share of ``y``) is ``1 - mean(mask)``
and its mixed batch is :func:`blend`.  Boxes drawn from a Python-side centre use ``sample_box`` / ``box_mask``
of :mod:`mixbench.methods.cutmix`; :func:`centred_box_masks` is the same clipping rule for centres that are
tensors on the device (one box per sample).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blend(x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1 - mask) * x + mask * source``: ``mask`` is the share of ``source`` (exact for binary masks)."""
    return (1.0 - mask) * x + mask * source


def label_ratio(mask: torch.Tensor) -> torch.Tensor:
    """The share of the first source per mask: ``1 - mean(mask)`` over (1, H, W), shape (1 or B,)."""
    return 1.0 - mask.mean(dim=(1, 2, 3))


def fourier_noise(
    height: int,
    width: int,
    decay_power: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Low-frequency noise (H, W): Gaussian Fourier coefficients times ``1 / max(|f|, 1/max(H, W))^decay``.

    The coefficients of the half spectrum (``rfft`` layout) are ``a + i b`` with ``a, b ~ N(0, 1)``; the real
    inverse FFT of the scaled spectrum is the noise image (FMix's sampler).
    """
    freq_y = torch.fft.fftfreq(height, device=device)[:, None]
    freq_x = torch.fft.rfftfreq(width, device=device)[None, :]
    radius = torch.sqrt(freq_y**2 + freq_x**2)
    scale = radius.clamp_min(1.0 / max(height, width)).pow(-decay_power)
    coefficients = torch.randn(2, height, width // 2 + 1, generator=generator, device=device)
    spectrum = torch.complex(coefficients[0], coefficients[1]) * scale
    return torch.fft.irfft2(spectrum, s=(height, width))


def keep_top_pixels_mask(noise: torch.Tensor, num_kept: int) -> torch.Tensor:
    """(1, 1, H, W) binary mask: 0 at the ``num_kept`` largest values of ``noise`` (H, W), 1 elsewhere."""
    flat = torch.ones(noise.numel(), device=noise.device)
    kept = torch.topk(noise.flatten(), k=num_kept).indices
    flat.index_fill_(0, kept, 0.0)  # not flat[kept] = 0.0: that copies the number from the host (a sync)
    return flat.view(1, 1, *noise.shape)


def grid_cells_mask(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W) mask that repeats each entry of the (n_y, n_x) ``cells`` over its grid cell.

    Pixel row ``i`` belongs to cell row ``floor(i * n_y / H)`` (nearest-neighbour upsampling), so the cells
    tile the image exactly even when ``H`` is not a multiple of ``n_y``.
    """
    return F.interpolate(cells[None, None].float(), size=(height, width), mode="nearest")


def gaussian_mask(
    height: int,
    width: int,
    centre_y: float,
    centre_x: float,
    sigma_y: float,
    sigma_x: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(1, 1, H, W) ``exp(-((i - cy)^2 / (2 sy^2) + (j - cx)^2 / (2 sx^2)))``: 1 at the centre."""
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    exponent = (rows - centre_y) ** 2 / (2 * sigma_y**2) + (cols - centre_x) ** 2 / (2 * sigma_x**2)
    return torch.exp(-exponent)[None, None]


def centred_box_masks(
    centre_y: torch.Tensor,
    centre_x: torch.Tensor,
    cut_h: int,
    cut_w: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """(B, 1, H, W) binary masks of boxes centred at the (B,) integer tensors ``centre_y``, ``centre_x``.

    CutMix's rule (``cutmix.sample_box``): rows ``[cy - cut_h // 2, cy + cut_h // 2)`` and the same for
    columns, clipped to the image; built with comparisons on the device, without reading the centres back.
    """
    top = (centre_y - cut_h // 2).clamp(0, height)[:, None]
    bottom = (centre_y + cut_h // 2).clamp(0, height)[:, None]
    left = (centre_x - cut_w // 2).clamp(0, width)[:, None]
    right = (centre_x + cut_w // 2).clamp(0, width)[:, None]
    rows = torch.arange(height, device=centre_y.device)[None, :]
    cols = torch.arange(width, device=centre_x.device)[None, :]
    inside_rows = (rows >= top) & (rows < bottom)
    inside_cols = (cols >= left) & (cols < right)
    return (inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1).float()


def cut_size(height: int, width: int, lam: float) -> tuple[int, int]:
    """CutMix's box size for label ratio ``lam``: ``(int(H sqrt(1 - lam)), int(W sqrt(1 - lam)))``."""
    cut = math.sqrt(1.0 - lam)
    return int(height * cut), int(width * cut)
