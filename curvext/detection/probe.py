"""The calibration probe: clean images pushed just across the boundary by a small PGD, which
decides the scale h, the orientation and the recovery rule without seeing any attack to be
detected (docs/method.md §7-8)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from curvext.adversarial.attacks import pgd
from curvext.detection.config import ORIENTATIONS, DetectorConfig
from curvext.detection.recovery import RECOVERY_RULES, recovered_labels
from curvext.detection.scoring import Scores
from curvext.utils.progress import progress_bar
from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)

PROBE_RADII = (0.25, 0.5, 1.0)  # fractions of the probe radius tried in turn
PROBE_STEPS = 20


@dataclass(frozen=True, repr=False)
class ProbeResult(ShortRepr):
    """images: ``(n, C, H, W)`` the probe images whose label the PGD changed; labels: ``(n,)``
    int64 their clean labels; flipped: ``(N,)`` bool, which clean images they came from;
    radius: the largest radius tried (input units)."""

    images: torch.Tensor
    labels: torch.Tensor
    flipped: torch.Tensor
    radius: float


def run_probe(model: torch.nn.Module, x_clean: torch.Tensor, config: DetectorConfig) -> ProbeResult:
    """PGD in ``config.probe_norm`` (``PROBE_STEPS`` steps, ``config.seed``) of the clean images
    ``x_clean (N, C, H, W)`` at growing radii ``radius * PROBE_RADII``, each image perturbed at the
    smallest radius that changes its label (larger radii are tried only on the images not yet
    flipped). So the probe images sit just across the boundary, as adversarial images do, rather
    than deep in another class. Deterministic."""
    radius = config.probe_radius(x_clean[0].numel())
    adversarial = x_clean.detach().clone()
    labels = torch.empty(x_clean.shape[0], dtype=torch.long, device=x_clean.device)
    flipped = torch.zeros(x_clean.shape[0], dtype=torch.bool, device=x_clean.device)
    for fraction in progress_bar(PROBE_RADII, desc="calibration probe", unit="radius", leave=False):
        todo = (~flipped).nonzero().flatten()
        if todo.numel() == 0:
            break
        p = pgd(model, x_clean[todo], eps=fraction * radius, norm=config.probe_norm, steps=PROBE_STEPS,
                seed=config.seed)
        new = todo[p.success]
        adversarial[new] = p.adversarial[p.success]
        labels[todo] = p.labels
        flipped[new] = True
    return ProbeResult(adversarial[flipped], labels[flipped], flipped, radius)


def require_flips(probe: ProbeResult, config: DetectorConfig, what: str) -> None:
    """Raise a ValueError naming ``probe_eps`` when the probe changed no label."""
    if probe.images.shape[0] == 0:
        raise ValueError(f"{what}: the calibration probe (PGD-{config.probe_norm} up to radius {probe.radius:.3g}) "
                         f"changed the label of none of the {probe.flipped.numel()} clean images; pass a larger "
                         "probe_eps, more clean images, or a fixed orientation")


def orientation_from_probe(config: DetectorConfig, rho_clean: torch.Tensor, probe: ProbeResult | None,
                           probe_scores: Scores | None) -> tuple[str, str]:
    """``(orientation, recovery rule)`` from the clean statistics ``rho_clean (N,)``: fixed by
    ``config.orientation``, the paper's sign rule ("auto": mostly negative clean rho ->
    "higher"), or ("probe") the side to which the probe images' rho moves, with the recovery rule
    that gives most probe images back their labels (ties: Algorithm 2's "max").
    ``probe``/``probe_scores`` are needed for "probe" only."""
    if config.orientation in ORIENTATIONS:
        return config.orientation, "max"
    rho_clean = torch.as_tensor(rho_clean).double().cpu()
    if config.orientation == "auto":
        return ("higher" if float(rho_clean.median()) < 0 else "lower"), "max"
    require_flips(probe, config, "orientation")
    shift = float(probe_scores.rho.double().cpu().median() - rho_clean[probe.flipped.cpu()].median())
    hits = {rule: float((recovered_labels(probe_scores.per_class, rule, probe_scores.competitors)
                         == probe.labels).double().mean()) for rule in RECOVERY_RULES}
    recovery = max(RECOVERY_RULES, key=hits.get)  # ties: the earlier rule, Algorithm 2's "max" first
    logger.info("probe: %d/%d flipped up to radius %.3g, median rho shift %.3g, recovery hits %s",
                int(probe.flipped.sum()), probe.flipped.numel(), probe.radius, shift,
                {k: round(v, 2) for k, v in hits.items()})
    return ("higher" if shift > 0 else "lower"), recovery
