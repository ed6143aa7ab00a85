"""curvext.curvature.differentiable: Algorithm 2's rho in the autograd graph, against the
detector's own rho and against finite differences of itself."""
from __future__ import annotations

import pytest
import torch

from curvext.curvature.differentiable import differentiable_curvature
from curvext.detection.detector import CurvatureDetector
from tests.curvature.test_quadratic_forms import SmoothNet


@pytest.mark.parametrize("method, act", [("autograd", torch.nn.Softplus()), ("fd", torch.nn.Softplus()),
                                         ("fd2", torch.nn.Softplus()), ("fd2", torch.nn.ReLU())])
@pytest.mark.parametrize("classes", [None, 2])
def test_equals_the_detectors_rho_with_the_same_directions(method, act, classes):
    model = SmoothNet(act).eval()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=6, classes=classes, method=method, h=0.05, seed=4, batch_size=2)
    s = det.score(x)
    V = det.directions(x.shape[1:], x.device, x.dtype)
    d = differentiable_curvature(model, x, V, method, det.h, classes)
    assert d.rho.requires_grad and d.sums.requires_grad
    # float64, the same terms summed in another order (the summed projection against the
    # detector's per-direction kappa for fd/fd2): agreement to rounding. fd2's second differences
    # amplify the logits' rounding by 1/h^2 = 400 (eps |f| / h^2 ~ 1e-13 per direction) and a
    # class's sum cancels terms larger than itself, hence 1e-10 absolute; exact methods do better.
    torch.testing.assert_close(d.rho.detach(), s.rho, rtol=1e-9, atol=1e-10)
    per_class = torch.full_like(s.per_class, float("nan")).scatter(1, d.competitors, d.sums.detach())
    torch.testing.assert_close(per_class, s.per_class, rtol=1e-9, atol=1e-10, equal_nan=True)
    assert torch.equal(d.predicted, s.predicted) and torch.equal(d.competitors, s.competitors)


# e: the central difference's step. Its truncation error is O(e^2) (third derivatives of a
# softplus net are O(1)); its rounding error is about (rounding of rho) / e: ~1e-16 / e for the
# exact method, but ~1e-13 / e for fd2, whose second differences amplify the logits' rounding by
# 1/h^2 = 400. So fd2 takes a larger step and a looser tolerance.
@pytest.mark.parametrize("method, e, rtol", [("autograd", 1e-5, 1e-6), ("fd2", 1e-3, 1e-5)])
def test_gradient_matches_central_differences(method, e, rtol):
    """On a smooth model rho is smooth in x: its autograd gradient along a direction u equals
    the central difference (rho(x + e u) - rho(x - e u)) / 2e up to O(e^2)."""
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    V = torch.nn.functional.normalize(torch.randn(4, 16, dtype=torch.float64), dim=1).reshape(4, 1, 4, 4)
    xg = x.clone().requires_grad_(True)
    rho = differentiable_curvature(model, xg, V, method, 0.05).rho
    (g,) = torch.autograd.grad(rho.sum(), xg)
    u = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plus = differentiable_curvature(model, x + e * u, V, method, 0.05).rho.detach()
    minus = differentiable_curvature(model, x - e * u, V, method, 0.05).rho.detach()
    central = (plus - minus) / (2 * e)
    torch.testing.assert_close((g * u).flatten(1).sum(1), central, rtol=rtol, atol=1e-9)
    assert float(g.abs().sum()) > 0


def test_piecewise_linear_shortcut_keeps_values_and_gradient():
    """On a ReLU net the class gradients are piecewise constant in x: leaving them out of the
    graph changes neither rho nor its gradient (exactly: the dropped terms are zero there)."""
    model = SmoothNet(torch.nn.ReLU()).eval()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    V = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=1).reshape(5, 1, 4, 4)
    out = []
    for flag in (False, True):
        xg = x.clone().requires_grad_(True)
        rho = differentiable_curvature(model, xg, V, "fd2", 0.05, piecewise_linear=flag).rho
        out.append((rho.detach(), torch.autograd.grad(rho.sum(), xg)[0]))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=0, atol=0)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-12, atol=1e-12)
    assert float(out[1][1].abs().sum()) > 0


def test_works_under_no_grad_and_refuses_bad_input():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(3, 16, dtype=torch.float64), dim=1).reshape(3, 1, 4, 4)
    with torch.no_grad():
        assert differentiable_curvature(model, x, V, "fd2", 0.1).rho.requires_grad
    with pytest.raises(ValueError, match="method"):
        differentiable_curvature(model, x, V, "exact", 0.1)
    with pytest.raises(ValueError, match="h must be"):
        differentiable_curvature(model, x, V, "fd", 0.0)
    with pytest.raises(ValueError, match="V must be"):
        differentiable_curvature(model, x, V.reshape(3, 16), "fd2", 0.1)
