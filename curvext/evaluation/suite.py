"""The protocol's attacks (docs/method.md §9): the plain ones, and the adaptive ones that need the
calibrated detectors and are bound to them by :func:`curvext.evaluation.protocol.evaluate`.

Plain rows: DeepFool (minimal l2), PGD l-inf and l2, Carlini-Wagner l2 with margin kappa.
Adaptive rows (Carlini & Wagner 2017; Tramer et al. 2020), same budget as PGD l2 by default:

* ``adaptive-pgd``: white-box PGD on the margin loss (capped at kappa) minus the detector's own
  statistic, Algorithm 2's rho made differentiable
  (:func:`curvext.curvature.differentiable.differentiable_curvature`) with the detector's method,
  h, K and T but fresh random directions at every step (EOT): no knowledge of its seed.
* ``adaptive-pgd-all``: the same against every detector of the table at once: rho plus
  max-softmax, the logit margin, noise consistency (fresh noise per step) and feature squeezing
  (straight-through squeezers).
* ``adaptive-best-of-r``: black-box; PGD l2 from R random starts, each image keeping the
  adversarial run the deployed detector scores least suspicious (queries only).

Each detector's score enters a penalty in units of its own clean calibration images:
``log(1 + max(0, (s - m) / (t - m)))`` with ``m`` their median and ``t`` the threshold
calibrated at the target false-positive rate, both oriented so that higher means flagged: 0 at
the clean median, ``log 2`` at the threshold, so no detector's scale swamps the others.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvext.adversarial import adaptive as _adaptive
from curvext.adversarial import attacks as _attacks
from curvext.adversarial.baselines import BASELINES, differentiable_baselines
from curvext.adversarial.squeezers import Squeezer
from curvext.curvature.differentiable import differentiable_curvature
from curvext.detection.config import DetectorConfig
from curvext.detection.scoring import random_directions, score_images
from curvext.utils.model_checks import is_piecewise_linear

logger = logging.getLogger(__name__)

AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], "_attacks.AttackResult"]
PLAIN_ATTACKS = ("deepfool", "pgd-linf", "pgd-l2", "cw")
ADAPTIVE_KINDS = {"adaptive-pgd": "curvature", "adaptive-pgd-all": "all", "adaptive-best-of-r": "best-of"}
ATTACKS = PLAIN_ATTACKS + tuple(ADAPTIVE_KINDS)  # the names --attacks takes, in table order
EOT_SEED = 1_000_003  # the attacker's direction seeds: EOT_SEED * (seed + 1) + step, never the detector's


@dataclass(frozen=True)
class DefenceContext:
    """What the adaptive attacks know after calibration: the detector's resolved ``config``
    (method, h, T, K), its orientation ``sign`` (+1: perturbed expected higher), and for rho
    and each baseline of ``BASELINES`` the clean calibration images' median and threshold
    (``{score: (median, threshold)}``, oriented so that higher means flagged); the feature
    squeezer and the noise settings of the baselines."""

    config: DetectorConfig
    sign: float
    clean: dict
    squeezer: Squeezer
    noise_sigma: float
    noise_samples: int

    def penalty(self, score: str, s: torch.Tensor) -> torch.Tensor:
        """``log(1 + max(0, (s - m) / (t - m)))`` for the oriented score ``s`` (module docstring)."""
        m, t = self.clean[score]
        scale = max(t - m, 1e-12 + 1e-6 * abs(m))
        return torch.log1p(torch.relu((s - m) / scale))


@dataclass(frozen=True)
class AdaptiveAttack:
    """An adaptive attack row, bound to the calibrated detectors by :meth:`bind`.

    kind: "curvature", "all" or "best-of" (module docstring). eps, norm, steps: the PGD budget.
    weight: the penalty's weight against the margin loss capped at ``confidence`` (logits).
    eot: fresh random directions (and noise) at every step; False uses the detector's own
    directions (an attacker who knows its seed). balance: the margin's and the penalty's gradients
    at unit norm each (:func:`~curvext.adversarial.adaptive.adaptive_pgd`). h: the scale at which
    the attacker differentiates rho (fd/fd2; None: the detector's), a smoother surrogate where the
    detector's scale is too rough to follow. restarts: R of "best-of". max_images: attack only the
    first ``max_images`` images (None: all). batch_size: images per PGD group."""

    kind: str
    eps: float = 1.0
    norm: str = "l2"
    steps: int = 40
    weight: float = 1.0
    confidence: float = 5.0
    eot: bool = True
    balance: bool = True
    h: float | None = None
    restarts: int = 5
    seed: int = 0
    max_images: int | None = None
    batch_size: int = 32

    def __post_init__(self):
        if self.kind not in ADAPTIVE_KINDS.values():
            raise ValueError(f"kind must be one of {tuple(ADAPTIVE_KINDS.values())}, got {self.kind!r}")
        if self.max_images is not None and (isinstance(self.max_images, bool) or self.max_images < 1):
            raise ValueError(f"max_images must be None or a positive int, got {self.max_images!r}")

    def key(self) -> dict:
        """The settings that change its adversarial images (for cache keys)."""
        return dataclasses.asdict(self)

    def describe(self, detector_h: float | None) -> str:
        """One line for the report: budget, weight and the scale at which the attacker
        differentiates rho (``detector_h``: the detector's; None for autograd detectors)."""
        if self.kind == "best-of":
            return f"{self.restarts} restarts of PGD {self.norm} eps {self.eps:g}, {self.steps} steps"
        if detector_h is None:
            scale = "exact (autograd) rho"
        elif self.h is None or self.h == detector_h:
            scale = f"rho at the detector's h = {detector_h:g}"
        else:
            scale = f"rho at h = {self.h:g} (the detector's: {detector_h:g})"
        images = "" if self.max_images is None else f", first {self.max_images} images"
        return (f"PGD {self.norm} eps {self.eps:g}, {self.steps} steps, penalty weight {self.weight:g}, margin capped "
                f"at {self.confidence:g}, {'fresh directions per step (EOT)' if self.eot else 'the detector seed'}"
                f", {scale}{images}")

    def bind(self, context: DefenceContext) -> AttackFn:
        """The attack ``(model, x, y) -> AttackResult`` against the detectors of ``context``."""
        if self.kind == "best-of":
            return lambda model, x, y: _adaptive.best_of_restarts(
                model, x, y, restarts=self.restarts, seed=self.seed,
                attack=lambda m, xx, yy, seed: _attacks.pgd(m, xx, yy, eps=self.eps, norm=self.norm,
                                                            steps=self.steps, seed=seed),
                suspicion=lambda adv: _oriented_rho(model, adv, context))
        return lambda model, x, y: _adaptive.adaptive_pgd(
            model, x, y, penalty=self._penalty(model, context), eps=self.eps, norm=self.norm, steps=self.steps,
            weight=self.weight, confidence=self.confidence, seed=self.seed, batch_size=self.batch_size,
            balance=self.balance)

    def _penalty(self, model, context: DefenceContext) -> _adaptive.Penalty:
        cfg = context.config
        method = cfg.method
        piecewise = is_piecewise_linear(model)
        if method == "fd" and piecewise:
            # fd's second differences of gradients are piecewise constant in x for a ReLU net, so
            # their gradient is zero almost everywhere: the attacker differentiates fd2 instead.
            method = "fd2"
            logger.info("adaptive attack: the detector's fd is piecewise constant in x on this model; "
                        "the attacker differentiates fd2 at the same h")

        def penalty(x: torch.Tensor, step: int) -> torch.Tensor:
            seed = EOT_SEED * (self.seed + 1) + step if self.eot else cfg.seed
            V = random_directions(x.shape[1:], cfg.num_directions, seed, x.device, x.dtype)
            h = cfg.h if self.h is None or method == "autograd" else self.h
            rho = differentiable_curvature(model, x, V, method, h, cfg.classes, piecewise_linear=piecewise).rho
            total = context.penalty("rho", context.sign * rho)
            if self.kind == "all":
                scores = differentiable_baselines(model, x, squeezer=context.squeezer, sigma=context.noise_sigma,
                                                  samples=context.noise_samples, seed=seed if self.eot else cfg.seed)
                for name in BASELINES:
                    total = total + context.penalty(name, scores[name].to(total.dtype))
            return total

        return penalty


def _oriented_rho(model, x: torch.Tensor, context: DefenceContext) -> torch.Tensor:
    """The deployed detector's score of ``x``, higher = flagged (what a black-box attacker queries)."""
    return context.sign * score_images(model, x, context.config).rho


def attack_suite(*, eps_linf: float = 0.1, eps_l2: float = 1.0, cw_confidence: float = 5.0, pgd_steps: int = 40,
                 cw_steps: int = 100, seed: int = 0, include=None, adaptive_weight: float = 1.0,
                 adaptive_confidence: float | None = None, restarts: int = 5, adaptive_images: int | None = None,
                 adaptive_steps: int | None = None, adaptive_h: float | None = None) -> dict:
    """The protocol's attacks by row name: plain ones as ``(model, x, y) -> AttackResult``,
    adaptive ones as :class:`AdaptiveAttack` (PGD l2 budget ``eps_l2``, ``adaptive_steps``
    default ``pgd_steps``, margin ``adaptive_confidence`` default ``cw_confidence``, the attacker's
    fd/fd2 scale ``adaptive_h`` default the detector's h). ``include``:
    names of ``ATTACKS`` to keep (default: all; "cw" names the CW row)."""
    include = ATTACKS if include is None else tuple(include)
    unknown = sorted(set(include) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    confidence = cw_confidence if adaptive_confidence is None else adaptive_confidence
    if adaptive_h is not None and not (isinstance(adaptive_h, (int, float)) and 0 < adaptive_h < float("inf")):
        raise ValueError(f"adaptive_h must be None or a positive finite number, got {adaptive_h!r}")
    rows = {
        "deepfool": ("deepfool", lambda m, x, y: _attacks.deepfool(m, x, y, overshoot=0.02, max_iter=50)),
        "pgd-linf": ("pgd-linf", lambda m, x, y: _attacks.pgd(m, x, y, eps=eps_linf, norm="linf", steps=pgd_steps,
                                                             seed=seed)),
        "pgd-l2": ("pgd-l2", lambda m, x, y: _attacks.pgd(m, x, y, eps=eps_l2, norm="l2", steps=pgd_steps, seed=seed)),
        "cw": (f"cw-l2-k{cw_confidence:g}", lambda m, x, y: _attacks.carlini_wagner(
            m, x, y, confidence=cw_confidence, steps=cw_steps)),
    }
    for name, kind in ADAPTIVE_KINDS.items():
        rows[name] = (name, AdaptiveAttack(kind, eps=eps_l2, norm="l2", steps=adaptive_steps or pgd_steps,
                                           weight=adaptive_weight, confidence=confidence, restarts=restarts,
                                           seed=seed, max_images=adaptive_images,
                                           h=None if adaptive_h is None else float(adaptive_h)))
    return dict(rows[name] for name in ATTACKS if name in include)
