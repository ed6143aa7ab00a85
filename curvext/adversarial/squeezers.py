"""Feature squeezers of Xu, Evans and Qi (2018, "Feature squeezing: detecting adversarial examples
in deep neural networks") and their per-dataset settings.

Images are ``(B, C, H, W)`` float in ``[0, 1]``; every squeezer returns the same shape and dtype.

* :func:`bit_depth_reduce`: ``2**bits`` grey levels per channel.
* :func:`median_filter`: ``k x k`` median per channel (scipy's window and edge rule).
* :func:`non_local_means`: pixel-wise non-local means with a square search window, square
  patches and filter strength ``h`` on the 0-255 scale, the parameters of OpenCV's
  ``fastNlMeansDenoising`` that Xu et al. use ("13-3-2": search window 13, patch 3, h = 2).
  Computed on the image's own channels (OpenCV's colour variant works in CIELAB), so it follows
  their filter, not OpenCV's output to the bit.

Xu et al. tune the squeezers per dataset (their Table 3): MNIST 1-bit depth and a 2x2 median;
CIFAR-10 5-bit depth, 2x2 median and non-local means 13-3-2; ImageNet 5-bit depth, 2x2 median
and non-local means 11-3-4. :func:`squeezer_for` picks among those by dataset, with 5 bits and a
2x2 median for greyscale images that are not digits (e.g. Fashion-MNIST; Xu et al. have no such
dataset and apply non-local means to colour images only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Squeezer", "SQUEEZERS", "bit_depth_reduce", "median_filter", "median_filter_2x2", "non_local_means",
           "squeezer_for"]


def bit_depth_reduce(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise ``[0, 1]`` values to ``2**bits`` levels: ``round(x·(2^b − 1)) / (2^b − 1)``
    (round half to even)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size x size`` median filter per channel, ``(B, C, H, W)`` → same shape, matching
    ``scipy.ndimage.median_filter(x, size=(1, 1, size, size))`` for ``size`` 2 and 3 (the
    reference implementation of Xu et al.): window at offsets ``-(size // 2) .. size - 1 - size // 2``,
    edges replicated (scipy's "reflect" for a one-pixel border), and of an even count of values
    the upper median."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= 3:
        raise ValueError(f"size must be 2 or 3, got {size!r}")
    before, after = size // 2, size - 1 - size // 2
    padded = F.pad(x, (before, after, before, after), mode="replicate")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1).flatten(-2)  # (B, C, H, W, size^2)
    return windows.sort(dim=-1).values[..., size * size // 2]


def median_filter_2x2(x: torch.Tensor) -> torch.Tensor:
    """:func:`median_filter` with ``size=2``."""
    return median_filter(x, 2)


def non_local_means(x: torch.Tensor, search: int, patch: int, strength: float) -> torch.Tensor:
    """Non-local means: each pixel becomes the weighted mean of the pixels ``q`` of the
    ``search x search`` window around it, with weights ``exp(-d(p, q) / strength^2)``, where
    ``d`` is the squared difference of the ``patch x patch`` patches around ``p`` and ``q``,
    averaged over the patch and the channels, on the 0-255 scale. Borders are mirrored
    (``reflect``). ``search`` and ``patch`` are odd; ``strength`` > 0."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    for value, name in ((search, "search"), (patch, "patch")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
            raise ValueError(f"{name} must be an odd positive int, got {value!r}")
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength!r}")
    r, p = search // 2, patch // 2
    H, W = x.shape[-2:]
    if r + p >= min(H, W):
        raise ValueError(f"search {search} and patch {patch} need images larger than {r + p} pixels, "
                         f"got {H}x{W}")
    scaled = x * 255.0
    padded = F.pad(scaled, (r + p,) * 4, mode="reflect")
    core = padded[..., r : r + H + 2 * p, r : r + W + 2 * p]  # the image with its patch border
    total = torch.zeros_like(x)
    weights = torch.zeros_like(x[:, :1])
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = padded[..., r + dy : r + dy + H + 2 * p, r + dx : r + dx + W + 2 * p]
            sq = (core - shifted).pow(2).mean(dim=1, keepdim=True)  # (B, 1, H + 2p, W + 2p)
            d = F.avg_pool2d(sq, patch, stride=1)  # mean over the patch: (B, 1, H, W)
            w = torch.exp(-d / strength**2)
            total = total + w * shifted[..., p : p + H, p : p + W]
            weights = weights + w
    return total / weights / 255.0


@dataclass(frozen=True)
class Squeezer:
    """Settings of feature squeezing: ``bits`` of the bit-depth reduction, ``median`` the size
    of the median filter (0: none), ``nlm`` ``(search, patch, strength)`` of non-local means or
    None. The score is the largest L1 distance between the softmax of an image and that of each
    squeezed copy."""

    bits: int = 1
    median: int = 2
    nlm: tuple | None = None

    def __post_init__(self):
        bit_depth_reduce(torch.zeros(1), self.bits)  # validates bits
        if self.median not in (0, 2, 3):
            raise ValueError(f"median must be 0 (none), 2 or 3, got {self.median!r}")
        if self.nlm is not None:
            search, patch, strength = self.nlm
            object.__setattr__(self, "nlm", (int(search), int(patch), float(strength)))

    def squeezed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The squeezed copies of ``x``, one per squeezer."""
        out = [bit_depth_reduce(x, self.bits)]
        if self.median:
            out.append(median_filter(x, self.median))
        if self.nlm is not None:
            out.append(non_local_means(x, *self.nlm))
        return out

    def describe(self) -> str:
        """E.g. ``"1-bit depth, 2x2 median"``."""
        parts = [f"{self.bits}-bit depth"]
        if self.median:
            parts.append(f"{self.median}x{self.median} median")
        if self.nlm is not None:
            parts.append("non-local means {}-{}-{:g}".format(*self.nlm))
        return ", ".join(parts)


#: Xu et al.'s settings (their Table 3), and the greyscale one curvext adds.
SQUEEZERS = {
    "digits": Squeezer(1, 2, None),  # MNIST
    "cifar": Squeezer(5, 2, (13, 3, 2.0)),  # CIFAR-10: small colour images
    "imagenet": Squeezer(5, 2, (11, 3, 4.0)),  # ImageNet: large colour images
    "greyscale": Squeezer(5, 2, None),  # natural greyscale images (Fashion-MNIST); no Xu et al. setting
}
DIGIT_DATASETS = ("digits", "mnist", "emnist", "kmnist", "qmnist")


def squeezer_for(dataset: str, channels: int, image_size: int) -> tuple[str, Squeezer]:
    """``(preset name, Squeezer)`` for a dataset: digits (``DIGIT_DATASETS``) → Xu et al.'s MNIST
    setting; other greyscale images → 5 bits and a 2x2 median; colour images below 64 pixels →
    their CIFAR-10 setting, larger ones → their ImageNet setting."""
    if dataset.lower() in DIGIT_DATASETS:
        return "digits", SQUEEZERS["digits"]
    if channels == 1:
        return "greyscale", SQUEEZERS["greyscale"]
    name = "imagenet" if image_size >= 64 else "cifar"
    return name, SQUEEZERS[name]
