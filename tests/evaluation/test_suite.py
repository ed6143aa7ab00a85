"""curvext.evaluation.suite: the attack rows, and the adaptive attacks bound to calibrated detectors."""
from __future__ import annotations

import math

import pytest
import torch

from curvext.adversarial.squeezers import Squeezer
from curvext.detection.config import DetectorConfig
from curvext.detection.scoring import random_directions
from curvext.evaluation import suite
from curvext.evaluation.suite import ATTACKS, AdaptiveAttack, DefenceContext, attack_suite
from tests.conftest import correctly_classified_digits


@pytest.fixture(scope="module")
def digits(attack_lenet):
    return (attack_lenet, *correctly_classified_digits(attack_lenet, 6, 12))


def _context(config, baselines=False):
    clean = {"rho": (0.0, 1.0)}
    if baselines:
        clean.update({b: (0.0, 1.0) for b in ("max-softmax", "logit-margin", "noise-consistency", "feature-squeezing")})
    return DefenceContext(config, 1.0, clean, Squeezer(1, 2, None), 0.1, 2)


def test_suite_rows_and_selection():
    rows = attack_suite()
    assert list(rows) == ["deepfool", "pgd-linf", "pgd-l2", "cw-l2-k5", "adaptive-pgd", "adaptive-pgd-all",
                          "adaptive-best-of-r"]
    assert [rows[a].kind for a in ("adaptive-pgd", "adaptive-pgd-all", "adaptive-best-of-r")] == [
        "curvature", "all", "best-of"]
    chosen = attack_suite(include=("cw", "adaptive-pgd"), eps_l2=2.0, adaptive_images=5, adaptive_weight=3.0)
    assert list(chosen) == ["cw-l2-k5", "adaptive-pgd"]
    spec = chosen["adaptive-pgd"]
    assert (spec.eps, spec.norm, spec.max_images, spec.weight, spec.confidence) == (2.0, "l2", 5, 3.0, 5.0)
    assert spec.key()["eps"] == 2.0 and set(ATTACKS) >= {"cw", "adaptive-best-of-r"}
    with pytest.raises(ValueError, match="unknown attacks"):
        attack_suite(include=("pgd",))
    # the attacker's scale reaches the adaptive rows only, and enters their cache key
    smooth = attack_suite(include=("adaptive-pgd", "adaptive-best-of-r"), adaptive_h=0.02)
    assert smooth["adaptive-pgd"].h == 0.02 and smooth["adaptive-pgd"].key() != rows["adaptive-pgd"].key()
    assert rows["adaptive-pgd"].h is None  # default: the detector's h
    for bad in (0.0, -1.0, math.inf, "0.1"):
        with pytest.raises(ValueError, match="adaptive_h"):
            attack_suite(adaptive_h=bad)
    with pytest.raises(ValueError, match="kind"):
        AdaptiveAttack("white-box")
    with pytest.raises(ValueError, match="max_images"):
        AdaptiveAttack("curvature", max_images=0)


def test_penalty_is_zero_at_the_clean_median_and_log2_at_the_threshold():
    ctx = DefenceContext(DetectorConfig(method="fd2"), 1.0, {"rho": (2.0, 5.0)}, Squeezer(), 0.1, 2)
    s = torch.tensor([0.0, 2.0, 5.0, 8.0])
    torch.testing.assert_close(ctx.penalty("rho", s), torch.tensor([0.0, 0.0, math.log(2.0), math.log(3.0)]))


def test_adaptive_pgd_draws_fresh_directions_every_step(digits, monkeypatch):
    """EOT: the curvature penalty of step t uses T directions from the attacker's seed for t,
    never the detector's own (seed 0); with eot=False it uses the detector's."""
    model, x, y = digits
    config = DetectorConfig(method="fd2", h=0.05, num_directions=3)
    seen = []
    real = suite.differentiable_curvature

    def spy(model, x, V, method, h, classes=None, **kw):
        seen.append((V.clone(), method, h, kw.get("piecewise_linear")))
        return real(model, x, V, method, h, classes, **kw)

    monkeypatch.setattr(suite, "differentiable_curvature", spy)
    res = AdaptiveAttack("curvature", eps=0.5, steps=2, batch_size=6).bind(_context(config))(model, x, y)
    assert res.adversarial.shape == x.shape and len(seen) == 3  # steps 0, 1, 2
    own = random_directions(x.shape[1:], 3, 0, dtype=x.dtype)
    for step, (V, method, h, piecewise) in enumerate(seen):
        assert (method, h, piecewise) == ("fd2", 0.05, True)
        torch.testing.assert_close(V, random_directions(x.shape[1:], 3, suite.EOT_SEED + step, dtype=x.dtype))
        assert not torch.allclose(V, own)
    seen.clear()
    AdaptiveAttack("curvature", eps=0.5, steps=1, eot=False).bind(_context(config))(model, x, y)
    assert all(torch.equal(V, own) for V, *_ in seen)


def test_fd_detectors_are_attacked_through_fd2_on_relu_models(digits, monkeypatch):
    model, x, y = digits
    methods = []
    real = suite.differentiable_curvature
    monkeypatch.setattr(suite, "differentiable_curvature",
                        lambda m, xx, V, method, *a, **k: methods.append(method) or real(m, xx, V, method, *a, **k))
    AdaptiveAttack("curvature", eps=0.5, steps=1).bind(_context(DetectorConfig(method="fd", h=0.05,
                                                                               num_directions=2)))(model, x, y)
    assert set(methods) == {"fd2"}  # fd's gradient vanishes almost everywhere on a ReLU net


def test_the_attacker_differentiates_rho_at_its_own_scale(digits, monkeypatch):
    model, x, y = digits
    scales = []
    real = suite.differentiable_curvature
    monkeypatch.setattr(suite, "differentiable_curvature",
                        lambda m, xx, V, method, h, *a, **k: scales.append(h) or real(m, xx, V, method, h, *a, **k))
    config = DetectorConfig(method="fd2", h=0.05, num_directions=2)
    for attacker_h, expected in ((None, 0.05), (0.2, 0.2)):
        scales.clear()
        AdaptiveAttack("curvature", eps=0.5, steps=2, h=attacker_h).bind(_context(config))(model, x, y)
        assert scales and set(scales) == {expected}
    assert "rho at h = 0.2 (the detector's: 0.05)" in AdaptiveAttack("curvature", h=0.2).describe(0.05)
    assert "the detector's h = 0.05" in AdaptiveAttack("curvature").describe(0.05)
    assert "exact (autograd) rho" in AdaptiveAttack("curvature", h=0.2).describe(None)


def test_all_detectors_variant_adds_every_baseline(digits, monkeypatch):
    model, x, y = digits
    calls = []
    real = suite.differentiable_baselines

    def spy(m, xx, **kw):
        out = real(m, xx, **kw)
        calls.append((kw["seed"], sorted(out)))
        return out

    monkeypatch.setattr(suite, "differentiable_baselines", spy)
    config = DetectorConfig(method="fd2", h=0.05, num_directions=2)
    res = AdaptiveAttack("all", eps=0.5, steps=1).bind(_context(config, baselines=True))(model, x, y)
    assert res.adversarial.shape == x.shape
    assert [seed for seed, _ in calls] == [suite.EOT_SEED, suite.EOT_SEED + 1]  # fresh noise per step
    assert calls[0][1] == sorted(("max-softmax", "logit-margin", "noise-consistency", "feature-squeezing"))


def test_black_box_variant_queries_the_deployed_detector(digits, monkeypatch):
    model, x, y = digits
    queried = []
    real = suite.score_images
    monkeypatch.setattr(suite, "score_images",
                        lambda m, xx, cfg: queried.append((xx.shape[0], cfg)) or real(m, xx, cfg))
    config = DetectorConfig(method="fd2", h=0.05, num_directions=2)
    res = AdaptiveAttack("best-of", eps=1.0, steps=3, restarts=2).bind(_context(config))(model, x, y)
    assert len(queried) == 2 and all(cfg == config for _, cfg in queried)  # one query per restart
    assert res.norm == "l2" and float(res.norms.max()) <= 1.0 + 1e-5
