"""How often a calibrated detector flags benign noise: its clean calibration images plus
Gaussian noise of one 8-bit grey level (``BENIGN_SIGMA`` = 1/255, clipped to the input range).

A detector that flags many such images reacts to any perturbation, not to adversarial ones, so
its detection rates say little; e.g. fd/fd2 at a scale h so small that clean images sit on ties
of max-pooling (exactly black backgrounds), which any noise breaks (docs/method.md §8)."""
from __future__ import annotations

import torch

BENIGN_SIGMA = 1.0 / 255.0


def benign_noise(x: torch.Tensor, seed: int, input_range: tuple | None = (0.0, 1.0),
                 sigma: float = BENIGN_SIGMA) -> torch.Tensor:
    """``x (N, C, H, W)`` plus Gaussian noise of standard deviation ``sigma``, clipped to
    ``input_range`` (None: not clipped); deterministic in ``seed``, same dtype and device."""
    g = torch.Generator().manual_seed(int(seed) + 7919)  # a stream of its own, apart from the directions'
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    noisy = x.detach() + sigma * noise
    return noisy if input_range is None else noisy.clamp(*input_range)


def reacts_to_benign_noise(rate: float, fpr: float | None) -> bool:
    """Whether a benign-noise flag rate is far above the target false-positive rate: three times
    it and at least 10 points above (binomial spread on ~100 calibration images stays below)."""
    target = 0.05 if fpr is None else fpr
    return rate > max(3 * target, target + 0.10)
