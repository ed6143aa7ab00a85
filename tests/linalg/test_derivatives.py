"""Autograd of the compiled ops: tridiag_eigh's eigenvalues against gradcheck and the closed form,
ritz_vectors as a matrix product, and clear errors where there is no derivative."""
from __future__ import annotations

import pytest
import torch

import curvext
from curvext._ops import ops


def separated_tridiagonal(B=3, m=6):
    g = torch.Generator().manual_seed(0)
    alpha = (torch.arange(m, dtype=torch.float64) * 2.0).repeat(B, 1) + 0.1 * torch.randn(B, m, generator=g,
                                                                                           dtype=torch.float64)
    beta = 0.3 * torch.randn(B, m - 1, generator=g, dtype=torch.float64)
    return alpha.requires_grad_(True), beta.requires_grad_(True)


@pytest.mark.parametrize("vectors", [False, "first", True])
def test_eigenvalue_gradients_pass_gradcheck(vectors):
    """Central differences in float64 (gradcheck's default eps 1e-6, tolerance 1e-5): the gaps are
    ~2, so the eigenvalues are smooth functions of the entries."""
    alpha, beta = separated_tridiagonal()

    def values(a, b):
        out = curvext.tridiag_eigh(a, b, vectors=vectors)
        return out if vectors is False else out[0]

    assert torch.autograd.gradcheck(values, (alpha, beta))


def test_eigenvalue_gradient_is_the_closed_form():
    alpha, beta = separated_tridiagonal()
    w = torch.randn(3, 6, dtype=torch.float64)
    values, V = curvext.tridiag_eigh(alpha, beta)
    (w * values).sum().backward()
    V = V.detach()
    torch.testing.assert_close(alpha.grad, torch.einsum("bj,bij->bi", w, V * V), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(beta.grad, torch.einsum("bj,bij->bi", w, 2 * V[:, :-1] * V[:, 1:]),
                               rtol=1e-10, atol=1e-12)


def test_a_loss_on_the_eigenvectors_raises():
    alpha, beta = separated_tridiagonal()
    _, V = curvext.tridiag_eigh(alpha, beta)
    with pytest.raises(RuntimeError, match="eigenvectors"):
        V.sum().backward()


def test_ritz_vectors_gradient_is_that_of_the_matrix_product():
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)  # m = 4 < M = 5
    assert torch.autograd.gradcheck(lambda b, c: ops.ritz_vectors(b, c), (basis, coeffs))


def test_solvers_refuse_a_start_that_requires_grad():
    A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64)).repeat(2, 1, 1)

    def op(V, index):
        return torch.einsum("bij,bj->bi", A[index], V)

    v0 = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    for solver in (lambda: curvext.lanczos(op, v0, k=2), lambda: curvext.power_iteration(op, v0)):
        with pytest.raises(ValueError, match="v0 requires grad"):
            solver()
    with torch.no_grad():
        assert curvext.lanczos(op, v0, k=2).converged.all()


def test_the_solver_steps_say_they_have_no_derivative():
    v = torch.nn.functional.normalize(torch.randn(2, 4, dtype=torch.float64), dim=1).requires_grad_(True)
    out = ops.power_step(v, 2 * v, torch.zeros(2, dtype=torch.float64), 1e-6)
    with pytest.raises(RuntimeError, match="power_step is a step inside curvext's eigensolvers"):
        out[0].sum().backward()
