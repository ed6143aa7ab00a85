"""curvext.adversarial.adaptive: PGD against a differentiable detector score (EOT) and the
black-box best-of-R selection."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from curvext.adversarial import adaptive, attacks
from curvext.curvature.differentiable import differentiable_curvature
from curvext.detection.detector import CurvatureDetector
from tests.adversarial.test_attacks import _check_result
from tests.conftest import correctly_classified_digits


@pytest.fixture(scope="module")
def setup(attack_lenet):
    """(model, x, y): 10 correctly classified digits test images (the session's digits LeNet)."""
    return (attack_lenet, *correctly_classified_digits(attack_lenet, 10, 40))


def test_adaptive_pgd_lowers_the_detectors_rho(setup):
    """Against Algorithm 2's rho (fd2, the detector's h and T, fresh directions every step): the
    adaptive attack's images have a lower oriented rho under the detector's own directions than
    plain PGD's at the same budget, and still fool the model."""
    model, x, y = setup
    det = CurvatureDetector(model, num_directions=8, method="fd2", h=0.05)
    plain = attacks.pgd(model, x, y, eps=1.0, norm="l2", steps=10)
    # the side perturbed images fall on (the detector's orientation, read from the attack itself)
    sign = 1.0 if float(det.score(plain.adversarial).rho.median()) > float(det.score(x).rho.median()) else -1.0

    def penalty(xx, step):  # EOT: 4 fresh directions per step, from seeds the detector does not use
        gen = torch.Generator().manual_seed(1000 + step)
        V = torch.nn.functional.normalize(torch.randn(4, xx[0].numel(), generator=gen), dim=1).reshape(4, *xx.shape[1:])
        return sign * differentiable_curvature(model, xx, V, "fd2", 0.05, piecewise_linear=True).rho

    evading = adaptive.adaptive_pgd(model, x, y, penalty=penalty, eps=1.0, norm="l2", steps=10, weight=1.0,
                                    confidence=2.0, batch_size=5)
    _check_result(model, x, evading, "l2")
    assert float(evading.norms.max()) <= 1.0 + 1e-5
    assert evading.success_rate >= 0.6
    both = evading.success & plain.success
    rho_plain = sign * det.score(plain.adversarial[both]).rho
    rho_evading = sign * det.score(evading.adversarial[both]).rho
    assert float(rho_evading.median()) < float(rho_plain.median())
    assert float((rho_evading < rho_plain).double().mean()) > 0.6


def test_adaptive_pgd_keeps_the_least_suspicious_adversarial_iterate(setup):
    """A penalty the test can evaluate itself (the summed pixels, weight 0 so the path is plain
    PGD on the margin loss): the returned image is adversarial and its penalty is the smallest
    among the adversarial iterates the attack visited, here at most the final one's."""
    model, x, y = setup
    seen = []

    def penalty(xx, step):
        seen.append((xx.detach().clone(), step))
        return xx.flatten(1).sum(1)

    res = adaptive.adaptive_pgd(model, x[:4], y[:4], penalty=penalty, eps=0.3, norm="linf", steps=6, weight=0.0,
                                confidence=50.0, batch_size=4)
    assert [s for _, s in seen] == list(range(7))  # steps 0..6, one group
    with torch.no_grad():
        visited = torch.stack([v for v, _ in seen])  # (7, 4, ...)
        adversarial = torch.stack([model(v).argmax(1) != y[:4] for v in visited])  # (7, 4)
        pen = visited.flatten(2).sum(2).masked_fill(~adversarial, float("inf"))
    for i in range(4):
        if bool(adversarial[:, i].any()):
            assert bool(res.success[i])
            torch.testing.assert_close(res.adversarial[i], visited[int(pen[:, i].argmin()), i])
        else:
            assert not bool(res.success[i])
            torch.testing.assert_close(res.adversarial[i], visited[-1, i])  # never adversarial: the last iterate


class _Threshold(nn.Module):
    """Class 1 when the pixel sum exceeds 4, else class 0: two logits (s - 4, 4 - s)."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([4 - s, s - 4], dim=1)


def test_best_of_restarts_keeps_the_least_suspicious_successful_run():
    model = _Threshold().eval()
    x = torch.tensor([0.1, 0.2, 0.05, 0.24]).view(4, 1, 1, 1).expand(4, 1, 4, 4).contiguous()  # sums 1.6 .. 3.84
    y = torch.zeros(4, dtype=torch.long)

    def attack(m, xx, yy, seed):  # restart r adds 0.05 r to every pixel: sum + 0.8 r
        adv = (xx + 0.05 * seed).clamp(0, 1)
        with torch.no_grad():
            pred = m(adv).argmax(1)
        return attacks.AttackResult(adv, pred != yy, attacks.perturbation_norms(adv - xx, "l2"), "l2", yy, pred)

    # suspicion: distance of the pixel sum from 5.2 (the detector prefers sums near 5.2)
    res = adaptive.best_of_restarts(model, x, y, attack=attack, suspicion=lambda a: (a.flatten(1).sum(1) - 5.2).abs(),
                                    restarts=5, seed=0)
    sums = res.adversarial.flatten(1).sum(1)
    # image 0 (sum 1.6): restarts reach 1.6, 2.4, 3.2, 4.0, 4.8 -> only r = 4 flips it (4.8 > 4)
    # image 1 (sum 3.2): 4.0 (no), 4.8, 5.6, 6.4, 7.2 -> 4.8 and 5.6 are 0.4 away: the first (4.8) stays
    # image 2 (sum 0.8): never above 4 within 4 restarts -> the first run's image (0.8), not adversarial
    # image 3 (sum 3.84): 4.64, 5.44, 6.24, 7.04 flip -> 5.44 is nearest 5.2
    torch.testing.assert_close(sums, torch.tensor([4.8, 4.8, 0.8, 5.44]), rtol=0, atol=1e-5)
    assert res.success.tolist() == [True, True, False, True]


def test_bad_arguments_are_refused(setup):
    model, x, y = setup
    penalty = lambda xx, step: xx.flatten(1).sum(1)  # noqa: E731
    for kwargs, name in [(dict(eps=0.0), "eps"), (dict(norm="l1"), "norm"), (dict(steps=0), "steps"),
                         (dict(weight=-1.0), "weight"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=name):
            adaptive.adaptive_pgd(model, x[:2], y[:2], penalty=penalty, **{"eps": 0.1, **kwargs})
    with pytest.raises(ValueError, match="penalty must return"):
        adaptive.adaptive_pgd(model, x[:2], y[:2], penalty=lambda xx, step: xx.sum(), eps=0.1, steps=1)
    with pytest.raises(ValueError, match="restarts"):
        adaptive.best_of_restarts(model, x[:2], y[:2], attack=None, suspicion=None, restarts=0)


def test_balance_keeps_a_rough_penalty_from_drowning_the_margin(setup):
    """A penalty with a huge gradient in a fixed random direction: taken as written, it swamps the
    margin and the attack stops fooling the model; balanced, the penalty steers only images that
    already fool it, so they fool it as often as PGD on the margin alone does."""
    model, x, y = setup
    u = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(0))
    rough = lambda xx, step: 1e6 * (xx * u).flatten(1).sum(1)  # noqa: E731
    kwargs = dict(eps=1.0, norm="l2", steps=10, confidence=2.0)
    margin_only = adaptive.adaptive_pgd(model, x, y, penalty=rough, weight=0.0, **kwargs).success_rate
    balanced = adaptive.adaptive_pgd(model, x, y, penalty=rough, **kwargs).success_rate
    as_written = adaptive.adaptive_pgd(model, x, y, penalty=rough, balance=False, **kwargs).success_rate
    assert margin_only >= 0.8 and balanced >= margin_only - 0.1 and as_written <= 0.3
