"""curvext.geometry.profiles: Lanczos principal curvatures against dense spectra."""
from __future__ import annotations

import pytest
import torch

from curvext import data
from curvext.data import zoo
from curvext.geometry.profiles import principal_curvatures
from tests.curvature.test_quadratic_forms import Quadratic


def test_quadratic_classifier_boundary_profile_matches_closed_form():
    model = Quadratic(L=3, d=30, seed=1).eval()
    x = torch.randn(4, 1, 5, 6, dtype=torch.float64)
    k = 3
    prof = principal_curvatures(model, x, k=k, at="boundary", tol=1e-10, vectors=True)
    dense = principal_curvatures(model, x, at="boundary", full=True)
    # Closed form at the same boundary points: eigenvalues of P H P / |g| on the tangent space.
    z = prof.points.reshape(4, -1)
    for b in range(4):
        a, c = prof.cls[b], prof.base[b]
        H = model.A[a] - model.A[c]
        g = H @ z[b] + model.b[a] - model.b[c]
        n = g / g.norm()
        Q = torch.linalg.qr(torch.cat([n[:, None], torch.randn(30, 29, dtype=torch.float64)], 1))[0][:, 1:]
        ref = torch.linalg.eigvalsh(Q.T @ H @ Q / g.norm())  # tangent space only: 29 values
        torch.testing.assert_close(dense.values[b], ref, rtol=0, atol=1e-10)
        want = torch.cat([ref[:k], ref[-k:]])
        torch.testing.assert_close(prof.values[b], want, rtol=0, atol=1e-5 * float(ref.abs().max()))
    assert prof.converged.all()
    # Directions are unit and tangent.
    v = prof.vectors.reshape(4, 2 * k, -1)
    n = (lambda g: g / g.norm(dim=1, keepdim=True))(torch.stack([
        (model.A[prof.cls[b]] - model.A[prof.base[b]]) @ z[b] + model.b[prof.cls[b]] - model.b[prof.base[b]]
        for b in range(4)]))
    assert float((v * n[:, None]).sum(2).abs().max()) < 1e-8


@pytest.mark.parametrize("at", ["input", "boundary"])
def test_small_cnn_on_digits_lanczos_matches_dense(at):
    model = zoo.train("lenet", "smooth", "digits").model.double().eval()
    x = data.load_digits("test").images[:3].double()
    prof = principal_curvatures(model, x, k=4, at=at, tol=1e-10)
    dense = principal_curvatures(model, x, at=at, full=True)
    assert dense.values.shape == (3, 63)  # d = 64 minus the normal
    want = torch.cat([dense.values[:, :4], dense.values[:, -4:]], 1)
    scale = dense.values.abs().amax(1, keepdim=True)
    assert ((prof.values - want).abs() <= 1e-6 * scale).all()


def test_small_basis_restarts_to_the_same_curvatures(monkeypatch):
    """basis_size reaches Lanczos: a basis of 12 vectors (k = 4 per end, 8 wanted) restarts and
    still matches the dense spectrum; the stored basis is 13 vectors per image."""
    import sys

    driver = sys.modules["curvext.linalg.lanczos"]
    shapes = []
    real = driver._allocate_basis
    monkeypatch.setattr(driver, "_allocate_basis", lambda B, rows, n, *a: shapes.append(rows) or real(B, rows, n, *a))
    model = zoo.train("lenet", "smooth", "digits").model.double().eval()
    x = data.load_digits("test").images[:3].double()
    prof = principal_curvatures(model, x, k=4, at="input", tol=1e-10, basis_size=12)
    dense = principal_curvatures(model, x, at="input", full=True)
    want = torch.cat([dense.values[:, :4], dense.values[:, -4:]], 1)
    scale = dense.values.abs().amax(1, keepdim=True)
    assert shapes == [13] and int(prof.steps.max()) > 12 and bool(prof.converged.all())
    assert ((prof.values - want).abs() <= 1e-6 * scale).all()


def test_bad_k():
    model = Quadratic(L=3, d=10).eval()
    with pytest.raises(ValueError, match="k must be an int"):
        principal_curvatures(model, torch.randn(2, 1, 2, 5, dtype=torch.float64), k=5, at="input")
    with pytest.raises(ValueError, match="at must be"):
        principal_curvatures(model, torch.randn(2, 1, 2, 5, dtype=torch.float64), at="middle")


def test_low_rank_curvature_gives_zeros_not_nan():
    # Curvature of rank 3 in d = 40: the k = 3 ends are the 2 + 1 non-zero curvatures and zeros.
    from tests.geometry.test_subspace import PlantedCurvature

    model = PlantedCurvature().eval()
    g = torch.Generator().manual_seed(1)
    x = (0.3 * torch.randn(4, 40, generator=g, dtype=torch.float64) + 2.0 * model.w).reshape(4, 1, 5, 8)
    prof = principal_curvatures(model, x, k=3, tol=1e-8)
    dense = principal_curvatures(model, x, full=True)
    want = torch.cat([dense.values[:, :3], dense.values[:, -3:]], 1)
    assert bool(torch.isfinite(prof.values).all())
    torch.testing.assert_close(prof.values, want, rtol=0, atol=1e-6)


def test_samples_without_a_boundary_are_nan_and_named(deepfool_fails_on, monkeypatch, caplog):
    """DeepFool that fails for one image (its label unchanged) leaves that image's profile NaN
    with a warning; the other images' values equal a run without it."""
    model = Quadratic(L=3, d=30, seed=1).eval()
    x = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    deepfool_fails_on(1)
    with caplog.at_level("WARNING"):
        prof = principal_curvatures(model, x, k=2, at="boundary", tol=1e-10, vectors=True)
    assert "sample(s) [1]" in caplog.text and "DeepFool did not change their label" in caplog.text
    assert torch.isnan(prof.values[1]).all() and torch.isnan(prof.vectors[1]).all()
    assert torch.isnan(prof.grad_norm[1]) and not prof.converged[1].any() and int(prof.steps[1]) == 0
    monkeypatch.undo()  # the real DeepFool again
    alone = principal_curvatures(model, x[[0, 2]], k=2, at="boundary", tol=1e-10)
    torch.testing.assert_close(prof.values[[0, 2]], alone.values, rtol=0, atol=1e-9)
    assert prof.converged[[0, 2]].all()


def test_no_sample_with_a_boundary_gives_an_all_nan_profile(caplog):
    model = Quadratic(L=3, d=30, seed=1).eval()
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    same = torch.tensor([0, 2])
    with caplog.at_level("WARNING"):
        prof = principal_curvatures(model, x, k=2, at="input", pair=(same, same))
    assert "pair of equal classes" in caplog.text
    assert prof.values.shape == (2, 4) and torch.isnan(prof.values).all() and prof.vectors is None
