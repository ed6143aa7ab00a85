"""curvext.geometry.subspace on a synthetic model whose curvature lives in a known subspace."""
from __future__ import annotations

import pytest
import torch

from curvext.geometry.subspace import shared_subspace, subspace_vulnerability


class PlantedCurvature(torch.nn.Module):
    """f_0 = w.x (linear), f_1 = -w.x + 1/2 sum_j s_j (u_j.x)^2: the boundary of F = f_1 - f_0
    curves only inside span(U) (U: d x r, orthonormal, orthogonal to w)."""

    def __init__(self, d=40, r=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        Q = torch.linalg.qr(torch.randn(d, r + 1, generator=g, dtype=torch.float64))[0]
        self.register_buffer("w", Q[:, 0])
        self.register_buffer("U", Q[:, 1:])
        self.register_buffer("s", torch.tensor([6.0, -5.0, 4.0], dtype=torch.float64)[:r])

    def forward(self, x):
        z = x.reshape(x.shape[0], -1)
        lin = z @ self.w
        quad = 0.5 * ((z @ self.U) ** 2 * self.s).sum(1)
        return torch.stack([lin, -lin + quad], 1)


def planted_points(model, n=6):
    """n points ``(n, 1, 5, 8)`` with ``U^T x = 0``, so the normal at their boundary points stays
    along w exactly."""
    g = torch.Generator().manual_seed(1)
    noise = 0.3 * torch.randn(n, 40, generator=g, dtype=torch.float64)
    noise = noise - (noise @ model.U) @ model.U.T
    return (noise + 2.0 * model.w).reshape(n, 1, 5, 8)


def principal_angles_cos(A, B):
    return torch.linalg.svdvals(A.T @ B)


@pytest.mark.parametrize("recipe", ["stack", "mean_hessian"])
def test_recovers_planted_subspace(recipe):
    model = PlantedCurvature().eval()
    x = planted_points(model)
    basis = shared_subspace(model, x, dim=3, recipe=recipe, tol=1e-10)
    assert basis.shape == (40, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)
    cos = principal_angles_cos(basis, model.U)
    assert float(cos.min()) > 1 - 1e-6  # all principal angles ~ 0


@pytest.mark.parametrize("recipe", ["stack", "mean_hessian"])
def test_basis_size_reaches_lanczos(recipe, monkeypatch):
    import sys

    calls = []
    for name in ("curvext.geometry.subspace", "curvext.geometry.profiles"):
        module = sys.modules[name]
        real = module.lanczos
        monkeypatch.setattr(module, "lanczos", lambda *a, _real=real, **kw: calls.append(kw["basis_size"])
                            or _real(*a, **kw))
    model = PlantedCurvature().eval()
    basis = shared_subspace(model, planted_points(model), dim=3, recipe=recipe, tol=1e-10, basis_size=9)
    assert calls == [9]
    assert float(principal_angles_cos(basis, model.U).min()) > 1 - 1e-6


@pytest.mark.parametrize("recipe", ["stack", "mean_hessian"])
def test_points_without_a_boundary_are_left_out(recipe, deepfool_fails_on, caplog):
    """An image DeepFool cannot move across the boundary contributes nothing; the planted
    subspace is still recovered from the others, with a warning (mean_hessian) naming it."""
    model = PlantedCurvature().eval()
    x = planted_points(model)
    deepfool_fails_on(2)
    with caplog.at_level("WARNING"):
        basis = shared_subspace(model, x, dim=3, recipe=recipe, tol=1e-10)
    assert "sample(s) [2]" in caplog.text
    assert float(principal_angles_cos(basis, model.U).min()) > 1 - 1e-6


@pytest.mark.parametrize("recipe", ["stack", "mean_hessian"])
def test_no_point_with_a_boundary_is_an_error(recipe, deepfool_fails_on):
    model = PlantedCurvature().eval()
    deepfool_fails_on(*range(6))
    with pytest.raises(ValueError, match="DeepFool changed no image's label"):
        shared_subspace(model, planted_points(model), dim=3, recipe=recipe, tol=1e-10)


def test_vulnerability_inside_vs_random_subspace():
    model = PlantedCurvature(d=40).eval()
    g = torch.Generator().manual_seed(2)
    x = 0.05 * torch.randn(30, 1, 5, 8, generator=g, dtype=torch.float64) + 0.3 * model.w.reshape(1, 1, 5, 8)
    v = subspace_vulnerability(model, x, model.U, norms=[0.5, 1.0], trials=8)
    # Inside span(U) the quadratic term flips labels; random 3-D subspaces barely touch it.
    assert (v.fooling_subspace >= v.fooling_random).all()
    assert float(v.fooling_subspace[-1]) > float(v.fooling_random[-1]) + 0.3
    assert v.chance == pytest.approx((3 / 40) ** 0.5)


def test_bad_arguments():
    model = PlantedCurvature().eval()
    x = torch.randn(2, 1, 5, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="recipe must be one of"):
        shared_subspace(model, x, dim=2, recipe="pca")
    with pytest.raises(ValueError, match="dim must be an int"):
        shared_subspace(model, x, dim=40)
    with pytest.raises(ValueError, match="basis must be"):
        subspace_vulnerability(model, x, torch.randn(10, 2, dtype=torch.float64), norms=[1.0])
    with pytest.raises(ValueError, match="orthonormal"):
        subspace_vulnerability(model, x, 2 * model.U, norms=[1.0])
    with pytest.raises(ValueError, match="norms must be"):
        subspace_vulnerability(model, x, model.U, norms=[-1.0])
    with pytest.raises(ValueError, match="eval mode"):
        shared_subspace(PlantedCurvature().train(), x, dim=2)


def test_fooling_rates_and_deepfool_share_by_hand_on_a_linear_model():
    # Binary linear model, class 0 iff x_0 > 1, images at x_0 = 2 (distance 1 from the plane):
    # noise inside span(e_0) of norm 2 fools exactly the draws pointing toward the plane (about
    # half), noise of norm 0.5 never; a random line of R^40 rarely points along e_0. DeepFool
    # moves along e_0, so its share in span(e_0) is 1 and in the complement 0.
    lin = torch.nn.Linear(40, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0] = 1.0
        lin.bias.copy_(torch.tensor([0.0, 1.0]))
    model = torch.nn.Sequential(torch.nn.Flatten(), lin).eval()
    x = torch.zeros(50, 1, 5, 8, dtype=torch.float64)
    x[:, 0, 0, 0] = 2.0
    eye = torch.eye(40, dtype=torch.float64)
    v = subspace_vulnerability(model, x, eye[:, :1], norms=[0.5, 2.0], trials=8, seed=0)
    assert float(v.fooling_subspace[0]) == 0.0
    assert 0.35 < float(v.fooling_subspace[1]) < 0.65
    assert float(v.fooling_random[1]) < 0.1
    torch.testing.assert_close(v.deepfool_share, torch.ones(50, dtype=torch.float64))
    rest = subspace_vulnerability(model, x, eye[:, 1:4], norms=[0.5], trials=1, seed=0)
    assert float(rest.deepfool_share.abs().max()) < 1e-12
