"""One attack's report rows: detection and recovery metrics of every score (docs/method.md §9).

Scores, each oriented so that higher means "perturbed": curvext (``sign * rho``), the baselines
of :data:`curvext.adversarial.baselines.BASELINES`, and **combined**: the larger of the clean
calibration percentiles of curvext and of the attack's best baseline (highest AUC on the row), a
union of the two detectors at matched false-positive rates that shows whether curvature adds
information the baseline lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curvext.adversarial.baselines import BASELINES
from curvext.detection import metrics
from curvext.detection.recovery import RECOVERY_RULES, recovered_labels

SCORES = ("curvext",) + BASELINES + ("combined",)
NAN = float("nan")


@dataclass(frozen=True)
class ScoreRow:
    """One (attack, score) line of the report; metrics are NaN when an attack never succeeded.

    auc, accuracy, tpr_at_fpr: separability, thresholds chosen on the evaluated images (oracle).
    tpr_calibrated: share of perturbed images flagged at the threshold calibrated on the clean
    calibration images at the target false-positive rate (what a deployed detector flags).
    recovery: share of perturbed images given back their original label at the best threshold
    (curvext: its recovered class by the detector's rule; baselines: the model's runner-up class,
    the trivial rule); recovery_calibrated: the same at the calibrated threshold;
    recovery_if_flagged: the same if every perturbed image were flagged.
    perturbed_other_sign: curvext only, share of perturbed images with rho >= 0.
    paired_shift: share of perturbed images whose score moved, from their own clean image's
    score, toward the perturbed side (ties half): near the AUC, the score's response to the
    attack is inconsistent in sign; far below it, the image sets differ in a way the attack did
    not cause.
    recovery_max, recovery_min, recovery_max_top2, recovery_min_top2: curvext only, each
    recovery rule's share if every perturbed image were flagged.
    setting: the score's settings where they vary (combined: the baseline it is combined with).
    """

    attack: str
    score: str
    n_perturbed: int
    success_rate: float
    median_norm: float
    auc: float
    accuracy: float
    tpr_at_fpr: float
    recovery: float
    recovery_if_flagged: float
    perturbed_other_sign: float
    paired_shift: float = NAN
    tpr_calibrated: float = NAN
    recovery_calibrated: float = NAN
    recovery_max: float = NAN
    recovery_min: float = NAN
    recovery_max_top2: float = NAN
    recovery_min_top2: float = NAN
    setting: str = ""


def oriented(scores: dict, name: str, sign: float) -> np.ndarray:
    """Score ``name`` of a scores dict (curvext, a baseline), higher = perturbed."""
    return sign * scores["rho"].numpy() if name == "curvext" else scores[name].numpy()


def percentile(calibration: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of ``s`` among the clean ``calibration`` scores, in ``[0, 1]``."""
    ordered = np.sort(calibration)
    below = np.searchsorted(ordered, s, side="left")
    upto = np.searchsorted(ordered, s, side="right")
    return (below + upto) / (2.0 * ordered.size)


def paired_shift(clean_same_images: np.ndarray, perturbed: np.ndarray) -> float:
    """Share of pairs with ``perturbed > clean`` (ties count half), both oriented so that higher
    means perturbed; ``clean_same_images[i]`` is the clean score of perturbed image i's source."""
    diff = perturbed - clean_same_images
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def attack_rows(name: str, r: dict, clean: dict, calibration: dict, y: np.ndarray, sign: float, rule: str,
                fpr: float, settings: dict | None = None) -> list[ScoreRow]:
    """The rows of attack ``name``.

    r: the attack's ``success (n,)``, ``norms (n,)`` for the first n evaluated images, and the
    scores dict of its successful images (absent when none succeeded). clean: the scores of the
    N evaluated clean images. calibration: ``{score: oriented clean calibration scores}`` for
    curvext and every baseline. y: ``(N,)`` true labels. sign: curvext's orientation (+1:
    higher). rule: curvext's recovery rule. settings: ``{score: text}`` for the setting column.
    """
    settings = settings or {}
    success = r["success"].numpy().astype(bool)
    n = int(success.sum())
    rate = float(success.mean())
    med = float(np.median(r["norms"].numpy()[success])) if n else NAN
    if n == 0:
        return [ScoreRow(name, s, 0, rate, med, NAN, NAN, NAN, NAN, NAN, NAN, setting=settings.get(s, ""))
                for s in SCORES]
    original = y[: success.size][success]
    same = np.flatnonzero(success)  # the perturbed images' clean sources among the evaluated images
    predicted = r["predicted"].numpy()
    runner_up = r["runner-up"].numpy()
    rows = []
    for score in ("curvext",) + BASELINES:
        c, p = oriented(clean, score, sign), oriented(r, score, sign)
        m = metrics.detection_metrics(c, p, fpr=fpr)
        t_cal = metrics.calibrate_threshold(calibration[score], fpr)
        if score == "curvext":
            candidate = recovered_labels(r["per_class"], rule, r.get("competitors")).numpy()
            by_rule = {rl: float(np.mean(recovered_labels(r["per_class"], rl, r.get("competitors")).numpy()
                                         == original)) for rl in RECOVERY_RULES}
            extra = dict(recovery_max=by_rule["max"], recovery_min=by_rule["min"],
                         recovery_max_top2=by_rule["max-top2"], recovery_min_top2=by_rule["min-top2"])
            other_sign = float(np.mean(r["rho"].numpy() >= 0))
        else:
            candidate, extra, other_sign = runner_up, {}, NAN
        best, calibrated = (float(np.mean(np.where(flagged, candidate, predicted) == original))
                            for flagged in (p >= m.threshold, p >= t_cal))
        rows.append(ScoreRow(name, score, n, rate, med, m.auc, m.accuracy, m.tpr_at_fpr, best,
                             float(np.mean(candidate == original)), other_sign, paired_shift(c[same], p),
                             float(np.mean(p >= t_cal)), calibrated, setting=settings.get(score, ""), **extra))
    partner = max(rows[1:], key=lambda row: row.auc).score
    combined = lambda d: np.maximum(percentile(calibration["curvext"], oriented(d, "curvext", sign)),  # noqa: E731
                                    percentile(calibration[partner], oriented(d, partner, sign)))
    c, p = combined(clean), combined(r)
    cal = np.maximum(percentile(calibration["curvext"], calibration["curvext"]),
                     percentile(calibration[partner], calibration[partner]))
    m = metrics.detection_metrics(c, p, fpr=fpr)
    rows.append(ScoreRow(name, "combined", n, rate, med, m.auc, m.accuracy, m.tpr_at_fpr, NAN, NAN, NAN,
                         paired_shift(c[same], p), float(np.mean(p >= metrics.calibrate_threshold(cal, fpr))),
                         setting=f"curvext + {partner}"))
    return rows
