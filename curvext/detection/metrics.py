"""Detection metrics from the scores of clean and perturbed images.

Convention: a **higher score means "more likely perturbed"**, and an input is flagged when
``score >= threshold`` (the rule of ``sklearn.metrics.roc_curve``). Perturbed images are the
positive class. A detector whose orientation is reversed (clean images score higher) gives an
AUC below 0.5; pass ``-scores`` to flip it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["DetectionMetrics", "detection_metrics", "calibrate_threshold", "best_threshold", "tpr_at_fpr"]


@dataclass(frozen=True)
class DetectionMetrics:
    """Metrics of one score on one (clean, perturbed) pair of image sets.

    Attributes:
        auc: ROC AUC in ``[0, 1]`` (0.5: chance; ties count one half).
        accuracy: accuracy on the pooled clean + perturbed images at ``threshold``, the best
            threshold (chosen on these same images: an optimistic, oracle number).
        threshold: flag when ``score >= threshold`` (``inf``: flag nothing).
        tpr_at_fpr: share of perturbed images flagged at the best threshold whose false-positive
            rate is at most ``fpr`` (oracle, from the pooled ROC curve).
        fpr: the target false-positive rate used for ``tpr_at_fpr``.
        n_clean, n_perturbed: sample counts.
    """

    auc: float
    accuracy: float
    threshold: float
    tpr_at_fpr: float
    fpr: float
    n_clean: int
    n_perturbed: int


def _as_scores(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a))[:5].tolist()
        raise ValueError(f"{name} has non-finite scores at indices {bad}")
    return a


def _check_fpr(fpr: float) -> float:
    if not (isinstance(fpr, (int, float)) and 0.0 <= float(fpr) < 1.0):
        raise ValueError(f"fpr must be in [0, 1), got {fpr!r}")
    return float(fpr)


def _roc(clean: np.ndarray, perturbed: np.ndarray):
    y = np.concatenate([np.zeros(clean.size), np.ones(perturbed.size)])
    s = np.concatenate([clean, perturbed])
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return y, s, fpr, tpr, thr


def best_threshold(clean_scores, perturbed_scores) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising accuracy on the pooled images (first best on ties,
    i.e. the highest such threshold)."""
    c, p = _as_scores(clean_scores, "clean_scores"), _as_scores(perturbed_scores, "perturbed_scores")
    _, _, fpr, tpr, thr = _roc(c, p)
    acc = (tpr * p.size + (1.0 - fpr) * c.size) / (p.size + c.size)
    i = int(np.argmax(acc))
    return float(thr[i]), float(acc[i])


def tpr_at_fpr(clean_scores, perturbed_scores, fpr: float = 0.05) -> float:
    """Largest true-positive rate over thresholds with false-positive rate ``<= fpr`` (oracle)."""
    fpr = _check_fpr(fpr)
    c, p = _as_scores(clean_scores, "clean_scores"), _as_scores(perturbed_scores, "perturbed_scores")
    _, _, f, t, _ = _roc(c, p)
    return float(t[f <= fpr + 1e-12].max())


def calibrate_threshold(clean_scores, fpr: float = 0.05) -> float:
    """Threshold from clean scores alone: the smallest ``t`` with
    ``mean(clean_scores >= t) <= fpr``.

    With ties the realised false-positive rate can be below ``fpr``. When even the largest clean
    score cannot be flagged (``fpr < 1/n``), ``t`` is the next float above the largest score.
    """
    fpr = _check_fpr(fpr)
    c = _as_scores(clean_scores, "clean_scores")
    values = np.unique(c)  # ascending
    flagged = c.size - np.searchsorted(np.sort(c), values, side="left")  # count(c >= v)
    ok = flagged <= fpr * c.size + 1e-9
    if not ok.any():
        return float(np.nextafter(values[-1], np.inf))
    return float(values[int(np.argmax(ok))])


def detection_metrics(clean_scores, perturbed_scores, *, fpr: float = 0.05) -> DetectionMetrics:
    """All metrics at once. ``clean_scores`` ``(Nc,)``, ``perturbed_scores`` ``(Np,)``: finite,
    numpy arrays or tensors; higher = more likely perturbed."""
    fpr = _check_fpr(fpr)
    c, p = _as_scores(clean_scores, "clean_scores"), _as_scores(perturbed_scores, "perturbed_scores")
    y = np.concatenate([np.zeros(c.size), np.ones(p.size)])
    auc = float(roc_auc_score(y, np.concatenate([c, p])))
    thr, acc = best_threshold(c, p)
    return DetectionMetrics(auc, acc, thr, tpr_at_fpr(c, p, fpr), fpr, int(c.size), int(p.size))
