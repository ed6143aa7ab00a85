"""curvext.evaluation.rows on synthetic scores: every column against an independent computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import percentileofscore
from sklearn.metrics import roc_auc_score

from curvext.adversarial.baselines import BASELINES
from curvext.evaluation.rows import SCORES, attack_rows, percentile


def _scores(n: int, shift: float, seed: int, L: int = 4) -> dict:
    g = np.random.default_rng(seed)
    per_class = torch.from_numpy(g.normal(size=(n, L)))
    predicted = torch.zeros(n, dtype=torch.long)
    per_class[:, 0] = float("nan")  # the predicted class is outside the sum
    out = {"rho": torch.from_numpy(g.normal(size=n) + shift), "per_class": per_class, "predicted": predicted,
           "competitors": torch.tensor([[1, 2, 3]] * n), "runner-up": torch.ones(n, dtype=torch.long)}
    for i, name in enumerate(BASELINES):
        out[name] = torch.from_numpy(g.normal(size=n) + shift * (i + 1) / 4)
    return out


def test_percentile_is_the_mean_rank_percentile():
    cal = np.array([0.0, 1.0, 1.0, 2.0, 5.0])
    s = np.array([-1.0, 1.0, 1.5, 5.0, 9.0])
    expected = [percentileofscore(cal, v, kind="mean") / 100 for v in s]  # scipy: (strict + weak) / 2
    np.testing.assert_allclose(percentile(cal, s), expected, rtol=0, atol=1e-12)


def test_rows_against_independent_computations():
    n_clean, n_attacked = 40, 30
    clean = _scores(n_clean, 0.0, 0)
    perturbed = _scores(20, 1.5, 1)  # the 20 successful images of the first 30 evaluated ones
    success = torch.zeros(n_attacked, dtype=torch.bool)
    success[torch.randperm(n_attacked, generator=torch.Generator().manual_seed(0))[:20]] = True
    r = {"success": success, "norms": torch.linspace(0.1, 3.0, n_attacked, dtype=torch.float64), **perturbed}
    cal_raw = _scores(50, 0.0, 2)
    sign = -1.0  # orientation "lower": perturbed images expected at smaller rho
    calibration = {"curvext": sign * cal_raw["rho"].numpy(), **{b: cal_raw[b].numpy() for b in BASELINES}}
    y = np.array([int(v) for v in np.random.default_rng(3).integers(1, 4, size=n_clean)])
    rows = attack_rows("a", r, clean, calibration, y, sign, "max", 0.05, {"feature-squeezing": "1-bit"})
    assert [row.score for row in rows] == list(SCORES)
    by = {row.score: row for row in rows}
    original = y[:n_attacked][success.numpy()]
    labels = np.r_[np.zeros(n_clean), np.ones(20)]
    for score in ("curvext",) + BASELINES:
        c = sign * clean["rho"].numpy() if score == "curvext" else clean[score].numpy()
        p = sign * perturbed["rho"].numpy() if score == "curvext" else perturbed[score].numpy()
        assert by[score].auc == pytest.approx(roc_auc_score(labels, np.r_[c, p]), abs=1e-12)
        t = np.sort(calibration[score])[int(np.ceil(0.95 * 50))]  # flags at most 5% of 50 distinct values
        assert by[score].tpr_calibrated == pytest.approx(np.mean(p >= t), abs=1e-12)
        assert by[score].paired_shift == pytest.approx(np.mean(p > c[:n_attacked][success.numpy()]), abs=1e-12)
    assert by["curvext"].median_norm == pytest.approx(float(np.median(r["norms"].numpy()[success.numpy()])))
    # curvext's rules, every image flagged: argmax / argmin of the per-class sums (NaN never wins)
    pc = perturbed["per_class"].numpy()
    top = np.nanargmax(pc, axis=1)
    assert by["curvext"].recovery_max == pytest.approx(np.mean(top == original))
    assert by["curvext"].recovery_min == pytest.approx(np.mean(np.nanargmin(pc, axis=1) == original))
    two = pc[:, [1, 2]]  # competitors[:, :2] = classes 1 and 2
    assert by["curvext"].recovery_max_top2 == pytest.approx(np.mean(np.where(two[:, 0] >= two[:, 1], 1, 2) == original))
    assert by["curvext"].recovery_if_flagged == by["curvext"].recovery_max  # the rule in use
    # baselines recover the runner-up class (all ones here)
    assert by["max-softmax"].recovery_if_flagged == pytest.approx(np.mean(original == 1))
    # combined: the larger clean-calibration percentile of curvext and the best baseline of the row
    partner = max(BASELINES, key=lambda b: by[b].auc)
    assert by["combined"].setting == f"curvext + {partner}" and by["feature-squeezing"].setting == "1-bit"

    def combined(d):
        u = [np.array([percentileofscore(calibration[k], v, kind="mean") / 100 for v in s])
             for k, s in (("curvext", sign * d["rho"].numpy()), (partner, d[partner].numpy()))]
        return np.maximum(*u)

    assert by["combined"].auc == pytest.approx(roc_auc_score(labels, np.r_[combined(clean), combined(perturbed)]),
                                               abs=1e-12)


def test_an_attack_that_never_succeeded_gives_nan_rows():
    r = {"success": torch.zeros(5, dtype=torch.bool), "norms": torch.zeros(5, dtype=torch.float64)}
    rows = attack_rows("a", r, {}, {}, np.zeros(5, dtype=int), 1.0, "max", 0.05)
    assert [row.score for row in rows] == list(SCORES)
    assert all(row.n_perturbed == 0 and np.isnan(row.auc) for row in rows)
