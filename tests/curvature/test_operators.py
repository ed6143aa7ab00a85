"""curvext.curvature.operators.CurvatureOperator against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from curvext.curvature.operators import CurvatureOperator
from tests.curvature.test_quadratic_forms import Quadratic


class Circle(torch.nn.Module):
    """Class 0 inside the disk of radius R (f_0 = 0), class 1 outside (f_1 = |x|^2 - R^2)."""

    def __init__(self, R):
        super().__init__()
        self.R = R

    def forward(self, x):
        z = x.reshape(x.shape[0], -1)
        f1 = (z * z).sum(1) - self.R**2
        return torch.stack([torch.zeros_like(f1), f1], dim=1)


@pytest.mark.parametrize("method", ["autograd", "fd"])
def test_circle_curvature_is_one_over_R(method):
    R = 2.5
    angles = torch.tensor([0.1, 1.0, 2.0, 4.0], dtype=torch.float64)
    x = (R * torch.stack([angles.cos(), angles.sin()], 1)).reshape(4, 1, 1, 2)
    G = CurvatureOperator(Circle(R).eval(), x, torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                          method=method, h=0.01)
    M = G.dense()
    w = torch.linalg.eigvalsh(M)
    # One exact zero (the normal) and +1/R along the tangent: the class's own region is convex.
    torch.testing.assert_close(w[:, 0], torch.zeros(4, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(w[:, 1], torch.full((4,), 1 / R, dtype=torch.float64), atol=1e-9, rtol=0)
    # From outside (own class 1, F = f_0 - f_1) the same circle has curvature -1/R.
    G2 = CurvatureOperator(Circle(R).eval(), x * 1.0, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long),
                           method=method, h=0.01)
    lowest = torch.linalg.eigvalsh(G2.dense())[:, 0]
    assert torch.allclose(lowest, torch.full((4,), -1 / R, dtype=torch.float64), atol=1e-9)
    assert math.isfinite(float(G.grad_norm.sum()))


def test_quadratic_classifier_matches_projected_hessian():
    model = Quadratic(L=3, d=10).eval()
    x = torch.randn(3, 1, 2, 5, dtype=torch.float64)
    top = model(x).topk(2, 1).indices
    a, c = top[:, 1], top[:, 0]
    G = CurvatureOperator(model, x, a, c).dense()
    z = x.reshape(3, -1)
    for b in range(3):
        H = model.A[a[b]] - model.A[c[b]]
        g = H @ z[b] + model.b[a[b]] - model.b[c[b]]
        n = g / g.norm()
        P = torch.eye(10, dtype=torch.float64) - torch.outer(n, n)
        torch.testing.assert_close(G[b], P @ H @ P / g.norm(), rtol=1e-10, atol=1e-12)


def test_subspace_restriction():
    model = Quadratic(L=3, d=10).eval()
    x = torch.randn(2, 1, 2, 5, dtype=torch.float64)
    top = model(x).topk(2, 1).indices
    U = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64))[0]
    full = CurvatureOperator(model, x, top[:, 1], top[:, 0]).dense()
    sub = CurvatureOperator(model, x, top[:, 1], top[:, 0], basis=U).dense()
    torch.testing.assert_close(sub, U.T @ full @ U, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="basis must be"):
        CurvatureOperator(model, x, top[:, 1], top[:, 0], basis=torch.randn(7, 2, dtype=torch.float64))


def test_tangent_coordinates_give_exactly_the_tangent_spectrum():
    model = Quadratic(L=3, d=10).eval()
    x = torch.randn(3, 1, 2, 5, dtype=torch.float64)
    top = model(x).topk(2, 1).indices
    a, c = top[:, 1], top[:, 0]
    G = CurvatureOperator(model, x, a, c, tangent_coords=True)
    idx = torch.arange(3)
    W = torch.randn(3, 9, dtype=torch.float64)
    E = G.embed(W, idx)
    # Embedded vectors are tangent, isometric, and the coordinates invert the embedding.
    assert float((E.flatten(1) * G.normal.flatten(1)).sum(1).abs().max()) < 1e-12
    torch.testing.assert_close(E.flatten(1).norm(dim=1), W.norm(dim=1))
    torch.testing.assert_close(G.coordinates(E, idx), W)
    # Spectrum: the 9 tangent eigenvalues of P H P / |g| (closed form), no normal zero.
    dense = G.dense()
    assert dense.shape == (3, 9, 9)
    z = x.reshape(3, -1)
    for b in range(3):
        H = model.A[a[b]] - model.A[c[b]]
        g = H @ z[b] + model.b[a[b]] - model.b[c[b]]
        n = g / g.norm()
        T = torch.linalg.qr(torch.cat([n[:, None], torch.randn(10, 9, dtype=torch.float64)], 1))[0][:, 1:]
        torch.testing.assert_close(torch.linalg.eigvalsh(dense[b]), torch.linalg.eigvalsh(T.T @ H @ T / g.norm()),
                                   rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="cannot be combined"):
        CurvatureOperator(model, x, a, c, basis=torch.eye(10, 2, dtype=torch.float64), tangent_coords=True)
