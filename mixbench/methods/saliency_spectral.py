"""Spectral-residual saliency (Hou & Zhang, "Saliency Detection: A Spectral Residual Approach", CVPR 2007),
batched in torch on the batch's device: the saliency SaliencyMix centres its box on.

For each image, at a working resolution of at most 64 x 64 (the paper's and OpenCV's 64; smaller images are
used as they are):

    g = grey(x)                         (ITU-R 601 luma of RGB; the channel mean for other channel counts)
    F = FFT(g),   L = log(|F| + 0.01 * mean|F|),   phase = angle(F)
    R = L - box3x3(L)                   (the spectral residual; 3x3 mean filter, reflected border)
    s = |IFFT(exp(R + i * phase))|^2
    S = gauss(s) / max(gauss(s))        (5 taps, sigma 8 at 64 px, scaled with the working size;
                                         resized back to H x W, bilinear)

What the official SaliencyMix computes: its ``saliency_bbox`` calls OpenCV's
``StaticSaliencyFineGrained`` (Montabone & Soto 2010, a centre-surround detector on intensity), not the
spectral residual, and calls it on the batch tensor as the model receives it: the normalised float32 image
(after ``ToTensor`` and ``Normalize``, values roughly in [-2, 2]) transposed to H x W x C, of one source for
the whole batch (see :mod:`mixbench.methods.saliencymix`).  That detector is written for 8-bit images: its
source converts the input to grey (which keeps float32) and then reads the grey pixels as bytes
(``at<uchar>``).  On float input its peak does not find the object: measured with opencv-contrib-python 5.1
on 20 images of 32 px (Gaussian noise, std 0.3, plus one 8 x 8 square brighter by 2), the peak of the
official float call lies in the square 1 time in 20 (chance: 1.25), on the same images as 8-bit 10 times
in 20.  METHODS.md specifies spectral-residual saliency computed in torch on the device, and that is what
this module computes, on the image's values (any scale: the residual is invariant to it).  Its differences
from OpenCV's implementation of the same algorithm, ``StaticSaliencySpectralResidual``:

* OpenCV resizes every image to 64 x 64, also upwards (32 px CIFAR images are upsampled).  Upsampling leaves
  the new high frequencies almost empty; their erratic log amplitudes then dominate the residual and put the
  peak on the image border (measured: on 16 px images with one bright square on a noisy background, the
  upsampled variant finds the square 1-4 times in 20, the native-size one 20 in 20).  We only downsample.
* The amplitude inside the log: we use ``log(|F| + 0.01 * mean|F|)``; the paper writes ``log|F|``, and
  OpenCV computes ``log(|F| + 1)`` (its current source; older releases took ``log|F|``).  OpenCV's ``+ 1`` is
  in the image's units, so how much it floors depends on the input's scale (0-255 or normalised floats);
  ours is relative to the spectrum, 1% of its mean amplitude.  Without any floor, images with exact
  spectral zeros (flat backgrounds, synthetic shapes) get huge negative log amplitudes that dominate the
  residual and produce ghost peaks away from the object.
* OpenCV Gaussian-blurs the magnitude and squares afterwards; we square first, as the paper does.
* OpenCV converts to grey as BGR (both detectors do); applied to the RGB tensors of the official code this
  swaps the red and blue weights; we weight RGB as RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
WORK_SIZE = 64  # the paper's and OpenCV's working resolution (OpenCV: resImWidth / resImHeight)
BLUR_SIZE, BLUR_SIGMA = 5, 8.0  # OpenCV's GaussianBlur(Size(5, 5), 8) on the 64 x 64 map
AMPLITUDE_FLOOR = 0.01  # of the mean amplitude, inside the log


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images, or the channel mean when there are not 3 channels."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    # one fill per weight: no host-to-device copy (which would wait for the kernels queued before it)
    luma = [torch.full((), weight, device=images.device, dtype=images.dtype) for weight in LUMA_WEIGHTS]
    weights = torch.stack(luma).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def box_blur_3x3(maps: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter of (B, 1, H, W) maps with a reflected border (OpenCV's BORDER_REFLECT_101)."""
    kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0, device=maps.device, dtype=maps.dtype)
    return F.conv2d(F.pad(maps, (1, 1, 1, 1), mode="reflect"), kernel)


def gaussian_blur(maps: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps, ``size`` taps, reflected border."""
    offsets = torch.arange(size, device=maps.device, dtype=maps.dtype) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    taps = taps / taps.sum()
    half = size // 2
    padded = F.pad(maps, (half, half, half, half), mode="reflect")
    return F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, size)), taps.view(1, 1, size, 1))


def to_working_size(maps: torch.Tensor, work_size: int) -> torch.Tensor:
    """Bilinear downsampling of (B, 1, H, W) maps so that no side exceeds ``work_size`` (never upsampling)."""
    height, width = maps.shape[-2:]
    size = (min(height, work_size), min(width, work_size))
    if size == (height, width):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def spectral_residual(maps: torch.Tensor) -> torch.Tensor:
    """``|IFFT(exp(R + i phase))|^2`` of (B, 1, h, w) grey maps, R the log amplitude minus its 3x3 mean."""
    spectrum = torch.fft.fft2(maps)
    amplitude = spectrum.abs()
    floor = AMPLITUDE_FLOOR * amplitude.mean(dim=(2, 3), keepdim=True)
    log_amplitude = torch.log(amplitude + floor + torch.finfo(amplitude.dtype).tiny)
    residual = log_amplitude - box_blur_3x3(log_amplitude)
    return torch.fft.ifft2(torch.polar(torch.exp(residual), spectrum.angle())).abs() ** 2


@torch.no_grad()
def spectral_residual_saliency(images: torch.Tensor, work_size: int = WORK_SIZE) -> torch.Tensor:
    """(B, H, W) saliency maps in [0, 1] (each divided by its maximum) of (B, C, H, W) images.

    Runs in float32 with autocast off: the blurs are convolutions, which autocast would run in half precision.
    """
    height, width = images.shape[-2:]
    with torch.autocast(images.device.type, enabled=False):
        small = to_working_size(grey(images.float()), work_size)
        sigma = BLUR_SIGMA * max(small.shape[-2:]) / WORK_SIZE
        smooth = gaussian_blur(spectral_residual(small), sigma=sigma)
        smooth = smooth / smooth.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(smooth.dtype).tiny)
        full = F.interpolate(smooth, size=(height, width), mode="bilinear", align_corners=False)
    return full[:, 0]


def saliency_peaks(saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) int64 tensors (B,) of each map's maximum (the first one in raster order on ties)."""
    width = saliency.shape[-1]
    flat_index = saliency.flatten(1).argmax(dim=1)
    return torch.div(flat_index, width, rounding_mode="floor"), flat_index % width
