"""Choosing the finite-difference scale ``h`` from clean images alone.

``fd``/``fd2`` measure curvature at a scale ``h`` (docs/method.md §8), and which scale separates perturbed
from clean images depends on the model: on the MNIST ReLU LeNet the detection AUC against PGD
l-inf goes from 0.98 at h = 0.01 to 0.69 at h = 0.25, while the MNIST ReLU NiN is best near
h = 0.02 (``BENCHMARKS.md``). :func:`choose_scale` picks ``h`` without seeing any attack to be
detected: it perturbs the clean calibration images with the same small PGD probe (l2, or l-inf
with ``probe_norm``) that resolves the orientation (:mod:`curvext.detection.probe`),
scores clean and probe images at every candidate scale, and keeps the scale at which they
separate best (ROC AUC, either side). On the zoo's MNIST ReLU models the probe ranks the scales as the four real
attacks do. When the best candidate is the largest (smallest) of the grid, the grid is extended by
factors of ``GRID_GROWTH`` beyond that edge (when it separates strictly better than its
neighbour: a plateau is no sign of a better scale beyond), at most ``MAX_EXTENSIONS`` times and
never below the smallest scale the images' precision allows (``MIN_SCALE``), until the best lies
inside; if it still lies at an edge, a warning says so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from curvext.detection.config import DetectorConfig
from curvext.detection.probe import ProbeResult, require_flips
from curvext.detection.scoring import ExactSums, score_images
from curvext.utils.progress import progress_bar

logger = logging.getLogger(__name__)

PROBE_SCALES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
GRID_GROWTH = 2.0  # factor between an edge of the grid and the candidate added beyond it
MAX_EXTENSIONS = 3  # candidates added beyond the edges, at most
#: smallest h tried beyond the grid, per dtype: fd2's rounding error eps |f| / h^2 stays below the
#: curvature signal (float32 and float64 give the same rho to 0.4% at h = 0.001 on the MNIST LeNet)
MIN_SCALE = {torch.float16: 1e-1, torch.bfloat16: 1e-1, torch.float32: 1e-3, torch.float64: 1e-6}


@dataclass(frozen=True)
class ScaleChoice:
    """h: the chosen scale. separation: ``{h: max(AUC, 1 - AUC)}`` of probe against clean rho
    for every candidate (0.5 = no separation, 1 = perfect), in the order tried. n_clean, n_probe:
    images used. extended: the candidates added beyond the given grid. at_edge: the chosen h is
    still the smallest or largest candidate (the best scale may lie beyond)."""

    h: float
    separation: dict = field(default_factory=dict)
    n_clean: int = 0
    n_probe: int = 0
    extended: tuple = ()
    at_edge: bool = False

    @property
    def best_separation(self) -> float:
        """The separation at the chosen h."""
        return self.separation[self.h]

    def summary(self) -> str:
        """One line: the chosen h, its separation, the extension and the edge warning."""
        text = f"h = {self.h:g} (probe-vs-clean separation {self.best_separation:.3f})"
        if self.extended:
            text += "; grid extended by " + ", ".join(f"{h:g}" for h in self.extended)
        if self.at_edge:
            text += "; at the edge of the candidates: the best scale may lie beyond them"
        return text

    def table(self) -> str:
        """Markdown table of the candidates by increasing h, the chosen one in bold, those added
        beyond the grid marked (+)."""
        lines = ["| h | separation (probe vs clean AUC) |", "|---:|---:|"]
        for h in sorted(self.separation):
            mark = "**" if h == self.h else ""
            added = " (+)" if h in self.extended else ""
            lines.append(f"| {mark}{h:g}{mark}{added} | {mark}{self.separation[h]:.3f}{mark} |")
        return "\n".join(lines)


def _check_scales(scales) -> tuple:
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f"scales must be a sequence of positive numbers, got {scales!r}") from None
    if not values or any(not (0 < s < float("inf")) for s in values):
        raise ValueError(f"scales must be a non-empty sequence of positive finite numbers, got {scales!r}")
    return values


def _best(separation: dict) -> float:
    best = max(separation.values())
    return max(s for s, v in separation.items() if v == best)  # ties: the larger h


def _edge(separation: dict) -> int:
    """+1 (-1) when the best h is the largest (smallest) candidate and separates strictly better
    than its neighbour (a plateau is no sign of a better scale beyond); 0 otherwise."""
    h, ordered = _best(separation), sorted(separation)
    if len(ordered) < 2:
        return 0
    if h == ordered[-1] and separation[h] > separation[ordered[-2]]:
        return 1
    if h == ordered[0] and separation[h] > separation[ordered[1]]:
        return -1
    return 0


def choose_scale(model: torch.nn.Module, config: DetectorConfig, x_clean: torch.Tensor, probe: ProbeResult,
                 scales=PROBE_SCALES, exact_sums: ExactSums | None = None, *, extend: bool = True) -> ScaleChoice:
    """The candidate ``h`` at which the probe images ``probe`` of ``x_clean (N, C, H, W)``
    separate best from the clean images by rho under ``config`` with that h (ties: the larger
    h). With ``extend``, candidates are added beyond an edge of the grid while the best lies
    there (module docstring). ``config`` is not changed; :meth:`CurvatureDetector.choose_scale`
    sets the result."""
    from sklearn.metrics import roc_auc_score

    if config.method == "autograd":
        raise ValueError("choose_scale applies to method 'fd' or 'fd2' (autograd has no scale h)")
    scales = _check_scales(scales)
    require_flips(probe, config, "scale choice")

    def separation_at(h: float) -> float:
        at_h = config.replace(h=h)
        rc = score_images(model, x_clean, at_h, exact_sums).rho.double().cpu()
        rp = score_images(model, probe.images, at_h, exact_sums).rho.double().cpu()
        y = torch.cat([torch.zeros(len(rc)), torch.ones(len(rp))]).numpy()
        auc = float(roc_auc_score(y, torch.cat([rc, rp]).numpy()))
        return max(auc, 1.0 - auc)

    separation = {h: separation_at(h) for h in progress_bar(scales, desc="scale h", unit="h", leave=False)}
    extended = []
    smallest = MIN_SCALE.get(x_clean.dtype, 1e-3)
    while extend and len(extended) < MAX_EXTENSIONS:
        h, edge = _best(separation), _edge(separation)
        candidate = h * GRID_GROWTH if edge > 0 else h / GRID_GROWTH
        if edge == 0 or candidate < smallest:
            break
        separation[candidate] = separation_at(candidate)
        extended.append(candidate)
    h = _best(separation)
    at_edge = _edge(separation) != 0
    choice = ScaleChoice(h, separation, int(x_clean.shape[0]), int(probe.images.shape[0]), tuple(extended), at_edge)
    logger.info("scale choice: %s -> %s", {k: round(v, 3) for k, v in separation.items()}, choice.summary())
    if at_edge:
        logger.warning("scale choice: the best h (%g) is at the edge of the candidates %s; the best scale may lie "
                       "beyond them: pass scales that extend past it", h, sorted(separation))
    return choice
