"""Per-channel input normalisation in front of a model that expects normalised inputs.

curvext measures curvature, attacks and clamps in the space the model is given, and the CLI's
images are in ``[0, 1]``. A torchvision model trained on ImageNet expects
``(x - mean) / std`` instead; :class:`Normalized` puts that step inside the model, so curvatures,
perturbation norms and the ``[0, 1]`` range all refer to the images themselves.
"""
from __future__ import annotations

import math

import torch
from torch import nn

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Normalized(nn.Module):
    """``model((x - mean) / std)`` with per-channel ``mean``, ``std`` (sequences of length C, or
    one number for every channel). Input ``(B, C, H, W)`` in ``[0, 1]``; output the model's."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"mean and std must have the same length >= 1, got {mean!r} and {std!r}")
        finite = bool(torch.isfinite(mean_t).all()) and bool(torch.isfinite(std_t).all())
        if not finite or not bool((std_t > 0).all()):
            raise ValueError(f"mean must be finite and std positive and finite, got {mean!r} and {std!r}")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"Normalized has {self.mean.shape[1]} channel statistics, "
                             f"the images {x.shape[1]} channels")
        return self.model((x - self.mean) / self.std)


def parse_normalization(text: str):
    """``"none"`` -> None; ``"imagenet"`` -> :data:`IMAGENET`; ``"m1,m2,m3/s1,s2,s3"`` (or
    ``"m/s"``) -> ``(means, stds)``. Raises ValueError naming the expected forms."""
    text = text.strip().lower()
    if text == "none":
        return None
    if text == "imagenet":
        return IMAGENET
    expected = "none, imagenet or MEAN[,MEAN...]/STD[,STD...]"
    try:
        mean_text, std_text = text.split("/")
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        raise ValueError(f"expected {expected}, got {text!r}") from None
    if (len(mean) != len(std) or any(not math.isfinite(m) for m in mean)
            or any(not (s > 0 and math.isfinite(s)) for s in std)):
        raise ValueError(f"expected {expected} with finite means and as many positive finite stds, got {text!r}")
    return mean, std
