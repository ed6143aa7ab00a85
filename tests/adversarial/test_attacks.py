"""Tests of curvext.adversarial.attacks on a LeNet trained on sklearn digits (a few seconds), with
cross-checks against torchattacks when it is installed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from curvext.adversarial import attacks
from curvext.data import zoo
from tests.conftest import correctly_classified_digits

HAS_TORCHATTACKS = importlib.util.find_spec("torchattacks") is not None


@pytest.fixture(scope="module")
def setup(attack_lenet):
    """(model, x, y): 60 correctly classified digits test images and their labels."""
    return (attack_lenet, *correctly_classified_digits(attack_lenet, 60, 80))


def _check_result(model, x, res, norm):
    assert res.adversarial.shape == x.shape and res.adversarial.dtype == x.dtype
    assert float(res.adversarial.min()) >= 0.0 and float(res.adversarial.max()) <= 1.0
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    assert torch.equal(res.success, pred != res.labels) and torch.equal(res.adv_labels, pred)
    torch.testing.assert_close(res.norms, attacks.perturbation_norms(res.adversarial - x, norm))
    assert res.norm == norm and res.success.dtype == torch.bool and res.norms.shape == (x.shape[0],)


@pytest.mark.parametrize("norm,eps_small,eps_big", [("linf", 0.02, 0.25), ("l2", 0.2, 2.0)])
def test_pgd_success_and_norm_budget(setup, norm, eps_small, eps_big):
    model, x, y = setup
    weak = attacks.pgd(model, x, y, eps=eps_small, norm=norm, steps=10)
    strong = attacks.pgd(model, x, y, eps=eps_big, norm=norm, steps=20)
    for res, eps in ((weak, eps_small), (strong, eps_big)):
        _check_result(model, x, res, norm)
        assert float(res.norms.max()) <= eps * (1 + 1e-5)
    assert weak.success_rate < 0.5 < 0.9 <= strong.success_rate  # a tiny ball rarely suffices


def test_pgd_seeded_and_labels_default_to_predictions(setup):
    model, x, _ = setup
    a = attacks.pgd(model, x, eps=0.1, steps=5, seed=3)
    b = attacks.pgd(model, x, eps=0.1, steps=5, seed=3)
    c = attacks.pgd(model, x, eps=0.1, steps=5, seed=4)
    assert torch.equal(a.adversarial, b.adversarial) and not torch.equal(a.adversarial, c.adversarial)
    with torch.no_grad():
        assert torch.equal(a.labels, model(x).argmax(1))


def test_cw_reaches_margin_with_small_l2(setup):
    model, x, y = setup
    kappa = 3.0
    res = attacks.carlini_wagner(model, x, y, confidence=kappa, binary_steps=4, steps=60)
    _check_result(model, x, res, "l2")
    assert res.success_rate >= 0.95
    with torch.no_grad():
        margin = attacks._margin(model(res.adversarial), y)
    # successes carry the requested confidence (kept iterates are the ones that reached it)
    assert bool((margin[res.success] >= kappa - 1e-3).all())
    # failures fall back to the clean image
    assert torch.equal(res.adversarial[~res.success], x[~res.success])
    # high-confidence points cost more l2 than barely-misclassified ones
    low = attacks.carlini_wagner(model, x, y, confidence=0.0, binary_steps=4, steps=60)
    both = res.success & low.success
    assert float(low.norms[both].median()) < float(res.norms[both].median())


def test_cw_binary_search_raises_too_small_c(setup):
    """With c far too small one round fails everywhere; the search multiplies c by 10 per round
    until the margin is reached."""
    model, x, y = setup
    one = attacks.carlini_wagner(model, x, y, confidence=3.0, c=0.01, binary_steps=1, steps=60)
    four = attacks.carlini_wagner(model, x, y, confidence=3.0, c=0.01, binary_steps=4, steps=60)
    assert one.success_rate < 0.2 and four.success_rate >= 0.95


def test_model_parameters_untouched(setup):
    model, x, y = setup
    before = [p.detach().clone() for p in model.parameters()]
    attacks.pgd(model, x[:8], y[:8], eps=0.1, steps=3)
    attacks.carlini_wagner(model, x[:8], y[:8], binary_steps=1, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_bad_inputs(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="input range"):
        attacks.pgd(model, x * 2, y, eps=0.1)
    with pytest.raises(ValueError, match="norm"):
        attacks.pgd(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="labels"):
        attacks.pgd(model, x, y[:3], eps=0.1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attacks.carlini_wagner(model, x[0], y)
    with pytest.raises(ValueError, match="kappa"):
        attacks.carlini_wagner(model, x, y, confidence=-1.0)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            attacks.pgd(model, x, y, eps=0.1)
    finally:
        model.eval()


def test_deepfool_wrapper(setup):
    model, x, y = setup
    if importlib.util.find_spec("curvext.geometry.deepfool") is None:
        with pytest.raises(NotImplementedError, match="deepfool"):
            attacks.deepfool(model, x, y)
        return
    res = attacks.deepfool(model, x, y, overshoot=0.02, max_iter=50, num_classes=10)
    _check_result(model, x, res, "l2")
    assert res.success_rate >= 0.95
    # one round: DeepFool's unclamped point, clamped to [0, 1], mostly falls back inside
    assert attacks.deepfool(model, x, y, clip_rounds=1).success_rate < res.success_rate
    # minimal: smaller than an l2 PGD that succeeds as often
    pgd = attacks.pgd(model, x, y, eps=2.0, norm="l2", steps=20)
    assert float(res.norms[res.success].median()) < float(pgd.norms[pgd.success].median())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(setup):
    """Random starts are drawn on the CPU, so a CUDA run follows the CPU one up to float
    differences of the kernels (a few images may part at clamps; rates within 2 of 60)."""
    model, x, y = setup
    cpu = attacks.pgd(model, x, y, eps=0.1, steps=10, seed=5)
    gpu_model = zoo.build("lenet", "relu", "digits")
    gpu_model.load_state_dict(model.state_dict())
    gpu = attacks.pgd(gpu_model.eval().cuda(), x.cuda(), y.cuda(), eps=0.1, steps=10, seed=5)
    assert gpu.adversarial.is_cuda and gpu.success.is_cuda
    assert abs(gpu.success_rate - cpu.success_rate) <= 2 / 60 + 1e-9
    same = ((gpu.adversarial.cpu() - cpu.adversarial).flatten(1).abs().amax(1) < 1e-4).float().mean()
    assert float(same) >= 0.9


# --- cross-checks against torchattacks -------------------------------------------------------
# Without a random start our PGD and torchattacks' are the same algorithm (signed/normalised step,
# projection, clamp), so they must agree image for image, except where a gradient entry is an
# exact zero in one (sum-reduced loss) and a float underflow in the other (mean-reduced), or (l2)
# where the rounding of the normalised step (~1e-7) flips a clamp and the paths part: we allow 2 of
# 60 images to differ by more than 1e-4 in l2 (none by more than 5% of eps), and the success
# rates to differ by at most 2 of 60 images. With random starts
# the random streams differ, so only the success rates are compared, at a radius where both are
# near 100% (tolerance 0.1: the binomial s.d. of a rate near 0.95 over 60 images is 0.03).


@pytest.mark.skipif(not HAS_TORCHATTACKS, reason="torchattacks not installed")
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_matches_torchattacks(setup, norm, eps):
    import torchattacks

    model, x, y = setup
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    steps, step = 10, 2.5 * eps / 10
    theirs = cls(model, eps=eps, alpha=step, steps=steps, random_start=False)(x, y)
    ours = attacks.pgd(model, x, y, eps=eps, norm=norm, step=step, steps=steps, random_start=False)
    gap = (theirs - ours.adversarial).flatten(1).norm(dim=1)
    assert int((gap > 1e-4).sum()) <= 2 and float(gap.max()) <= 0.05 * eps, gap.max()
    with torch.no_grad():
        their_rate = float((model(theirs).argmax(1) != y).float().mean())
    assert abs(their_rate - ours.success_rate) <= 2 / 60 + 1e-9
    theirs_rs = cls(model, eps=2 * eps, alpha=step, steps=steps, random_start=True)(x, y)
    ours_rs = attacks.pgd(model, x, y, eps=2 * eps, norm=norm, step=step, steps=steps)
    with torch.no_grad():
        their_rate = float((model(theirs_rs).argmax(1) != y).float().mean())
    assert their_rate > 0.8 and abs(their_rate - ours_rs.success_rate) <= 0.1


@pytest.mark.skipif(not HAS_TORCHATTACKS, reason="torchattacks not installed")
def test_cw_matches_torchattacks(setup):
    """torchattacks.CW is one round of ours (fixed c, Adam from x, keep the smallest-l2
    misclassified iterate), so with binary_steps=1 the two must agree: success rates within 2 of
    60 images and median l2 within 5% (early abort every steps/10 and float order are the only
    differences). Our binary search over c must then do at least as well."""
    import torchattacks

    model, x, y = setup
    kw = dict(steps=50, lr=0.05)
    theirs = torchattacks.CW(model, c=1.0, kappa=0.0, **kw)(x, y)
    with torch.no_grad():
        their_ok = model(theirs).argmax(1) != y
    their_l2 = (theirs - x).flatten(1).norm(dim=1)
    one = attacks.carlini_wagner(model, x, y, confidence=0.0, c=1.0, binary_steps=1, **kw)
    assert abs(one.success_rate - float(their_ok.float().mean())) <= 2 / 60 + 1e-9
    both = one.success & their_ok
    assert int(both.sum()) >= 30
    ratio = float(one.norms[both].median() / their_l2[both].median())
    assert 0.95 <= ratio <= 1.05, ratio
    full = attacks.carlini_wagner(model, x, y, confidence=0.0, c=1.0, binary_steps=4, **kw)
    assert full.success_rate >= float(their_ok.float().mean())


def test_pgd_mask_leaves_the_other_pixels_exactly_alone(setup):
    model, x, y = setup
    mask = x > 0  # a digit's strokes; the background stays exactly 0
    for norm, eps in (("l2", 1.0), ("linf", 0.2)):
        res = attacks.pgd(model, x, y, eps=eps, norm=norm, steps=10, mask=mask)
        _check_result(model, x, res, norm)
        assert torch.equal(res.adversarial[~mask], x[~mask])
        assert float((res.adversarial - x)[mask].abs().max()) > 0
    full = attacks.pgd(model, x, y, eps=1.0, norm="l2", steps=10)
    assert torch.equal(attacks.pgd(model, x, y, eps=1.0, norm="l2", steps=10, mask=torch.ones_like(mask)).adversarial,
                       full.adversarial)  # an all-True mask is plain PGD
