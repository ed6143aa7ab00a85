"""Attacks (PGD, Carlini-Wagner, DeepFool within [0, 1]), adaptive attacks against a detector's
score, training-free baseline detectors and feature squeezers."""
from curvext.adversarial.adaptive import adaptive_pgd, best_of_restarts
from curvext.adversarial.attacks import AttackResult, carlini_wagner, deepfool, pgd
from curvext.adversarial.baselines import (
    feature_squeezing_score,
    logit_margin_score,
    max_softmax_score,
    noise_consistency_score,
    runner_up_labels,
)
from curvext.adversarial.squeezers import Squeezer, squeezer_for

__all__ = ["AttackResult", "Squeezer", "adaptive_pgd", "best_of_restarts", "carlini_wagner", "deepfool",
           "feature_squeezing_score", "logit_margin_score", "max_softmax_score", "noise_consistency_score", "pgd",
           "runner_up_labels", "squeezer_for"]
