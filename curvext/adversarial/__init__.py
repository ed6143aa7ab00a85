"""Attacks (PGD, Carlini-Wagner, DeepFool within [0, 1]) and training-free baseline detectors."""
from curvext.adversarial.attacks import AttackResult, carlini_wagner, deepfool, pgd
from curvext.adversarial.baselines import feature_squeezing_score, max_softmax_score, runner_up_labels

__all__ = ["AttackResult", "carlini_wagner", "deepfool", "feature_squeezing_score", "max_softmax_score", "pgd",
           "runner_up_labels"]
