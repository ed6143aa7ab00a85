"""Tests of curvext.detection.metrics against small hand-computed examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curvext.detection import metrics


def test_perfect_separation():
    m = metrics.detection_metrics([0.1, 0.2, 0.3], [0.5, 0.9])
    assert m.auc == 1.0 and m.accuracy == 1.0 and m.tpr_at_fpr == 1.0
    assert 0.3 < m.threshold <= 0.5 and (m.n_clean, m.n_perturbed) == (3, 2)


def test_hand_computed_overlap():
    clean = [1.0, 2.0, 3.0, 6.0]
    pert = [4.0, 5.0, 7.0]
    # pairs (p > c): 4 beats 3 of 4, 5 beats 3, 7 beats 4 -> 10 of 12
    m = metrics.detection_metrics(clean, pert, fpr=0.05)
    assert m.auc == pytest.approx(10 / 12)
    # best accuracy: t = 4 flags {4,5,7,6}: TP 3, FP 1 -> 6/7 correct
    assert m.accuracy == pytest.approx(6 / 7) and m.threshold == 4.0
    # FPR <= 5% allows no clean flagged: t = 7 flags only 7 -> TPR 1/3
    assert m.tpr_at_fpr == pytest.approx(1 / 3)
    assert metrics.tpr_at_fpr(clean, pert, fpr=0.25) == 1.0  # one clean false positive allowed


def test_ties_count_half_and_reversed_orientation():
    assert metrics.detection_metrics([1.0, 1.0], [1.0, 1.0]).auc == 0.5
    m = metrics.detection_metrics([5.0, 6.0], [1.0, 2.0])
    assert m.auc == 0.0 and metrics.detection_metrics([-5.0, -6.0], [-1.0, -2.0]).auc == 1.0


def test_calibrate_threshold_from_clean_only():
    clean = np.arange(1.0, 21.0)  # 1..20
    t = metrics.calibrate_threshold(clean, fpr=0.05)  # flag at most 1 of 20
    assert t == 20.0 and np.mean(clean >= t) == 0.05
    assert metrics.calibrate_threshold(clean, fpr=0.10) == 19.0
    # fewer than 1/fpr samples: nothing may be flagged
    t0 = metrics.calibrate_threshold([1.0, 2.0, 3.0], fpr=0.05)
    assert t0 > 3.0 and t0 == np.nextafter(3.0, math.inf)
    # ties: [1,2,2,2] at 50%: t=2 would flag 3/4, so t must be above 2
    assert metrics.calibrate_threshold([1.0, 2.0, 2.0, 2.0], fpr=0.5) > 2.0


def test_accepts_tensors_and_validates():
    m = metrics.detection_metrics(torch.tensor([0.0, 1.0]), torch.tensor([2.0]))
    assert m.auc == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        metrics.detection_metrics([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        metrics.detection_metrics([], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        metrics.detection_metrics(np.zeros((2, 2)), [1.0])
    with pytest.raises(ValueError, match="fpr"):
        metrics.calibrate_threshold([1.0], fpr=1.5)
