"""Adaptive attacks: attacks that know the detector (Carlini & Wagner 2017, "Adversarial examples
are not easily detected"; Tramer et al. 2020, "On adaptive attacks to adversarial example
defenses"), with images in ``[0, 1]`` as in :mod:`curvext.adversarial.attacks`.

* :func:`adaptive_pgd`, white-box: PGD on the margin loss of Carlini & Wagner capped at a
  confidence ``κ`` plus ``weight`` times a differentiable *penalty*, the detector's own score
  (e.g. Algorithm 2's rho from :func:`curvext.curvature.differentiable.differentiable_curvature`),
  oriented so that higher means "flagged". The penalty is called with the step number, so it can
  draw fresh random directions (or noise) at every step: expectation over transformation (EOT,
  Athalye et al. 2018), which needs no knowledge of the detector's seed. Of all iterates, each
  image keeps the least suspicious one that is adversarial.
* :func:`best_of_restarts`, black-box: R runs of any attack from different random starts; each
  image keeps, among the runs that fooled the model, the one the detector finds least
  suspicious. It needs only the detector's score (queries), no gradients.

Penalties and scores are ``(B,)`` per image and must not mix images (a batch is split freely).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from curvext.adversarial.attacks import NORMS, AttackResult, _check_inputs, _project, _random_start, _result
from curvext.utils.validation import require_positive_int

logger = logging.getLogger(__name__)

__all__ = ["Penalty", "adaptive_pgd", "best_of_restarts"]

#: ``(x (b, C, H, W) in the autograd graph, step) -> (b,)``: the detector's score, differentiable
#: in ``x``, higher = more suspicious.
Penalty = Callable[[torch.Tensor, int], torch.Tensor]


def _margin_loss(logits: torch.Tensor, labels: torch.Tensor, confidence: float) -> torch.Tensor:
    """``min(max_{j≠y} z_j − z_y, κ)`` per image: grows until the image is misclassified with
    margin ``κ``, then stops pulling."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (other - true).clamp(max=confidence)


def _unit(g: torch.Tensor) -> torch.Tensor:
    """Each image's gradient scaled to unit l2 norm (zero stays zero)."""
    n = g.flatten(1).norm(dim=1).view(-1, *[1] * (g.dim() - 1))
    return torch.where(n > 0, g / n.clamp_min(1e-30), torch.zeros_like(g))


def _adaptive_batch(model, x0, labels, penalty, *, eps, norm, steps, step, weight, confidence, random_start, seed,
                    balance):
    shape = (-1,) + (1,) * (x0.dim() - 1)
    adv = (x0 + _random_start(x0, norm, eps, seed)).clamp(0, 1) if random_start else x0.clone()
    best = adv.clone()
    best_penalty = torch.full((x0.shape[0],), float("inf"), dtype=torch.float64, device=x0.device)
    for t in range(steps + 1):
        x = adv.detach().requires_grad_(True)
        logits = model(x)
        p = penalty(x, t)
        if p.shape != (x0.shape[0],):
            raise ValueError(f"penalty must return ({x0.shape[0]},) scores, got {tuple(p.shape)}")
        with torch.no_grad():  # keep the least suspicious adversarial iterate
            better = (logits.argmax(1) != labels) & (p.double() < best_penalty)
            best_penalty = torch.where(better, p.double(), best_penalty)
            best = torch.where(better.view(shape), x.detach(), best)
        if t == steps:
            break
        margin = _margin_loss(logits, labels, confidence).sum()
        if balance:  # unit-norm terms; the penalty steers only images that already fool the model
            (g_margin,) = torch.autograd.grad(margin, x, retain_graph=True)
            (g_penalty,) = torch.autograd.grad(p.sum(), x, allow_unused=True)
            g_penalty = torch.zeros_like(x) if g_penalty is None else g_penalty
            fooled = (logits.argmax(1) != labels).to(x.dtype).view(shape)
            g = _unit(torch.nan_to_num(g_margin)) - weight * fooled * _unit(torch.nan_to_num(g_penalty))
        else:
            (g,) = torch.autograd.grad(margin - weight * p.sum(), x)
            g = torch.nan_to_num(g)
        if norm == "linf":
            adv = adv + step * g.sign()
        else:
            adv = adv + step * g / (g.flatten(1).norm(dim=1).view(shape) + 1e-10)
        adv = (x0 + _project(adv - x0, norm, eps)).clamp(0, 1).detach()
    never = torch.isinf(best_penalty)
    return torch.where(never.view(shape), adv, best)  # no adversarial iterate: the last one


def adaptive_pgd(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, *, penalty: Penalty,
                 eps: float, norm: str = "l2", steps: int = 40, step: float | None = None, weight: float = 1.0,
                 confidence: float = 5.0, random_start: bool = True, seed: int = 0,
                 batch_size: int = 32, balance: bool = True) -> AttackResult:
    """PGD in the ``norm`` ball of radius ``eps`` (intersected with ``[0, 1]``) maximising

        min(max_{j≠y} z_j − z_y, κ) − weight · penalty(x', step)

    with ``κ = confidence``: the margin term makes the image adversarial with margin ``κ``, the
    penalty term hides it from the detector. With ``balance`` (the default) each term's gradient
    is scaled to unit norm per image (``weight`` then weighs directions, not raw scales), and the
    penalty steers only the images that already fool the model; the others follow the margin
    alone. Otherwise a rough penalty with a huge gradient (finite differences at a small scale h)
    drowns the margin, or one that opposes it stalls the step, and the attack stops fooling the
    model. ``balance=False`` takes the gradient of the objective as written. Steps as in
    :func:`curvext.adversarial.attacks.pgd`
    (``step`` default ``2.5·eps/steps``, signed for ℓ∞, normalised for ℓ2). Returns, per image,
    the adversarial iterate (steps 0..``steps``) of smallest penalty as measured at that step;
    images never adversarial keep the last iterate (``success`` False). Images are attacked in
    groups of ``batch_size`` (the penalty's graph can be large); ``penalty`` receives each group.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    for value, name in ((steps, "steps"), (batch_size, "batch_size")):
        require_positive_int(value, name)
    if not weight >= 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    if not confidence >= 0:
        raise ValueError(f"confidence must be >= 0, got {confidence!r}")
    step = 2.5 * eps / steps if step is None else step
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    labels = _check_inputs(model, x, labels)
    x0 = x.detach()
    parts = [_adaptive_batch(model, x0[i : i + batch_size], labels[i : i + batch_size], penalty, eps=eps,
                             norm=norm, steps=steps, step=step, weight=weight, confidence=confidence,
                             random_start=random_start, seed=seed + i, balance=balance)
             for i in range(0, x0.shape[0], batch_size)]
    return _result(model, x0, torch.cat(parts), labels, norm)


def best_of_restarts(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                     attack: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], AttackResult],
                     suspicion: Callable[[torch.Tensor], torch.Tensor], restarts: int = 5,
                     seed: int = 0) -> AttackResult:
    """Black-box evasion by selection: ``attack(model, x, labels, seed + r)`` for ``r < restarts``
    (e.g. PGD from R random starts); per image, of the runs that fooled the model, the one with
    the smallest ``suspicion(adversarial) (b,)`` (the detector's score, higher = flagged, queried
    on the successful images only). Images no run fooled keep the first run's result."""
    require_positive_int(restarts, "restarts")
    labels = _check_inputs(model, x, labels)
    shape = (-1,) + (1,) * (x.dim() - 1)
    best, best_score = None, torch.full((x.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    norm = None
    for r in range(restarts):
        res = attack(model, x, labels, seed + r)
        norm = res.norm
        if best is None:
            best = res.adversarial.clone()
        score = torch.full_like(best_score, float("inf"))
        if bool(res.success.any()):
            score[res.success] = suspicion(res.adversarial[res.success]).double().to(x.device)
        better = score < best_score
        best_score = torch.where(better, score, best_score)
        best = torch.where(better.view(shape), res.adversarial, best)
        logger.debug("restart %d: %d/%d adversarial", r, int(res.success.sum()), x.shape[0])
    return _result(model, x.detach(), best, labels, norm)
