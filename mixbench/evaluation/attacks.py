"""Adversarial robustness (../shared/reference/RECIPES.md, "Evaluation protocols"): top-1 error of a
classifier on images perturbed by FGSM and PGD within an L-infinity ball, in [0, 1] pixel space.

The attacks see a model that takes images in [0, 1]: :class:`NormalizedModel` puts the data normalisation
inside it, ``x -> f((x - mean) / std)``, so that ``eps`` is measured in pixels (8/255 is 8 grey levels)
whatever the mean and standard deviation of the data.  With ``L(x) = CE(f(x), y)``, the cross-entropy
averaged over the batch, ``g = grad_x L(x)`` and ``clip(v) = min(max(v, 0), 1)`` elementwise:

* **FGSM**, the fast gradient sign method of Goodfellow, Shlens & Szegedy, "Explaining and Harnessing
  Adversarial Examples" (ICLR 2015): one step of size ``eps`` (8/255), no random start::

      x' = clip(x + eps * sign(g(x)))

* **PGD**, projected gradient descent of Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning
  Models Resistant to Adversarial Attacks" (ICLR 2018): a uniform random start in the ball, then ``T`` (20)
  signed steps of size ``alpha`` (2/255), each projected back to the ball of radius ``eps`` (4/255) around
  the clean image ``x_0`` and to [0, 1]::

      x^0     = clip(x_0 + u),   u ~ U[-eps, eps]^d
      x^{t+1} = clip(x_0 + clamp(x^t + alpha * sign(g(x^t)) - x_0, -eps, eps))

Both follow torchattacks 3.3.0 (``torchattacks.FGSM``, ``torchattacks.PGD``) operation for operation, so
that they return the same images bit for bit: the random start is ``torch.empty_like(x).uniform_(-eps, eps)``,
drawn from torch's global generator (seed it as for torchattacks) or from a given ``torch.Generator``.  Since
the sign of the mean's gradient is the sign of each sample's own gradient, every image of a batch is
attacked as if it were alone.

Model state: the model is put in eval mode for the attack (batch norm with running statistics, no dropout)
and every submodule's previous mode is restored afterwards; the parameters' ``requires_grad`` is left as it
is, and the gradient is taken with respect to the input only, so no parameter's ``.grad`` changes.

Precision: under autocast (e.g. bf16 on a GPU) the forward pass that gives the gradient runs with autocast
disabled (``torch.autocast(device_type, enabled=False)``) on an fp32 copy of the input, so the gradient
and its signs are fp32 (a bf16 gradient can flip the sign of its small entries).  The predictions that
:func:`adversarial_error` counts run under whatever autocast the caller set.

:func:`adversarial_error` attacks every batch of an iterable and reports the top-1 error (%) on the clean
and on the adversarial images; it counts on the device and reads the two totals once, at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTACKS",
    "FGSM_EPS",
    "PGD_ALPHA",
    "PGD_EPS",
    "PGD_STEPS",
    "NormalizedModel",
    "adversarial_error",
    "evaluation_mode",
    "fgsm",
    "input_gradient",
    "pgd",
]

FGSM_EPS = 8 / 255
"""The radius of the FGSM step in [0, 1] pixel space."""

PGD_EPS = 4 / 255
"""The radius of the PGD ball in [0, 1] pixel space."""

PGD_ALPHA = 2 / 255
"""The size of each PGD step."""

PGD_STEPS = 20
"""The number of PGD steps."""


class NormalizedModel(nn.Module):
    """``x -> model((x - mean) / std)``: a classifier of normalised images as one of images in [0, 1].

    ``mean`` and ``std`` hold one value per channel of ``(N, C, H, W)`` images; they are kept as
    non-persistent float32 buffers (they follow ``.to(device)`` but stay out of the state dict).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or mean.shape != std.shape:
            raise ValueError(f"need one mean and one std per channel, got {mean.numel()} and {std.numel()}")
        if not bool((std > 0).all()):
            raise ValueError(f"std must be positive, got {std.tolist()}")
        self.model = model
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.reshape(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then give every submodule back its own previous mode
    (so that a model in training with some frozen, eval-mode submodules comes back exactly as it was)."""
    previous_modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in previous_modes:
            module.training = was_training


def input_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """``grad_x CE(model(x), y)`` at ``x = images``, the cross-entropy averaged over the batch, in fp32.

    The forward pass runs with autocast disabled on an fp32 copy of ``images`` and under ``enable_grad``
    (the caller may be in ``no_grad``); only the input's gradient is computed, so the parameters' ``.grad``
    are left as they were.  Call it outside inference mode (the attacks below make sure of that).
    """
    with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
        inputs = images.detach().to(torch.float32).requires_grad_(True)
        loss = F.cross_entropy(model(inputs).float(), labels)
        (gradient,) = torch.autograd.grad(loss, inputs)
    return gradient


def _check_batch(images: Tensor, labels: Tensor) -> None:
    if images.ndim == 0 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        shapes = f"{tuple(images.shape)} and {tuple(labels.shape)}"
        raise ValueError(f"need images (N, ...) and labels (N,), got shapes {shapes}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")


def _check_radius(name: str, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def fgsm(model: nn.Module, images: Tensor, labels: Tensor, eps: float = FGSM_EPS) -> Tensor:
    """FGSM images ``clip(x + eps * sign(grad_x CE))`` (detached, fp32) for images in [0, 1].

    ``model`` takes images in [0, 1] (see :class:`NormalizedModel`); ``images`` and ``labels`` lie on its
    device.  Equal bit for bit to ``torchattacks.FGSM(model, eps)(images, labels)`` for fp32 images.
    """
    _check_batch(images, labels)
    _check_radius("eps", eps)
    with torch.inference_mode(False), evaluation_mode(model):
        clean = images.detach().to(torch.float32).clone()
        labels = labels.detach().clone()
        gradient = input_gradient(model, clean, labels)
        adversarial = clean + eps * gradient.sign()
        return torch.clamp(adversarial, min=0, max=1).detach()


def pgd(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float = PGD_EPS,
    alpha: float = PGD_ALPHA,
    steps: int = PGD_STEPS,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD images (detached, fp32) in the L-infinity ball of radius ``eps`` around ``images`` and in [0, 1].

    ``model`` takes images in [0, 1] (see :class:`NormalizedModel`); ``images`` and ``labels`` lie on its
    device.  With ``random_start`` the start is ``clip(x + torch.empty_like(x).uniform_(-eps, eps))``, drawn
    from ``generator`` (on the images' device) or, when it is None, from torch's global generator, so that
    the same ``torch.manual_seed`` before this call and before ``torchattacks.PGD(model, eps, alpha, steps,
    random_start=True)(images, labels)`` gives the same images bit for bit (fp32 images).
    """
    _check_batch(images, labels)
    _check_radius("eps", eps)
    _check_radius("alpha", alpha)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    with torch.inference_mode(False), evaluation_mode(model):
        clean = images.detach().to(torch.float32).clone()
        labels = labels.detach().clone()
        adversarial = clean.clone()
        if random_start:
            start = torch.empty_like(adversarial).uniform_(-eps, eps, generator=generator)
            adversarial = torch.clamp(adversarial + start, min=0, max=1)
        for _ in range(steps):
            gradient = input_gradient(model, adversarial, labels)
            adversarial = adversarial.detach() + alpha * gradient.sign()
            delta = torch.clamp(adversarial - clean, min=-eps, max=eps)
            adversarial = torch.clamp(clean + delta, min=0, max=1)
        return adversarial.detach()


Attack = Callable[..., Tensor]
"""``attack(model, images, labels, **options) -> adversarial images``, like :func:`fgsm` and :func:`pgd`."""

ATTACKS: dict[str, Attack] = {"fgsm": fgsm, "pgd": pgd}
"""The attacks of the protocol by name, with the protocol's parameters as defaults."""


def adversarial_error(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    attack: Attack | str,
    *,
    device: torch.device | str | None = None,
    **attack_options,
) -> dict[str, float | int]:
    """Top-1 error (%) of ``model`` on the clean images and on their adversarial versions.

    ``batches`` yields ``(images in [0, 1], labels)``, moved to ``device`` (default: that of the model's
    first parameter, else the CPU) with ``non_blocking=True`` (pin the loader's memory for an asynchronous
    copy).  ``attack`` is a name of :data:`ATTACKS` or a function ``attack(model, images, labels,
    **attack_options)``; the model stays in eval mode throughout and gets its modes back at the end.  The
    wrong predictions are summed on the device and read once::

        {"clean_error": 100 * wrong_clean / N, "adversarial_error": 100 * wrong_adversarial / N, "images": N}
    """
    if isinstance(attack, str):
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {sorted(ATTACKS)}")
        attack = ATTACKS[attack]
    if device is None:
        first_parameter = next(model.parameters(), None)
        device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    wrong = torch.zeros(2, dtype=torch.long, device=device)  # [clean, adversarial]
    image_count = 0
    with evaluation_mode(model):
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            adversarial = attack(model, images, labels, **attack_options)
            with torch.no_grad():
                clean_predictions = model(images).argmax(dim=1)
                adversarial_predictions = model(adversarial).argmax(dim=1)
            wrong[0] += (clean_predictions != labels).sum()
            wrong[1] += (adversarial_predictions != labels).sum()
            image_count += labels.shape[0]
    if image_count == 0:
        raise ValueError("adversarial_error needs at least one image, got no batches or only empty ones")
    clean_wrong, adversarial_wrong = wrong.tolist()
    return {
        "clean_error": 100.0 * clean_wrong / image_count,
        "adversarial_error": 100.0 * adversarial_wrong / image_count,
        "images": image_count,
    }
