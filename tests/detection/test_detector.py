"""CurvatureDetector (Algorithm 2) against a per-image, per-class dense-Hessian reference."""
from __future__ import annotations

import re

import pytest
import torch

from curvext.detection.detector import CurvatureDetector
from tests.curvature.test_quadratic_forms import SmoothNet


def reference_scores(model, x, V, K=None):
    """Algorithm 2 written out literally: loops over images and classes, dense Hessians."""
    B = x.shape[0]
    L = model(x).shape[1]
    rho = torch.zeros(B, dtype=torch.float64)
    per_class = torch.full((B, L), float("nan"), dtype=torch.float64)
    for b in range(B):
        z = x[b].reshape(-1).clone()
        logits = model(z.reshape(1, *x.shape[1:]))[0]
        kh = int(logits.argmax())
        order = [int(c) for c in logits.argsort(descending=True) if int(c) != kh]
        chosen = order if K is None else order[:K]
        for i in chosen:
            F = lambda y, i=i: (lambda o: o[0, i] - o[0, kh])(model(y.reshape(1, *x.shape[1:])))  # noqa: E731
            g = torch.autograd.functional.jacobian(F, z)
            H = torch.autograd.functional.hessian(F, z)
            n = g / g.norm()
            P = torch.eye(z.numel(), dtype=torch.float64) - torch.outer(n, n)
            total = 0.0
            for v in V.reshape(V.shape[0], -1):
                u = P @ v
                total += float(u @ H @ u / g.norm())
            per_class[b, i] = total
        rho[b] = torch.nansum(per_class[b]) / ((len(chosen) + 1) * V.shape[0])
    return rho, per_class


@pytest.mark.parametrize("classes", [None, 2])
def test_rho_matches_literal_algorithm(classes):
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=5, classes=classes, method="autograd", seed=7)
    s = det.score(x)
    V = det.directions(x.shape[1:], x.device, x.dtype)
    rho, per_class = reference_scores(model, x, V, classes)
    torch.testing.assert_close(s.rho, rho, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s.per_class, per_class, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert torch.equal(s.predicted, model(x).argmax(1))
    # competitors: the classes in the sum, by decreasing logit, the predicted one excluded.
    ranked = model(x).argsort(dim=1, descending=True)[:, 1:]
    assert torch.equal(s.competitors, ranked[:, : s.competitors.shape[1]])
    assert s.competitors.shape[1] == (4 if classes is None else 2)  # L = 5 logits


def test_same_seed_same_rho_regardless_of_batching():
    model = SmoothNet(torch.nn.ReLU()).eval()
    x = torch.rand(9, 1, 4, 4, dtype=torch.float64)
    a = CurvatureDetector(model, num_directions=6, method="fd2", seed=3, batch_size=4).score(x).rho
    b = CurvatureDetector(model, num_directions=6, method="fd2", seed=3, batch_size=100).score(x).rho
    c = CurvatureDetector(model, num_directions=6, method="fd2", seed=4).score(x).rho
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_calibrate_and_detect_follow_orientation():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(40, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=4, method="autograd", orientation="auto").calibrate(x, fpr=0.1)
    rho = det.score(x).rho
    assert det.orientation == ("higher" if float(rho.median()) < 0 else "lower")
    fixed = CurvatureDetector(model, num_directions=4, method="autograd", orientation="higher")
    assert fixed.calibrate(x).orientation == "higher"
    flagged = det.detect(x).perturbed
    # 10% false positives on the calibration set itself (quantile threshold, ties aside).
    assert abs(float(flagged.double().mean()) - 0.1) <= 0.05
    out = det.detect(x)
    assert torch.equal(out.recovered[~out.perturbed], out.predicted[~out.perturbed])
    assert (out.recovered[out.perturbed] != out.predicted[out.perturbed]).all()
    # Recovery is Algorithm 2's argmax of the per-class sums.
    s = det.score(x)
    best = torch.nan_to_num(s.per_class, nan=-float("inf")).argmax(1)
    assert torch.equal(out.recovered[out.perturbed], best[out.perturbed])


def test_bad_inputs():
    model = SmoothNet(torch.nn.Softplus()).eval()
    det = CurvatureDetector(model, num_directions=2, method="autograd")
    with pytest.raises(RuntimeError, match="not calibrated"):
        det.detect(torch.rand(2, 1, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape("x must be a (B, C, H, W) batch")):
        det.score(torch.rand(2, 16, dtype=torch.float64))
    bad = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape("non-finite values in image(s) [2]")):
        det.score(bad)
    with pytest.raises(ValueError, match=re.escape("input range [0.0, 1.0]; image(s) [0]")):
        det.score(torch.rand(2, 1, 4, 4, dtype=torch.float64) + torch.tensor([2.0, 0.0]).view(2, 1, 1, 1).double())
    with pytest.raises(ValueError, match="method must be one of"):
        CurvatureDetector(model, method="exact")
    with pytest.raises(ValueError, match="num_directions must be a positive int"):
        CurvatureDetector(model, num_directions=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        CurvatureDetector(model, batch_size=0)
    train_model = SmoothNet(torch.nn.Softplus()).train()
    with pytest.raises(ValueError, match="must be in eval mode"):
        CurvatureDetector(train_model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_exactly_and_refuses_finite_differences(dtype, caplog):
    import copy

    from curvext import data
    from curvext.autodiff import taylor_plan
    from curvext.data import zoo

    model = zoo.train("lenet", "smooth", "digits").model
    x = data.load_digits("test").subset(8).images
    half = copy.deepcopy(model).to(dtype)
    with caplog.at_level("WARNING", logger="curvext.autodiff.taylor_plan"):
        rho = CurvatureDetector(half, num_directions=8, classes=3, method="autograd").score(x.to(dtype)).rho
    assert "differs from" not in caplog.text  # its rounding is not taken for an aliasing bug
    assert taylor_plan.plan_for(half).checked
    exact = CurvatureDetector(model, num_directions=8, classes=3, method="autograd").score(x).rho
    # Half-precision rounding (eps 1e-3 / 8e-3) through a few layers; a wrong statistic is off by O(1).
    torch.testing.assert_close(rho.float(), exact, rtol=0.1, atol=0.02 * float(exact.abs().max()))
    for method in ("fd", "fd2"):
        with pytest.raises(ValueError, match=re.escape(f"x is {dtype}: method={method!r} takes second differences")):
            CurvatureDetector(half, num_directions=8, method=method).score(x.to(dtype))
    if dtype == torch.bfloat16:  # float32 images, but the model would run in bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
                ValueError, match=re.escape("autocast runs the model in torch.bfloat16: method='fd2'")):
            CurvatureDetector(model, num_directions=8, method="fd2").score(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # which leaves float64 models in float64
            double = copy.deepcopy(model).double()
            CurvatureDetector(double, num_directions=8, method="fd2").score(x.double())


def test_fit_threshold_picks_the_separating_orientation():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(30, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=4, method="autograd")
    rho = det.score(x).rho
    order = rho.argsort()
    low, high = x[order[:15]], x[order[15:]]
    det.fit_threshold(high, low)  # "perturbed" images have the lower rho here
    assert det.orientation == "lower"
    assert bool(det.detect(low).perturbed.all()) and not bool(det.detect(high).perturbed.any())


def test_probe_orientation_agrees_with_attacked_images():
    from curvext import data
    from curvext.adversarial import attacks
    from curvext.data import zoo

    model = zoo.train("lenet", "relu", "digits").model
    x = data.load_digits("test").images[:80]
    det = CurvatureDetector(model, num_directions=8, method="fd2", h=0.1).calibrate(x)
    # An independent attack (CW, not the probe's PGD) moves rho to the side the probe chose.
    cw = attacks.carlini_wagner(model, x, confidence=5.0, steps=30)
    shift = det.score(cw.adversarial[cw.success]).rho.median() - det.score(x).rho.median()
    assert det.orientation == ("higher" if float(shift) > 0 else "lower")
    # The probe suggests the rule that gives most probe images back their labels ("max" on
    # ties); recovery stays Algorithm 2's "max" unless recovery="probe" adopts the suggestion.
    from curvext.detection.recovery import RECOVERY_RULES, recovered_labels

    p = det.probe(x)
    probe, truth = p.images, p.labels
    s = det.score(probe)
    hits = [int((recovered_labels(s.per_class, r, s.competitors) == truth).sum()) for r in RECOVERY_RULES]
    assert det.suggested_recovery == RECOVERY_RULES[hits.index(max(hits))] and det.recovery == "max"
    adopting = CurvatureDetector(model, num_directions=8, method="fd2", h=0.1, recovery="probe").calibrate(x)
    assert adopting.recovery == adopting.suggested_recovery == det.suggested_recovery
    fixed = CurvatureDetector(model, num_directions=8, method="fd2", h=0.1, recovery="min-top2").calibrate(x)
    assert fixed.recovery == "min-top2" and fixed.suggested_recovery == det.suggested_recovery
    assert CurvatureDetector(model, num_directions=8, method="fd2", h=0.1,
                             orientation="higher").calibrate(x).suggested_recovery is None


def test_method_auto_follows_the_model_and_is_logged(caplog):
    """CurvatureDetector(model) picks fd2 for a piecewise-linear model and autograd for a smooth
    one, as the command line does, and says so."""
    import logging

    from curvext.detection.config import DEFAULT_SCALE

    with caplog.at_level(logging.INFO, logger="curvext.detection.config"):
        relu = CurvatureDetector(SmoothNet(torch.nn.ReLU()).eval())
        smooth = CurvatureDetector(SmoothNet(torch.nn.Softplus()).eval(), compile=False)
    assert relu.method == "fd2" and relu.h == DEFAULT_SCALE
    assert smooth.method == "autograd" and smooth.h == 0.0
    assert "method 'auto' -> fd2" in caplog.text and "method 'auto' -> autograd" in caplog.text
    given = CurvatureDetector(SmoothNet(torch.nn.ReLU()).eval(), h=0.2)
    assert given.method == "fd2" and given.h == 0.2
    # compile applies to the exact method only: dropped where auto resolves to fd2
    assert not CurvatureDetector(SmoothNet(torch.nn.ReLU()).eval(), compile=True).config.compile


def test_recovered_labels_rules_skip_classes_outside_the_sum():
    from curvext.detection.recovery import recovered_labels

    per_class = torch.tensor([[float("nan"), 2.0, -1.0, float("nan")], [0.5, float("nan"), 3.0, -4.0]])
    assert recovered_labels(per_class, "max").tolist() == [1, 2]
    assert recovered_labels(per_class, "min").tolist() == [2, 3]
    # "-top2": only the two highest-scoring competing classes (by logit) may win.
    competitors = torch.tensor([[2, 1], [2, 0]])
    assert recovered_labels(per_class, "max-top2", competitors).tolist() == [1, 2]
    assert recovered_labels(per_class, "min-top2", competitors).tolist() == [2, 0]
    competitors = torch.tensor([[1, 2], [0, 3]])  # row 1: class 2 (largest sum) is not in the top 2
    assert recovered_labels(per_class, "max-top2", competitors).tolist() == [1, 0]
    with pytest.raises(ValueError, match="competitors"):
        recovered_labels(per_class, "max-top2")
    with pytest.raises(ValueError, match="rule"):
        recovered_labels(per_class, "median")


@pytest.mark.parametrize("norm, eps", [("l2", 0.6), ("linf", 0.2)])
def test_probe_perturbs_each_image_at_the_smallest_radius_that_flips_it(norm, eps):
    from curvext import data
    from curvext.adversarial import attacks
    from curvext.data import zoo
    from curvext.detection.probe import PROBE_RADII

    model = zoo.train("lenet", "relu", "digits").model
    x = data.load_digits("test").images[:60]
    det = CurvatureDetector(model, num_directions=2, method="fd2", probe_eps=eps, probe_norm=norm)
    p = det.probe(x)
    adversarial, labels, flipped = p.images, p.labels, p.flipped
    assert adversarial.shape[0] == labels.shape[0] == int(flipped.sum()) > 0
    with torch.no_grad():
        assert (model(adversarial).argmax(1) != labels).all()
        assert torch.equal(labels, model(x[flipped]).argmax(1))
    delta = (adversarial - x[flipped]).flatten(1)
    norms = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (norms <= eps * PROBE_RADII[-1] + 1e-5).all()
    # The first radius is tried on every image: its flips are exactly those of a plain PGD run.
    first = attacks.pgd(model, x, eps=eps * PROBE_RADII[0], norm=norm, steps=20, seed=det.seed)
    assert bool(first.success.any()) and bool((flipped & ~first.success).any())  # later radii add images
    assert (flipped[first.success]).all()
    small = first.success[flipped]
    torch.testing.assert_close(adversarial[small], first.adversarial[first.success])
    assert (norms[~small] > eps * PROBE_RADII[0] - 1e-5).all()  # only images the small radius could not flip


def test_probe_norm_default_radius_and_validation():
    det = CurvatureDetector(SmoothNet(torch.nn.Softplus()).eval(), probe_norm="linf")
    x = torch.rand(3, 1, 4, 4)
    assert det.config.probe_radius(x[0].numel()) == 0.2
    assert CurvatureDetector(det.model).config.probe_radius(x[0].numel()) == pytest.approx(0.05 * 4)
    with pytest.raises(ValueError, match="probe_norm"):
        CurvatureDetector(det.model, probe_norm="l1")
    with pytest.raises(ValueError, match="probe_eps"):
        CurvatureDetector(det.model, probe_eps=0.0)


def _same_on(device: str):
    """Scores, detection and the probe-driven calibration on ``device`` against the CPU."""
    import copy

    from curvext import data
    from curvext.data import zoo

    relu = zoo.train("lenet", "relu", "digits").model
    smooth = SmoothNet(torch.nn.Softplus()).eval()
    x64 = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    for method in ("autograd", "fd", "fd2"):
        cpu = CurvatureDetector(smooth, num_directions=5, method=method, h=0.1, seed=3).score(x64)
        dev = CurvatureDetector(copy.deepcopy(smooth).to(device), num_directions=5, method=method, h=0.1,
                                seed=3).score(x64.to(device))
        assert dev.rho.device.type == torch.device(device).type
        torch.testing.assert_close(dev.rho.cpu(), cpu.rho, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(dev.per_class.cpu(), cpu.per_class, rtol=1e-7, atol=1e-10, equal_nan=True)
        assert torch.equal(dev.competitors.cpu(), cpu.competitors)
    x = data.load_digits("test").images[:40]
    det_cpu = CurvatureDetector(relu, num_directions=4, method="fd2")
    det_dev = CurvatureDetector(copy.deepcopy(relu).to(device), num_directions=4, method="fd2")
    choice_cpu = det_cpu.choose_scale(x, (0.02, 0.2))
    choice_dev = det_dev.choose_scale(x.to(device), (0.02, 0.2))
    for h in (0.02, 0.2):  # float32 convolutions differ in rounding between devices
        assert abs(choice_dev.separation[h] - choice_cpu.separation[h]) < 0.05
    det_cpu.h = det_dev.h = 0.2
    det_cpu.calibrate(x)
    det_dev.calibrate(x.to(device))
    assert det_dev.orientation == det_cpu.orientation
    out = det_dev.detect(x.to(device))
    assert out.perturbed.device.type == out.recovered.device.type == torch.device(device).type


def test_detector_on_each_device_matches_cpu(device):
    """On "cpu" this only checks that the comparison runs; on a GPU it is the CUDA test."""
    _same_on(device)


def test_probe_is_computed_once_per_images_and_weights(monkeypatch):
    from curvext import data
    from curvext.data import zoo
    from curvext.detection import probe

    model = zoo.train("lenet", "relu", "digits").model
    x = data.load_digits("test").images[:30]
    calls = []
    real = probe.pgd
    monkeypatch.setattr(probe, "pgd", lambda *a, **k: calls.append(1) or real(*a, **k))
    det = CurvatureDetector(model, num_directions=2, method="fd2")
    first = det.probe(x)
    n = len(calls)
    assert n >= 1 and det.probe(x.clone()) is first and len(calls) == n  # same images: reused
    det.probe(x[:20])
    assert len(calls) > n  # other images: probed again
    n = len(calls)
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # an in-place update (e.g. an optimizer step)
    det.probe(x)
    assert len(calls) > n
    n = len(calls)
    det.probe_norm = "linf"  # another probe altogether
    det.probe(x)
    assert len(calls) > n


def test_vision_transformer_rho_matches_literal_algorithm():
    """A torchvision ViT (layer norm, GELU, nn.MultiheadAttention): the exact method needs the
    layer-norm correction and attention on its math backend (curvext.autodiff.forward_mode)."""
    torchvision = pytest.importorskip("torchvision")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16, num_classes=3).double().eval()
    with torch.no_grad():  # torchvision starts the head at zero: every logit would be 0
        model.heads.head.weight.normal_()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=3, method="autograd", seed=1)
    s = det.score(x)
    V = det.directions(x.shape[1:], x.device, x.dtype)
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernel has no double backward
        rho, per_class = reference_scores(model, x, V)
    assert int(torch.isfinite(per_class).sum()) == 4 and bool((rho != 0).all())  # 2 images x 2 competitors
    torch.testing.assert_close(s.rho, rho, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s.per_class, per_class, rtol=1e-9, atol=1e-12, equal_nan=True)
