"""Choosing the finite-difference scale ``h`` from clean images alone.

``fd``/``fd2`` measure curvature at a scale ``h`` (docs/method.md §8), and which scale separates perturbed
from clean images depends on the model: on the MNIST ReLU LeNet the detection AUC against PGD
l-inf goes from 0.98 at h = 0.01 to 0.69 at h = 0.25, while the MNIST ReLU NiN is best near
h = 0.02 (``BENCHMARKS.md``). :func:`choose_scale` picks ``h`` without seeing any attack to be
detected: it perturbs the clean calibration images with the same small PGD probe (l2, or l-inf
with ``probe_norm``) that resolves the orientation (:mod:`curvext.detection.probe`),
scores clean and probe images at every candidate scale, and keeps the scale at which they
separate best (ROC AUC, either side). On the zoo's MNIST ReLU models the probe ranks the scales as the four real
attacks do.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from curvext.detection.config import DetectorConfig
from curvext.detection.probe import ProbeResult, require_flips
from curvext.detection.scoring import ExactSums, score_images

logger = logging.getLogger(__name__)

PROBE_SCALES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


@dataclass(frozen=True)
class ScaleChoice:
    """h: the chosen scale. separation: ``{h: max(AUC, 1 - AUC)}`` of probe against clean rho
    for every candidate (0.5 = no separation, 1 = perfect). n_clean, n_probe: images used."""

    h: float
    separation: dict = field(default_factory=dict)
    n_clean: int = 0
    n_probe: int = 0

    def table(self) -> str:
        """Markdown table of the candidates, the chosen one in bold."""
        lines = ["| h | separation (probe vs clean AUC) |", "|---:|---:|"]
        for h, s in self.separation.items():
            mark = "**" if h == self.h else ""
            lines.append(f"| {mark}{h:g}{mark} | {mark}{s:.3f}{mark} |")
        return "\n".join(lines)


def _check_scales(scales) -> tuple:
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of positive numbers, got {scales!r}") from None
    if not values or any(not (0 < s < float("inf")) for s in values):
        raise ValueError(f"scales must be a non-empty sequence of positive finite numbers, got {scales!r}")
    return values


def choose_scale(model: torch.nn.Module, config: DetectorConfig, x_clean: torch.Tensor, probe: ProbeResult,
                 scales=PROBE_SCALES, exact_sums: ExactSums | None = None) -> ScaleChoice:
    """The candidate ``h`` at which the probe images ``probe`` of ``x_clean (N, C, H, W)``
    separate best from the clean images by rho under ``config`` with that h (ties: the larger
    h). ``config`` is not changed; :meth:`CurvatureDetector.choose_scale` sets the result."""
    from sklearn.metrics import roc_auc_score

    if config.method == "autograd":
        raise ValueError("choose_scale applies to method 'fd' or 'fd2' (autograd has no scale h)")
    scales = _check_scales(scales)
    require_flips(probe, config, "scale choice")
    separation = {}
    for h in scales:
        at_h = config.replace(h=h)
        rc = score_images(model, x_clean, at_h, exact_sums).rho.double().cpu()
        rp = score_images(model, probe.images, at_h, exact_sums).rho.double().cpu()
        y = torch.cat([torch.zeros(len(rc)), torch.ones(len(rp))]).numpy()
        auc = float(roc_auc_score(y, torch.cat([rc, rp]).numpy()))
        separation[h] = max(auc, 1.0 - auc)
    best = max(separation.values())
    h = max(s for s, v in separation.items() if v == best)
    logger.info("scale choice: %s -> h = %g", {k: round(v, 3) for k, v in separation.items()}, h)
    return ScaleChoice(h, separation, int(x_clean.shape[0]), int(probe.images.shape[0]))
