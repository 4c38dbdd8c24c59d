"""The run's random number generators.

Every random choice of a mixing method (lam, pairing permutation, box position, stage) comes from one
:class:`MixRandom` owned by the run, so the same seed gives the same mixed batches.  Scalars come from a
NumPy generator (NumPy has a Beta sampler that takes a generator; torch's does not); tensors such as the
pairing permutation are drawn on the device with a ``torch.Generator`` so that no host-device copy is
needed.  The trainer reseeds both at the start of every epoch from ``(seed, epoch)``, which makes a resumed
run identical to an uninterrupted one without storing generator states in the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (e.g. run seed, epoch, stream id)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]) >> 1


class MixRandom:
    """A NumPy generator for scalars and a torch generator on ``device`` for tensors."""

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.torch = torch.Generator(device=self.device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.numpy = np.random.default_rng(seed)
        self.torch.manual_seed(seed)

    def beta(self, alpha: float, size: int | None = None) -> float | np.ndarray:
        """lam ~ Beta(alpha, alpha)."""
        return self.numpy.beta(alpha, alpha, size)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return float(self.numpy.uniform(low, high))

    def integer(self, low: int, high: int) -> int:
        """An integer in ``[low, high)``."""
        return int(self.numpy.integers(low, high))

    def choice(self, options: list, p: list[float] | None = None):
        return options[int(self.numpy.choice(len(options), p=p))]

    def permutation(self, n: int) -> torch.Tensor:
        """A random pairing of the batch, drawn on the device (``randperm``, not ``flip``)."""
        return torch.randperm(n, generator=self.torch, device=self.device)
