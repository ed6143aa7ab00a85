"""Evaluation of Algorithm 2 against real and adaptive attacks, next to training-free baselines
(docs/method.md §9).

For a model and correctly classified test images: calibrate the detectors on clean calibration
images (a split disjoint from the evaluated ones, or the evaluated images themselves when none
is given): the scale h (fd/fd2), curvext's orientation and the probe's recovery suggestion, and
every score's threshold at the target false-positive rate. Then attack the evaluated images with
each attack (:func:`curvext.evaluation.suite.attack_suite`; the adaptive ones against the
calibrated detectors), keep the successful adversarial images, and report per attack and per
score (curvext's rho, max-softmax, logit margin, noise consistency, feature squeezing set for the
dataset, and curvext combined with the best baseline) the rows of
:mod:`curvext.evaluation.rows`.

Resumable: with ``out_dir``, each attack's adversarial images are saved as soon as they are
computed (``<out_dir>/cache/attack-<attack>-<key>.pt``, keyed by the images, the model's weights
and the caller's settings only; an adaptive attack's key also holds the detectors it evades) and
their scores beside them (``scores-<attack>-<key>.pt``, keyed by the detector's and baselines'
settings too). A killed run loses at most the step in progress, and a rerun with another scale
``h``, T or K scores the cached plain adversarial images again instead of attacking again.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from curvext.adversarial import baselines
from curvext.adversarial.squeezers import Squeezer
from curvext.detection import metrics
from curvext.detection.benign import benign_noise
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scale_selection import ScaleChoice
from curvext.evaluation.report import EvaluationReport, write_outputs
from curvext.evaluation.rows import ScoreRow, attack_rows, oriented
from curvext.evaluation.suite import AdaptiveAttack, AttackFn, DefenceContext, attack_suite
from curvext.utils.atomic_files import atomic_path
from curvext.utils.cache_keys import model_digest, tensor_digest
from curvext.utils.cache_keys import settings_key as _key
from curvext.utils.progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = ["AttackFn", "EvaluationReport", "ScoreRow", "attack_suite", "evaluate", "write_outputs"]
#: images per attack call: the progress bar moves batch by batch (the attacks treat every image on
#: its own; only the random draws of a call, e.g. PGD's random start, depend on where an image
#: falls in it, so the size is part of the cache key)
ATTACK_BATCH = 64
DEFAULT_SQUEEZER = Squeezer(1, 2, None)  # Xu et al.'s MNIST setting (curvext.adversarial.squeezers.squeezer_for)


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


def _scores(model, detector: CurvatureDetector, x: torch.Tensor, squeezer: Squeezer, noise: tuple) -> dict:
    s = detector.score(x)
    sigma, samples = noise
    return {
        "rho": s.rho.double().cpu(),
        "per_class": s.per_class.double().cpu(),
        "predicted": s.predicted.cpu(),
        "competitors": s.competitors.cpu(),
        "max-softmax": baselines.max_softmax_score(model, x).double().cpu(),
        "logit-margin": baselines.logit_margin_score(model, x).double().cpu(),
        "noise-consistency": baselines.noise_consistency_score(model, x, sigma=sigma, samples=samples,
                                                               seed=detector.seed).double().cpu(),
        "feature-squeezing": baselines.feature_squeezing_score(model, x, squeezer=squeezer).score.double().cpu(),
        "runner-up": baselines.runner_up_labels(model, x).cpu(),
    }


def _attack_in_batches(fn, model, x: torch.Tensor, y: torch.Tensor, bar, done: list) -> dict:
    """``fn(model, x, y)`` on ``ATTACK_BATCH`` images at a time, the bar moving per batch;
    ``done[0]``: images attacked so far. Returns success ``(n,)``, norms ``(n,)`` float64 and the
    successful adversarial images, in the order of ``x``."""
    parts = []
    for start in range(0, x.shape[0], ATTACK_BATCH):
        stop = min(x.shape[0], start + ATTACK_BATCH)
        res = fn(model, x[start:stop], y[start:stop])
        parts.append((res.success.cpu(), res.norms.double().cpu(), res.adversarial[res.success].cpu()))
        bar.update(stop - start)
        done[0] = stop
    return {k: torch.cat([part[i] for part in parts]) for i, k in enumerate(("success", "norms", "adversarial"))}


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             detector: CurvatureDetector, attacks: dict | None = None, fpr: float = 0.05,
             out_dir: str | os.PathLike | None = None, settings: dict | None = None,
             scales=None, progress: bool = True, calibration_images: torch.Tensor | None = None,
             squeezer: Squeezer | None = None, noise_sigma: float = baselines.NOISE_SIGMA,
             noise_samples: int = baselines.NOISE_SAMPLES, squeezer_note: str = "") -> EvaluationReport:
    """Run the protocol on ``images (N, C, H, W)`` in [0, 1] with true ``labels (N,)``.

    Only correctly classified images are attacked. ``calibration_images (M, C, H, W)``: clean
    images, disjoint from ``images``, that every choice and threshold is made on (default: the
    evaluated images themselves, an optimistic setting). ``settings`` (JSON-able) identify the
    run in the cache key together with the images; pass everything that changes the results.
    With ``scales`` (candidate h, fd/fd2 detectors), the detector's h is first chosen from the
    calibration images (:meth:`CurvatureDetector.choose_scale`). ``attacks``: row name ->
    ``(model, x, y) -> AttackResult`` or :class:`~curvext.evaluation.suite.AdaptiveAttack`
    (default: :func:`~curvext.evaluation.suite.attack_suite`, all rows). ``squeezer``: feature
    squeezing's settings (default 1-bit depth and 2x2 median, Xu et al.'s MNIST setting), described in
    the report with ``squeezer_note`` appended (e.g. where the setting comes from). The
    detector is left calibrated on the calibration images (orientation, threshold at ``fpr``,
    recovery rule).
    """
    attacks = attack_suite() if attacks is None else attacks
    squeezer = DEFAULT_SQUEEZER if squeezer is None else squeezer
    with torch.no_grad():
        keep = model(images).argmax(1) == labels
    x, y = images[keep], labels[keep]
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 correctly classified images, got {x.shape[0]}")
    disjoint = calibration_images is not None
    cal = calibration_images.to(x.device) if disjoint else x
    if cal.shape[0] < 2:
        raise ValueError(f"calibration_images must hold at least 2 images, got {cal.shape[0]}")
    settings = dict(settings or {})
    # The model by its weights, not its name: two checkpoints never share cache entries.
    settings.update(n=int(x.shape[0]), digest=tensor_digest(x), model_digest=model_digest(model),
                    attack_batch=ATTACK_BATCH)  # an attack's random draws depend on its batch
    attack_key = _key(settings)  # plain attacks do not depend on the detector: a new h or T reuses them
    settings.update(method=detector.method, T=detector.num_directions, K=detector.classes,
                    estimator=detector.estimator, seed=detector.seed,
                    deflation_k=detector.deflation_k if detector.estimator == "deflated" else None,
                    calibration=tensor_digest(cal) if disjoint else None)
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
        choice_key = _key(dict(settings, scales=scales, grid="extend-2x3", **probe_settings))
        scale_choice = ScaleChoice(**_cached(None if cache is None else cache / f"scale-{choice_key}.pt",
                                             lambda: detector.choose_scale(cal, scales).__dict__))
        detector.h = scale_choice.h
    settings.update(h=detector.h)
    noise = (float(noise_sigma), int(noise_samples))
    key = _key(dict(settings, squeezer=[squeezer.bits, squeezer.median, squeezer.nlm], noise=list(noise)))

    def scores_of(images: torch.Tensor, name: str) -> dict:
        return _cached(None if cache is None else cache / f"{name}-{key}.pt",
                       lambda: _scores(model, detector, images, squeezer, noise))

    clean = scores_of(x, "clean")
    cal_scores = scores_of(cal, "calibration") if disjoint else clean
    probe_key = _key(dict(settings, **probe_settings))
    orientation, suggestion = _cached(
        None if cache is None else cache / f"probe-{probe_key}.pt",
        lambda: {"o": detector.resolve_orientation(cal, cal_scores["rho"])})["o"]
    sign = 1.0 if orientation == "higher" else -1.0
    rule = suggestion if detector.config.recovery == "probe" else detector.config.recovery
    calibration = {s: oriented(cal_scores, s, sign) for s in ("curvext",) + baselines.BASELINES}
    thresholds = {s: metrics.calibrate_threshold(v, fpr) for s, v in calibration.items()}
    detector.orientation, detector.recovery, detector.threshold = orientation, rule, sign * thresholds["curvext"]
    detector.suggested_recovery = suggestion if detector.orientation_rule == "probe" else None
    context = DefenceContext(detector.config, sign, {("rho" if s == "curvext" else s): (float(np.median(v)),
                                                                                      thresholds[s])
                                                     for s, v in calibration.items()},
                             squeezer, *noise)
    rho_c = clean["rho"].numpy()
    rows, rho_perturbed, adaptive = [], {}, {}
    counts = {name: min(x.shape[0], spec.max_images or x.shape[0]) if isinstance(spec, AdaptiveAttack)
              else x.shape[0] for name, spec in attacks.items()}
    with progress_bar(total=sum(counts.values()), desc="attacks", unit="img", enabled=progress) as bar:
        for name, spec in attacks.items():
            bar.set_postfix_str(name)
            n = counts[name]
            if isinstance(spec, AdaptiveAttack):
                path_key = _key(dict(settings, attack=spec.key(), squeezer=[squeezer.bits, squeezer.median,
                                                                            squeezer.nlm],
                                     noise=list(noise), orientation=orientation,
                                     calibrated=sorted(context.clean.items())))
                fn = spec.bind(context)
                adaptive[name] = spec.describe(None if detector.method == "autograd" else detector.h)
            else:
                path_key, fn = attack_key, spec

            done = [0]  # images attacked in this run (the rest, if any, came from the cache)
            a = _cached(None if cache is None else cache / f"attack-{name}-{path_key}.pt",
                        lambda fn=fn, n=n, done=done: _attack_in_batches(fn, model, x[:n], y[:n], bar, done))
            bar.update(n - done[0])

            def score(a=a):
                adv = a["adversarial"].to(x.device)
                return _scores(model, detector, adv, squeezer, noise) if adv.shape[0] else {}

            r = {"success": a["success"], "norms": a["norms"]}
            # adaptive attacks: scores per attack
            score_key = key if path_key == attack_key else _key(dict(scores=key, attack=path_key))
            r.update(_cached(None if cache is None else cache / f"scores-{name}-{score_key}.pt", score))
            rows.extend(attack_rows(name, r, clean, calibration, y.cpu().numpy(), sign, rule, fpr))
            if "rho" in r:
                rho_perturbed[name] = r["rho"].numpy()
    settings.update(recovery=rule, squeezer_text=squeezer.describe() + squeezer_note, noise_sigma=noise[0],
                    noise_samples=noise[1], orientation_rule=detector.orientation_rule, probe_norm=detector.probe_norm,
                    adaptive=adaptive)
    clean_fpr = {s: float(np.mean(oriented(clean, s, sign) >= thresholds[s])) for s in thresholds}
    clean_fpr["combined"] = float("nan")  # its threshold depends on the row's partner
    benign = scores_of(benign_noise(cal, detector.seed, detector.config.input_range), "benign")
    benign_fpr = {s: float(np.mean(oriented(benign, s, sign) >= thresholds[s])) for s in thresholds}
    benign_fpr["combined"] = float("nan")
    detector.benign_flag_rate = benign_fpr["curvext"]
    settings.update(fpr=fpr)
    report = EvaluationReport(rows, orientation, float(np.mean(rho_c < 0)), int(x.shape[0]), settings, rho_c,
                              rho_perturbed, scale_choice, int(cal.shape[0]), disjoint, clean_fpr, rule,
                              detector.suggested_recovery, float(detector.threshold), benign_fpr)
    if report.few_images_note() is not None:
        logger.warning(report.few_images_note().replace("**", ""))
    return report
