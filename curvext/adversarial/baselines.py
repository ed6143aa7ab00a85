"""Training-free detection baselines, scored so that **higher = more likely perturbed**
(the convention of :mod:`curvext.detection.metrics`).

* :func:`max_softmax_score`: ``1 − max_k softmax(f(x))_k`` in ``[0, 1 − 1/L]`` (Hendrycks &
  Gimpel 2017). Minimal attacks (DeepFool) end on the boundary with low confidence and are caught;
  high-confidence attacks (PGD, CW with κ > 0) are not: that is the point of the comparison.
* :func:`feature_squeezing_score` (Xu, Evans, Qi 2018): the largest L1 distance between the
  softmax of ``x`` and that of a squeezed copy, over two squeezers: bit-depth reduction and a 2x2
  median filter. Range ``[0, 2]``.
* :func:`runner_up_labels`: a training-free baseline for label *recovery*: the class the model
  ranks second. A minimal attack crosses into the nearest region, so the original class is often
  the runner-up; curvature's recovery has to beat this rule to be worth its cost.

Inputs: ``model`` maps ``(B, C, H, W)`` float in ``[0, 1]`` to logits ``(B, L)`` (eval mode);
outputs are ``(B,)`` float tensors on the input's device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from curvext.utils.model_checks import check_images, require_eval

__all__ = ["max_softmax_score", "runner_up_labels", "bit_depth_reduce", "median_filter_2x2",
           "FeatureSqueezing", "feature_squeezing_score"]


@torch.no_grad()
def _softmax(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    require_eval(model)
    return torch.cat([F.softmax(model(x[i:i + batch_size]).float(), dim=1)
                      for i in range(0, x.shape[0], batch_size)])


def max_softmax_score(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """``1 − max softmax probability`` per image, ``(B,)`` in ``[0, 1 − 1/L]``; higher = less
    confident = more likely perturbed."""
    check_images(x)
    return 1.0 - _softmax(model, x, batch_size).amax(1)


@torch.no_grad()
def runner_up_labels(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """The class with the second-highest logit per image, ``(B,)`` int64 (ties: the lower index)."""
    check_images(x)
    require_eval(model)
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if logits.shape[1] < 2:
        raise ValueError(f"model must output at least 2 logits, got {logits.shape[1]}")
    return logits.topk(2, dim=1).indices[:, 1]


def bit_depth_reduce(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantise ``[0, 1]`` values to ``2**bits`` levels: ``round(x·(2^b − 1)) / (2^b − 1)``
    (round half to even)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def median_filter_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 median filter per channel, ``(B, C, H, W)`` → same shape, matching
    ``scipy.ndimage.median_filter(x, size=(1, 1, 2, 2))`` (the reference implementation of Xu et
    al.): window at offsets ``{-1, 0}²``, edges replicated, and of the four values the
    upper median (third smallest)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    padded = F.pad(x, (1, 0, 1, 0), mode="replicate")
    windows = padded.unfold(2, 2, 1).unfold(3, 2, 1).flatten(-2)  # (B, C, H, W, 4)
    return windows.sort(dim=-1).values[..., 2]


@dataclass(frozen=True)
class FeatureSqueezing:
    """Feature-squeezing scores, each ``(B,)`` float in ``[0, 2]``.

    Attributes:
        score: ``max(bit_depth, median)``, the detection score.
        bit_depth: ``‖softmax(x) − softmax(bit_depth_reduce(x))‖₁``.
        median: ``‖softmax(x) − softmax(median_filter_2x2(x))‖₁``.
    """

    score: torch.Tensor
    bit_depth: torch.Tensor
    median: torch.Tensor


def feature_squeezing_score(model: nn.Module, x: torch.Tensor, *, bits: int = 1,
                            batch_size: int = 512) -> FeatureSqueezing:
    """Feature squeezing with bit-depth reduction to ``bits`` bits (default 1: Xu et al.'s
    setting for MNIST; use 4-5 for natural images) and a 2x2 median filter."""
    check_images(x)
    p = _softmax(model, x, batch_size)
    d_bits = (p - _softmax(model, bit_depth_reduce(x, bits), batch_size)).abs().sum(1)
    d_med = (p - _softmax(model, median_filter_2x2(x), batch_size)).abs().sum(1)
    return FeatureSqueezing(torch.maximum(d_bits, d_med), d_bits, d_med)
