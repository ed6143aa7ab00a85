"""The curvext::arrowhead_tridiag op (the thick restart's reduction) against dense float64 algebra:
Z orthogonal, Z^T diag(d) Z tridiagonal with the op's alpha/beta, Z^T a on the last row only, and
the eigenvalues of the bordered matrix [[diag(d), a], [a^T, tip]] equal to those of the reduced
tridiagonal (numpy.linalg.eigvalsh).

Tolerances: Givens rotations in float64 are backward stable with errors ~ (number of rotations
touching an entry) * eps * ||H||; for L <= 40 that is ~1e-14 ||H||, so 1e-12 leaves a margin.
float32 inputs are reduced in float64 and rounded at the end: ~eps32 ||H||.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from curvext import _ops


def problems(dtype=torch.float64, device="cpu", B=7, L=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(B, L, generator=g, dtype=torch.float64)
    a = torch.randn(B, L, generator=g, dtype=torch.float64)
    sizes = torch.tensor([L, 5, 0, 1, 9, L, 2][:B])
    if B == 7:
        a[4, :3] = 0.0  # a zero prefix (locked pairs): left untouched
        a[4, 6] = 0.0  # a zero in the middle: a swap, still exact
        a[5, 3:5] = 0.0
        d[5, 7] = d[5, 2]  # a repeated diagonal value
    return d.to(dtype).to(device), a.to(dtype).to(device), sizes.to(device)


def worst(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def dense_checks(d, a, sizes, alpha, beta, Z, tol):
    B, L = d.shape
    d, a, alpha, beta, Z = (t.double().cpu() for t in (d, a, alpha, beta, Z))
    eye = torch.eye(L, dtype=torch.float64)
    for s in range(B):
        p = int(sizes[s])
        scale = float(d[s, :p].abs().max() + a[s, :p].norm()) if p else 1.0
        T = torch.diag(alpha[s]) + torch.diag(beta[s, : L - 1], 1) + torch.diag(beta[s, : L - 1], -1)
        assert float((Z[s].T @ Z[s] - eye).abs().max()) <= tol
        block = Z[s, :p, :p].T @ torch.diag(d[s, :p]) @ Z[s, :p, :p]
        assert worst(block - T[:p, :p]) <= tol * scale
        tip = torch.zeros(p, dtype=torch.float64)
        if p:
            tip[p - 1] = beta[s, p - 1]
            assert float(beta[s, p - 1]) == pytest.approx(float(a[s, :p].norm()), abs=tol * scale)
        assert worst(Z[s, :p, :p].T @ a[s, :p] - tip) <= tol * scale
        assert bool((beta[s] >= 0).all())
        # Past the size: alpha = diag, beta = 0, Z = identity, exactly.
        assert torch.equal(Z[s, p:, :], eye[p:]) and torch.equal(Z[s, :, p:], eye[:, p:])
        assert torch.equal(alpha[s, p:], d[s, p:]) and bool((beta[s, p:] == 0).all())
        # The bordered matrix and its reduction have the same spectrum (tip 0.7).
        H = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        H[:p, :p] = torch.diag(d[s, :p])
        H[:p, p] = H[p, :p] = a[s, :p]
        H[p, p] = 0.7
        R = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        R[:p, :p] = T[:p, :p]
        if p:
            R[p - 1, p] = R[p, p - 1] = beta[s, p - 1]
        R[p, p] = 0.7
        np.testing.assert_allclose(np.linalg.eigvalsh(R.numpy()), np.linalg.eigvalsh(H.numpy()), rtol=0,
                                   atol=tol * scale)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 3e-6)])
def test_reduction_against_dense(dtype, tol, device):
    d, a, sizes = problems(dtype, device)
    alpha, beta, Z = torch.ops.curvext.arrowhead_tridiag(d, a, sizes)
    assert alpha.dtype == beta.dtype == Z.dtype == dtype and Z.shape == (7, 12, 12)
    dense_checks(d, a, sizes, alpha, beta, Z, tol)


def test_zero_prefix_stays_exactly_untouched():
    d, a, sizes = problems()
    alpha, beta, Z = torch.ops.curvext.arrowhead_tridiag(d, a, sizes)
    assert torch.equal(Z[4, :3, :3], torch.eye(3, dtype=torch.float64))
    assert bool((Z[4, :3, 3:] == 0).all()) and bool((Z[4, 3:, :3] == 0).all())
    assert torch.equal(alpha[4, :3], d[4, :3]) and bool((beta[4, :3] == 0).all())


def test_large_problem_and_opcheck():
    d, a, sizes = problems(B=3, L=40, seed=3)
    sizes = torch.tensor([40, 37, 40])
    alpha, beta, Z = torch.ops.curvext.arrowhead_tridiag(d, a, sizes)
    dense_checks(d, a, sizes, alpha, beta, Z, 1e-12)
    torch.library.opcheck(torch.ops.curvext.arrowhead_tridiag, (d, a, sizes))


def test_bad_arguments():
    d, a, sizes = problems()
    with pytest.raises(RuntimeError, match=r"sizes\[1\] = 13 is outside \[0, 12\]"):
        torch.ops.curvext.arrowhead_tridiag(d, a, torch.tensor([1, 13, 0, 0, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="border must have the shape of diag"):
        torch.ops.curvext.arrowhead_tridiag(d, a[:, :5], sizes)
    with pytest.raises(RuntimeError, match="sizes must be a 1-D int64 tensor of length B = 7"):
        torch.ops.curvext.arrowhead_tridiag(d, a, sizes.int())
    with pytest.raises(RuntimeError, match="dtype of diag"):
        torch.ops.curvext.arrowhead_tridiag(d, a.float(), sizes)


def test_cuda_matches_cpu():
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    for dtype in (torch.float64, torch.float32):
        d, a, sizes = problems(dtype)
        want = torch.ops.curvext.arrowhead_tridiag(d, a, sizes)
        got = torch.ops.curvext.arrowhead_tridiag(d.cuda(), a.cuda(), sizes.cuda())
        tol = 1e-12 if dtype == torch.float64 else 1e-6  # the same float64 rotations, FMA aside
        for g, w in zip(got, want):
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=tol)
