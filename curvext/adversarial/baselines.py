"""Training-free detection baselines, scored so that **higher = more likely perturbed**
(the convention of :mod:`curvext.detection.metrics`).

* :func:`max_softmax_score`: ``1 − max_k softmax(f(x))_k`` in ``[0, 1 − 1/L]`` (Hendrycks &
  Gimpel 2017). Minimal attacks (DeepFool) end on the boundary with low confidence and are caught;
  high-confidence attacks (PGD, CW with κ > 0) are not: that is the point of the comparison.
* :func:`logit_margin_score`: ``z_(2) − z_(1)``, the runner-up logit minus the top one (``≤ 0``):
  the distance to the boundary in logit units, without the softmax's saturation.
* :func:`noise_consistency_score`: the drop of the predicted class's probability under Gaussian
  noise, ``p_k̂(x) − mean_s p_k̂(clip(x + σ ε_s))``: adversarial images sit in thin regions that
  random noise leaves more often than clean images do (in the spirit of Hu et al. 2019, "A new
  defense against adversarial images: turning a weakness into a strength", and Roth et al. 2019,
  "The odds are odd"). Range ``[-1, 1]``.
* :func:`feature_squeezing_score` (Xu, Evans, Qi 2018): the largest L1 distance between the
  softmax of ``x`` and that of a squeezed copy (:mod:`curvext.adversarial.squeezers`: bit depth,
  median filter, non-local means, set per dataset by :func:`~curvext.adversarial.squeezers.squeezer_for`).
  Range ``[0, 2]``.
* :func:`runner_up_labels`: a training-free baseline for label *recovery*: the class the model
  ranks second. A minimal attack crosses into the nearest region, so the original class is often
  the runner-up; curvature's recovery has to beat this rule to be worth its cost.
* :func:`differentiable_baselines`: the four scores with the autograd graph kept (feature
  squeezing's squeezers passed straight through, BPDA: Athalye et al. 2018), for attacks that
  evade them.

Inputs: ``model`` maps ``(B, C, H, W)`` float in ``[0, 1]`` to logits ``(B, L)`` (eval mode);
outputs are ``(B,)`` float tensors on the input's device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from curvext.adversarial.squeezers import Squeezer, bit_depth_reduce, median_filter_2x2
from curvext.utils.model_checks import check_images, require_eval
from curvext.utils.reprs import ShortRepr
from curvext.utils.validation import require_positive_int

__all__ = ["max_softmax_score", "logit_margin_score", "noise_consistency_score", "runner_up_labels",
           "bit_depth_reduce", "median_filter_2x2", "FeatureSqueezing", "feature_squeezing_score",
           "differentiable_baselines", "BASELINES", "NOISE_SIGMA", "NOISE_SAMPLES"]

BASELINES = ("max-softmax", "logit-margin", "noise-consistency", "feature-squeezing")
NOISE_SIGMA = 0.1  # standard deviation of the noise-consistency score's Gaussian noise, in [0, 1] pixel units
NOISE_SAMPLES = 16


def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def _softmax(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    require_eval(model)
    return _batched(lambda b: F.softmax(model(b).float(), dim=1), x, batch_size)


def max_softmax_score(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """``1 − max softmax probability`` per image, ``(B,)`` in ``[0, 1 − 1/L]``; higher = less
    confident = more likely perturbed."""
    check_images(x)
    return 1.0 - _softmax(model, x, batch_size).amax(1)


def _margin(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


@torch.no_grad()
def logit_margin_score(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """``z_(2) − z_(1)`` per image, ``(B,)`` ``≤ 0``: the runner-up logit minus the top logit;
    higher = closer to the boundary = more likely perturbed."""
    check_images(x)
    require_eval(model)
    return _batched(lambda b: _margin(model(b).float()), x, batch_size)


def _noise_drop(model: nn.Module, x: torch.Tensor, sigma: float, samples: int, seed: int,
                predicted: torch.Tensor | None = None) -> torch.Tensor:
    """``p_k̂(x) − mean_s p_k̂(clip(x + σ ε_s, 0, 1))`` for one batch, graph kept."""
    p = F.softmax(model(x).float(), dim=1)
    k = p.argmax(1, keepdim=True) if predicted is None else predicted.view(-1, 1)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples,) + tuple(x.shape), generator=gen, dtype=torch.float32).to(x.device, x.dtype)
    noisy = (x.unsqueeze(0) + sigma * noise).clamp(0, 1).reshape(-1, *x.shape[1:])
    pn = F.softmax(model(noisy).float(), dim=1).reshape(samples, x.shape[0], -1)
    return p.gather(1, k).squeeze(1) - pn.gather(2, k.unsqueeze(0).expand(samples, -1, 1)).squeeze(2).mean(0)


def _check_noise(sigma: float, samples: int) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    require_positive_int(samples, "samples")


@torch.no_grad()
def noise_consistency_score(model: nn.Module, x: torch.Tensor, *, sigma: float = NOISE_SIGMA,
                            samples: int = NOISE_SAMPLES, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Drop of the predicted class's softmax probability under ``samples`` draws of Gaussian
    noise of standard deviation ``sigma`` (pixels clipped to ``[0, 1]``), ``(B,)`` in
    ``[-1, 1]``; higher = less stable under noise = more likely perturbed. The noise is a
    function of ``seed`` and the batch (drawn per group of ``batch_size`` images)."""
    check_images(x)
    require_eval(model)
    _check_noise(sigma, samples)
    return _batched(lambda b: _noise_drop(model, b, sigma, samples, seed), x, batch_size)


@torch.no_grad()
def runner_up_labels(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """The class with the second-highest logit per image, ``(B,)`` int64 (ties: the lower index)."""
    check_images(x)
    require_eval(model)
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if logits.shape[1] < 2:
        raise ValueError(f"model must output at least 2 logits, got {logits.shape[1]}")
    return logits.topk(2, dim=1).indices[:, 1]


@dataclass(frozen=True, repr=False)
class FeatureSqueezing(ShortRepr):
    """Feature-squeezing scores, each ``(B,)`` float in ``[0, 2]``.

    Attributes:
        score: the largest of the squeezers' distances, the detection score.
        bit_depth: ``‖softmax(x) − softmax(bit_depth_reduce(x))‖₁``.
        median: the same for the median filter (None when the squeezer has none).
        nlm: the same for non-local means (None when the squeezer has none).
    """

    score: torch.Tensor
    bit_depth: torch.Tensor
    median: torch.Tensor | None
    nlm: torch.Tensor | None = None


def feature_squeezing_score(model: nn.Module, x: torch.Tensor, *, bits: int = 1, squeezer: Squeezer | None = None,
                            batch_size: int = 512) -> FeatureSqueezing:
    """Feature squeezing with ``squeezer`` (default: ``bits``-bit depth and a 2x2 median, Xu et
    al.'s MNIST setting for ``bits=1``; see :func:`curvext.adversarial.squeezers.squeezer_for`
    for the per-dataset settings)."""
    check_images(x)
    squeezer = Squeezer(bits, 2, None) if squeezer is None else squeezer
    p = _softmax(model, x, batch_size)
    distances = [(p - _softmax(model, s, batch_size)).abs().sum(1) for s in squeezer.squeezed(x)]
    median = distances[1] if squeezer.median else None
    nlm = distances[-1] if squeezer.nlm is not None else None
    return FeatureSqueezing(torch.stack(distances).amax(0), distances[0], median, nlm)


def differentiable_baselines(model: nn.Module, x: torch.Tensor, *, squeezer: Squeezer,
                             sigma: float = NOISE_SIGMA, samples: int = NOISE_SAMPLES, seed: int = 0) -> dict:
    """``{name: (B,) score}`` for every name of ``BASELINES``, with the autograd graph from ``x``
    kept: the same numbers as the functions above (noise drawn from ``seed`` for this batch),
    except that feature squeezing's squeezers pass the gradient straight through (BPDA:
    ``x + (squeeze(x) − x).detach()``), being piecewise constant. An attacker minimising them
    evades all four detectors at once."""
    _check_noise(sigma, samples)
    logits = model(x).float()
    p = F.softmax(logits, dim=1)
    squeezed = [F.softmax(model(x + (s - x).detach()).float(), dim=1) for s in squeezer.squeezed(x.detach())]
    return {
        "max-softmax": 1.0 - p.amax(1),
        "logit-margin": _margin(logits),
        "noise-consistency": _noise_drop(model, x, sigma, samples, seed),
        "feature-squeezing": torch.stack([(p - q).abs().sum(1) for q in squeezed]).amax(0),
    }
