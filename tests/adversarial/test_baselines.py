"""Tests of curvext.adversarial.baselines against hand-computed references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter
from torch import nn

from curvext import data
from curvext.adversarial import attacks, baselines
from curvext.detection import metrics


class _FixedLogits(nn.Module):
    """Logits = a fixed linear map of the mean pixel value: easy to compute by hand."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([4 * m, torch.zeros_like(m), -4 * m], dim=1)


def _softmax(z):
    e = np.exp(np.asarray(z, dtype=np.float64) - np.max(z))
    return e / e.sum()


def test_max_softmax_hand_computed():
    x = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5)])
    s = baselines.max_softmax_score(_FixedLogits().eval(), x)
    # mean 0: logits (0,0,0) -> 1 - 1/3; mean 0.5: logits (2, 0, -2)
    assert s.shape == (2,)
    assert float(s[0]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(s[1]) == pytest.approx(1 - _softmax([2, 0, -2]).max(), abs=1e-6)


def test_runner_up_labels_hand_computed_and_numpy():
    x = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.25)])
    # logits (2, 0, -2) and (1, 0, -1): the runner-up is class 1 for both.
    assert baselines.runner_up_labels(_FixedLogits().eval(), x).tolist() == [1, 1]
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 7)).eval()
    xs = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = np.argsort(-net(xs).numpy(), axis=1, kind="stable")[:, 1]
    assert baselines.runner_up_labels(net, xs, batch_size=8).tolist() == reference.tolist()
    with pytest.raises(ValueError, match="2 logits"):
        baselines.runner_up_labels(nn.Sequential(nn.Flatten(), nn.Linear(16, 1)).eval(), xs)


def test_bit_depth_reduce():
    x = torch.tensor([0.0, 0.24, 0.49, 0.51, 0.9, 1.0]).view(1, 1, 1, 6)
    assert baselines.bit_depth_reduce(x, 1).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    y = baselines.bit_depth_reduce(x, 2).flatten()  # levels 0, 1/3, 2/3, 1
    torch.testing.assert_close(y, torch.tensor([0, 1 / 3, 1 / 3, 2 / 3, 1, 1]))
    with pytest.raises(ValueError, match="bits"):
        baselines.bit_depth_reduce(x, 0)


def test_median_filter_hand_computed_and_scipy():
    a = torch.tensor([[1.0, 5.0, 2.0],
                      [7.0, 3.0, 9.0],
                      [4.0, 8.0, 6.0]]).view(1, 1, 3, 3)
    out = baselines.median_filter_2x2(a)[0, 0]
    # (1,1): window {1,5,7,3} -> sorted 1,3,5,7 -> upper median 5;  (0,0): {1,1,1,1} -> 1
    # (2,2): window {3,9,8,6} -> 3,6,8,9 -> 8;  (0,1): {1,5,1,5} -> 5
    assert float(out[1, 1]) == 5.0 and float(out[0, 0]) == 1.0
    assert float(out[2, 2]) == 8.0 and float(out[0, 1]) == 5.0
    x = torch.rand(3, 2, 7, 5, generator=torch.Generator().manual_seed(0))
    ref = median_filter(x.numpy(), size=(1, 1, 2, 2))
    np.testing.assert_array_equal(baselines.median_filter_2x2(x).numpy(), ref)


def test_feature_squeezing_hand_computed():
    # one image with mean 0.3 whose 1-bit squeeze has mean 0.5 and median filter leaves it alone
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, :] = 0.6  # top row 0.6, bottom 0 -> mean 0.3; 1-bit -> top 1 -> mean 0.5
    fs = baselines.feature_squeezing_score(_FixedLogits().eval(), x, bits=1)
    p = _softmax([1.2, 0, -1.2])
    expect_bits = np.abs(p - _softmax([2.0, 0, -2.0])).sum()
    # median: the replicated top row pads above, so every 2x2 window holds at least two 0.6 of
    # four and the upper median is 0.6 everywhere: mean 0.6
    mm = 0.6
    expect_med = np.abs(p - _softmax([4 * mm, 0, -4 * mm])).sum()
    assert float(fs.bit_depth[0]) == pytest.approx(expect_bits, abs=1e-6)
    assert float(fs.median[0]) == pytest.approx(expect_med, abs=1e-6)
    assert float(fs.score[0]) == pytest.approx(max(expect_bits, expect_med), abs=1e-6)


def test_bad_inputs():
    m = _FixedLogits().eval()
    with pytest.raises(ValueError, match="input range"):
        baselines.max_softmax_score(m, torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="finite"):
        baselines.feature_squeezing_score(m, torch.full((1, 1, 2, 2), math.nan))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        baselines.max_softmax_score(m, torch.zeros(2, 2))


def test_baselines_catch_minimal_but_not_confident_attacks(attack_lenet):
    """Sanity on a real model: barely-misclassified (CW κ=0) images have low confidence, so
    max-softmax separates them well; CW with a large κ makes them confident again."""
    model = attack_lenet
    ds = data.load_digits("test").subset(60)
    x = ds.images
    clean = baselines.max_softmax_score(model, x)
    near = attacks.carlini_wagner(model, x, confidence=0.0, binary_steps=3, steps=50)
    far = attacks.carlini_wagner(model, x, confidence=8.0, binary_steps=3, steps=50)
    auc_near = metrics.detection_metrics(clean, baselines.max_softmax_score(model, near.adversarial[near.success])).auc
    auc_far = metrics.detection_metrics(clean, baselines.max_softmax_score(model, far.adversarial[far.success])).auc
    assert auc_near > 0.9 and auc_far < auc_near
    fs = baselines.feature_squeezing_score(model, x)
    assert fs.score.shape == (60,) and bool((fs.score >= 0).all() & (fs.score <= 2).all())


def test_logit_margin_hand_computed():
    x = torch.stack([torch.full((1, 2, 2), 0.5), torch.zeros(1, 2, 2)])
    # logits (2, 0, -2): runner-up minus top = -2; logits (0, 0, 0): 0
    assert baselines.logit_margin_score(_FixedLogits().eval(), x).tolist() == [-2.0, 0.0]


def test_noise_consistency_against_a_literal_loop():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    got = baselines.noise_consistency_score(net, x, sigma=0.2, samples=3, seed=7, batch_size=4)
    expected = []
    for start in (0, 4):  # the noise is drawn per group of batch_size images, from the seed
        xb = x[start:start + 4]
        noise = torch.randn((3,) + tuple(xb.shape), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            p = torch.softmax(net(xb), 1)
            k = p.argmax(1)
            for i in range(xb.shape[0]):
                noisy = [torch.softmax(net((xb[i] + 0.2 * noise[s, i]).clamp(0, 1)[None]), 1)[0, k[i]]
                         for s in range(3)]
                expected.append(float(p[i, k[i]]) - np.mean([float(q) for q in noisy]))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    constant = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        constant[1].weight.zero_()
    # logits ignore x: no drop, up to the float32 rounding of a mean of 16 equal probabilities
    assert float(baselines.noise_consistency_score(constant, x).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="sigma"):
        baselines.noise_consistency_score(net, x, sigma=0.0)


def test_differentiable_baselines_equal_the_scores_and_carry_gradients():
    from curvext.adversarial.squeezers import Squeezer

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Softplus(), nn.Linear(8, 4)).eval()
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    squeezer = Squeezer(2, 2, None)
    xg = x.clone().requires_grad_(True)
    diff = baselines.differentiable_baselines(net, xg, squeezer=squeezer, sigma=0.1, samples=4, seed=3)
    plain = {"max-softmax": baselines.max_softmax_score(net, x),
             "logit-margin": baselines.logit_margin_score(net, x),
             "noise-consistency": baselines.noise_consistency_score(net, x, sigma=0.1, samples=4, seed=3),
             "feature-squeezing": baselines.feature_squeezing_score(net, x, squeezer=squeezer).score}
    assert set(diff) == set(baselines.BASELINES)
    for name, value in plain.items():
        torch.testing.assert_close(diff[name].detach(), value, rtol=1e-5, atol=1e-6)
        (g,) = torch.autograd.grad(diff[name].sum(), xg, retain_graph=True)
        assert float(g.abs().sum()) > 0, name  # feature squeezing too: its squeezers pass the gradient through


def test_feature_squeezing_with_non_local_means():
    from curvext.adversarial.squeezers import Squeezer

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 3)).eval()
    fs = baselines.feature_squeezing_score(net, x, squeezer=Squeezer(5, 0, (5, 3, 10.0)))
    assert fs.median is None and fs.nlm is not None
    torch.testing.assert_close(fs.score, torch.maximum(fs.bit_depth, fs.nlm))
