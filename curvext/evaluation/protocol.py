"""Evaluation of Algorithm 2 against real attacks, next to training-free baselines (docs/method.md §9).

For a model and correctly classified test images: score the clean images, attack them with each
attack, keep the successful adversarial images, and report per attack and per score (curvext's
rho, max-softmax, feature squeezing): detection AUC, accuracy at the best threshold, TPR at 5%
FPR, and the label-recovery accuracy: curvext's recovered class for curvext, the model's
runner-up class (the trivial rule, :func:`curvext.adversarial.baselines.runner_up_labels`) for the baselines.
The curvature orientation is read from clean data alone (see :mod:`curvext.detection.detector`) and reported.

Resumable: with ``out_dir``, each attack's adversarial images are saved as soon as they are
computed (``<out_dir>/cache/attack-<attack>-<key>.pt``, keyed by the images, the model's weights
and the caller's settings only) and their scores beside them (``scores-<attack>-<key>.pt``, keyed by the detector's
settings too). A killed run loses at most the step in progress, and a rerun with another scale
``h``, T or K scores the cached adversarial images again instead of attacking again.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from curvext.adversarial import attacks as _attacks
from curvext.adversarial import baselines
from curvext.detection import metrics
from curvext.detection.detector import CurvatureDetector
from curvext.detection.recovery import recovered_labels
from curvext.detection.scale_selection import ScaleChoice
from curvext.evaluation import plots
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import model_digest, tensor_digest
from curvext.utils.cache_keys import settings_key as _key
from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)

AttackFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], "_attacks.AttackResult"]


def attack_suite(*, eps_linf: float = 0.1, eps_l2: float = 1.0, cw_confidence: float = 5.0,
                 pgd_steps: int = 40, cw_steps: int = 100, seed: int = 0) -> dict[str, AttackFn]:
    """The protocol's attacks: DeepFool (minimal l2), PGD l-inf and l2, CW l2 with margin kappa."""
    return {
        "deepfool": lambda m, x, y: _attacks.deepfool(m, x, y, overshoot=0.02, max_iter=50),
        "pgd-linf": lambda m, x, y: _attacks.pgd(m, x, y, eps=eps_linf, norm="linf", steps=pgd_steps, seed=seed),
        "pgd-l2": lambda m, x, y: _attacks.pgd(m, x, y, eps=eps_l2, norm="l2", steps=pgd_steps, seed=seed),
        f"cw-l2-k{cw_confidence:g}": lambda m, x, y: _attacks.carlini_wagner(
            m, x, y, confidence=cw_confidence, steps=cw_steps),
    }


@dataclass(frozen=True)
class ScoreRow:
    """One (attack, score) line of the report; metrics are NaN when an attack never succeeded."""

    attack: str
    score: str
    n_perturbed: int
    success_rate: float
    median_norm: float
    auc: float
    accuracy: float
    tpr_at_fpr: float
    recovery: float  # share of perturbed images given back their original label at the best threshold
    # (curvext: its recovered class; baselines: the model's runner-up class, the trivial rule)
    recovery_if_flagged: float  # the same share if every perturbed image were flagged
    perturbed_other_sign: float  # curvext only: share of perturbed images with rho >= 0
    # Share of perturbed images whose score moved, from their own clean image's score, toward the
    # side where perturbed images are expected: the AUC of the pairs (clean image, its attack). Near
    # the AUC, the score's response to an attack is inconsistent in sign; far below it, the images
    # differ in a way the score sees but the attack did not cause.
    paired_shift: float = float("nan")


@dataclass(frozen=True)
class EvaluationReport:
    """rows: one per attack and score; orientation used; clean_sign_share = share of clean images
    with rho < 0 (the paper's "clean" sign)."""

    rows: list
    orientation: str
    clean_sign_share: float
    n_clean: int
    settings: dict = field(default_factory=dict)
    rho_clean: np.ndarray | None = None
    rho_perturbed: dict = field(default_factory=dict)
    scale_choice: ScaleChoice | None = None  # when h was chosen by the probe (``scales=``)

    def table(self) -> str:
        """Markdown table of all rows."""
        head = ("| attack | success | median norm | score | AUC | acc@best | TPR@5%FPR | recovery "
                "| recovery if flagged | paired shift |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        lines = [head]
        for r in self.rows:
            rec = "" if np.isnan(r.recovery) else f"{100 * r.recovery:.1f}%"
            rec_all = "" if np.isnan(r.recovery_if_flagged) else f"{100 * r.recovery_if_flagged:.1f}%"
            paired = "" if np.isnan(r.paired_shift) else f"{100 * r.paired_shift:.0f}%"
            lines.append(f"| {r.attack} | {100 * r.success_rate:.0f}% | {r.median_norm:.3f} | {r.score} | "
                         f"{r.auc:.3f} | {100 * r.accuracy:.1f}% | {100 * r.tpr_at_fpr:.1f}% | {rec} | {rec_all} | "
                         f"{paired} |")
        lines.append("\nrecovery: curvext's recovered class on its rows; on the baselines' rows the model's "
                     "runner-up class (the trivial rule) for the images each baseline flags. paired shift: share "
                     "of perturbed images scoring more toward the perturbed side than their own clean image.")
        return "\n".join(lines)

    def dataframe(self):
        return optional_import("pandas").DataFrame([r.__dict__ for r in self.rows])


def _cached(path: Path | None, compute: Callable[[], dict]) -> dict:
    if path is not None and path.is_file():
        logger.info("reusing %s", path)
        return torch.load(path, weights_only=False)
    out = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # a killed run never leaves half a file
            torch.save(out, tmp)
    return out


def _scores(model, detector: CurvatureDetector, x: torch.Tensor) -> dict:
    s = detector.score(x)
    return {
        "rho": s.rho.double().cpu(),
        "per_class": s.per_class.double().cpu(),
        "predicted": s.predicted.cpu(),
        "competitors": s.competitors.cpu(),
        "max-softmax": baselines.max_softmax_score(model, x).double().cpu(),
        "feature-squeezing": baselines.feature_squeezing_score(model, x).score.double().cpu(),
        "runner-up": baselines.runner_up_labels(model, x).cpu(),
    }


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             detector: CurvatureDetector, attacks: dict[str, AttackFn] | None = None, fpr: float = 0.05,
             out_dir: str | os.PathLike | None = None, settings: dict | None = None,
             scales=None, progress: bool = True) -> EvaluationReport:
    """Run the protocol on ``images (N, C, H, W)`` in [0, 1] with true ``labels (N,)``.

    Only correctly classified images are attacked. ``settings`` (JSON-able) identify the run in
    the cache key together with the images; pass everything that changes the results. With
    ``scales`` (candidate h, fd/fd2 detectors), the detector's h is first chosen from the clean
    images alone (:meth:`CurvatureDetector.choose_scale`) and set on ``detector``.
    """
    tqdm = optional_import("tqdm.auto").tqdm
    attacks = attack_suite() if attacks is None else attacks
    with torch.no_grad():
        keep = model(images).argmax(1) == labels
    x, y = images[keep], labels[keep]
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 correctly classified images, got {x.shape[0]}")
    settings = dict(settings or {})
    # The model by its weights, not its name: two checkpoints never share cache entries.
    settings.update(n=int(x.shape[0]), digest=tensor_digest(x), model_digest=model_digest(model))
    attack_key = _key(settings)  # attacks do not depend on the detector: a new h or T reuses them
    settings.update(method=detector.method, T=detector.num_directions, K=detector.classes,
                    estimator=detector.estimator, seed=detector.seed,
                    deflation_k=detector.deflation_k if detector.estimator == "deflated" else None)
    if detector.estimator == "deflated" and detector.deflation_basis_size is not None:
        # only when set: the cache keys of runs with the default stay as they were
        settings.update(deflation_basis_size=detector.deflation_basis_size)
    cache = None if out_dir is None else Path(out_dir) / "cache"
    # What the probe's decisions (scale, orientation, recovery rule) depend on beyond the scores.
    probe_settings = dict(orientation=detector.orientation_rule, probe_eps=detector.probe_eps,
                          probe_norm=detector.probe_norm)
    scale_choice = None
    if scales is not None:
        scales = [float(s) for s in scales]
        choice_key = _key(dict(settings, scales=scales, **probe_settings))
        scale_choice = ScaleChoice(**_cached(None if cache is None else cache / f"scale-{choice_key}.pt",
                                             lambda: detector.choose_scale(x, scales).__dict__))
        detector.h = scale_choice.h
    settings.update(h=detector.h)
    key = _key(settings)
    clean = _cached(None if cache is None else cache / f"clean-{key}.pt", lambda: _scores(model, detector, x))
    rho_c = clean["rho"].numpy()
    probe_key = _key(dict(settings, **probe_settings))
    orientation, recovery = _cached(None if cache is None else cache / f"probe-{probe_key}.pt",
                                    lambda: {"o": detector.resolve_orientation(x, torch.from_numpy(rho_c))})["o"]
    sign = 1.0 if orientation == "higher" else -1.0
    clean_sign_share = float(np.mean(rho_c < 0))  # the paper's "clean sign": negative curvature
    rows, rho_perturbed = [], {}
    bar = tqdm(attacks.items(), desc="attacks", disable=not progress)
    for name, fn in bar:
        bar.set_postfix_str(name)

        def attack(fn=fn):
            res = fn(model, x, y)
            return {"success": res.success.cpu(), "norms": res.norms.double().cpu(),
                    "adversarial": res.adversarial[res.success].cpu()}

        a = _cached(None if cache is None else cache / f"attack-{name}-{attack_key}.pt", attack)

        def score(a=a):
            adv = a["adversarial"].to(x.device)
            return _scores(model, detector, adv) if adv.shape[0] else {}

        r = {"success": a["success"], "norms": a["norms"]}
        r.update(_cached(None if cache is None else cache / f"scores-{name}-{key}.pt", score))
        rows.extend(_rows(name, r, clean, y, sign, recovery, fpr))
        if "rho" in r:
            rho_perturbed[name] = r["rho"].numpy()
    settings["recovery"] = recovery
    return EvaluationReport(rows, orientation, clean_sign_share, int(x.shape[0]), settings, rho_c, rho_perturbed,
                            scale_choice)


def _rows(name, r, clean, y, sign, recovery_rule, fpr) -> list:
    success = r["success"]
    n = int(success.sum())
    rate = float(success.double().mean())
    med = float(r["norms"][success].median()) if n else float("nan")
    nan = float("nan")
    if n == 0:
        return [ScoreRow(name, s, 0, rate, med, nan, nan, nan, nan, nan, nan)
                for s in ("curvext", "max-softmax", "feature-squeezing")]
    rho_c, rho_p = sign * clean["rho"].numpy(), sign * r["rho"].numpy()
    m = metrics.detection_metrics(rho_c, rho_p, fpr=fpr)
    flagged = rho_p >= m.threshold
    candidate = recovered_labels(r["per_class"], recovery_rule, r.get("competitors")).numpy()
    final = np.where(flagged, candidate, r["predicted"].numpy())
    original = y[success].cpu().numpy()
    recovery = float(np.mean(final == original))
    rows = [ScoreRow(name, "curvext", n, rate, med, m.auc, m.accuracy, m.tpr_at_fpr, recovery,
                     float(np.mean(candidate == original)), float(np.mean(r["rho"].numpy() >= 0)),
                     _paired_shift(rho_c[success.numpy()], rho_p))]
    for score in ("max-softmax", "feature-squeezing"):
        mb = metrics.detection_metrics(clean[score].numpy(), r[score].numpy(), fpr=fpr)
        rec, rec_all = nan, nan
        if "runner-up" in r:  # baseline recovery: flagged images get the model's second class
            runner_up = r["runner-up"].numpy()
            final = np.where(r[score].numpy() >= mb.threshold, runner_up, r["predicted"].numpy())
            rec, rec_all = float(np.mean(final == original)), float(np.mean(runner_up == original))
        rows.append(ScoreRow(name, score, n, rate, med, mb.auc, mb.accuracy, mb.tpr_at_fpr, rec, rec_all, nan,
                             _paired_shift(clean[score].numpy()[success.numpy()], r[score].numpy())))
    return rows


def _paired_shift(clean_same_images: np.ndarray, perturbed: np.ndarray) -> float:
    """Share of pairs with ``perturbed > clean`` (ties count half), both oriented so that higher
    means perturbed; ``clean_same_images[i]`` is the clean score of perturbed image i's source."""
    diff = perturbed - clean_same_images
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def write_outputs(report: EvaluationReport, out_dir: str | os.PathLike, prefix: str = "eval") -> list[Path]:
    """Markdown, CSV and Parquet tables, the ROC plot and the rho histogram; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}.md", out / f"{prefix}.csv", out / f"{prefix}.parquet",
             out / f"{prefix}-roc.png", out / f"{prefix}-rho-hist.png"]
    header = (f"clean images: {report.n_clean}; perturbed expected **{report.orientation}**, recovery by "
              f"{report.settings.get('recovery', 'max')} curvature; clean images with rho < 0 (the paper's "
              f"clean sign): {100 * report.clean_sign_share:.1f}%\n\n")
    paths[0].write_text(header + report.table() + "\n")
    df = report.dataframe()
    df.to_csv(paths[1], index=False)
    df.to_parquet(paths[2], index=False)
    plots.roc_curves(report, paths[3])
    plots.rho_histogram(report, paths[4])
    return paths
