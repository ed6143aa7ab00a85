"""curvext.tridiag_eigh against scipy.linalg.eigh_tridiagonal (float64 LAPACK reference).

Tolerances: bisection is backward stable, so eigenvalue errors are bounded by a small multiple of
m * eps * ||T||; inverse-iteration vectors have residuals of the same order and lose
orthogonality only as eps * ||T|| / gap, with gaps >= 1e-3 ||T|| outside the clusters that are
explicitly orthogonalised (LAPACK stein's argument). The constants below are those bounds with
the constant set to 8.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

import curvext
from curvext import _ops

EPS = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def _norm(a: np.ndarray, b: np.ndarray) -> float:
    off = np.abs(b)
    rows = np.abs(a).copy()
    rows[:-1] += off
    rows[1:] += off
    return float(rows.max())


def _dense(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


def _wilkinson(m: int) -> tuple[np.ndarray, np.ndarray]:
    half = (m - 1) / 2
    return np.abs(np.arange(m) - half), np.ones(m - 1)


def hard_matrices(m: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = [("random", rng.standard_normal(m), rng.standard_normal(m - 1))]
    if m >= 2:
        b = rng.standard_normal(m - 1)
        b[:: max(2, m // 4)] = 0.0  # splits into unreduced blocks
        out.append(("splits", rng.standard_normal(m), b))
        out.append(("identical_blocks", np.tile([1.0, 2.0], m)[:m], np.tile([0.5, 0.0], m)[: m - 1]))
        out.append(("all_equal_diagonal", np.full(m, 3.0), np.zeros(m - 1)))
        out.append(("wilkinson", *_wilkinson(m)))
        scale = np.logspace(-8, 8, m)
        out.append(("dynamic_range", scale * rng.choice([-1, 1], m), 1e-3 * np.sqrt(scale[:-1] * scale[1:])))
        out.append(("graded_offdiag", np.zeros(m), np.logspace(-8, 8, m - 1)))
    if m >= 4:
        # Two copies of a block joined by weak couplings: eigenvalue pairs split by ~coupling *
        # (end components), which puts gaps on both sides of the clean-up path's bounds.
        h = m // 2
        block_a, block_b = rng.standard_normal(h), rng.standard_normal(h - 1)
        for glue in (1e-3, 1e-5):
            a = np.concatenate([block_a, block_a, rng.standard_normal(m - 2 * h)])
            b = np.concatenate([block_b, [glue], block_b, np.ones(m - 2 * h)])
            out.append((f"glued_{glue:g}", a, b))
    return out


def _batch(mats, dtype, device):
    a = torch.tensor(np.stack([m[1] for m in mats]), dtype=dtype, device=device)
    b = torch.tensor(np.stack([m[2] for m in mats]), dtype=dtype, device=device).reshape(len(mats), -1)
    return a, b


# Sizes below 64 are bisected with SIMD lanes packed across the batch's matrices (17, 40: lane
# groups that straddle matrices of different scales and step counts); 64 and 200 one matrix at
# a time.
@pytest.mark.parametrize("m", [1, 2, 3, 17, 40, 64, 200])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_scipy(m, dtype, device):
    rng = np.random.default_rng(m)
    mats = hard_matrices(m, rng)
    a, b = _batch(mats, dtype, device)
    values, vectors = curvext.tridiag_eigh(a, b, vectors=True)
    values_only = curvext.tridiag_eigh(a, b, vectors=False)
    first_values, first = curvext.tridiag_eigh(a, b, vectors="first")
    eps = EPS[dtype]
    for i, (name, am, bm) in enumerate(mats):
        # The reference solves the matrix as stored in `dtype`, in float64.
        am = a[i].double().cpu().numpy()
        bm = b[i].double().cpu().numpy()
        ref = scipy.linalg.eigh_tridiagonal(am, bm, eigvals_only=True)
        norm = max(_norm(am, bm), 1e-300)
        tol = 8 * m * eps * norm
        w = values[i].double().cpu().numpy()
        assert np.all(np.diff(w) >= 0), name
        np.testing.assert_allclose(w, ref, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(values_only[i].double().cpu().numpy(), ref, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_array_equal(first_values[i].cpu().numpy(), values[i].cpu().numpy(), err_msg=name)
        V = vectors[i].double().cpu().numpy()
        T = _dense(am, bm)
        residual = np.abs(T @ V - V * w).max()
        assert residual <= 8 * m * eps * norm, (name, residual / (eps * norm))
        ortho = np.abs(V.T @ V - np.eye(m)).max()
        ortho_tol = 8 * m * eps if dtype == torch.float64 else 8 * m * eps / 1e-3
        assert ortho <= ortho_tol, (name, ortho)
        np.testing.assert_array_equal(first[i].cpu().numpy(), vectors[i, 0].cpu().numpy(), err_msg=name)
        # Sign convention: each column's largest-magnitude entry is positive (up to ties that
        # rounding to the output dtype may break either way).
        assert np.all(V.max(axis=0) >= np.abs(V).max(axis=0) * (1 - 4 * eps)), name


def test_first_components_give_gauss_quadrature(device):
    # sum_k w_k f(theta_k) with w = first components^2 integrates x^j exactly against the
    # spectral measure of e_1: e_1^T T^j e_1.
    rng = np.random.default_rng(7)
    a = torch.tensor(rng.standard_normal((5, 12)), device=device)
    b = torch.tensor(rng.random((5, 11)) + 0.1, device=device)
    theta, first = curvext.tridiag_eigh(a, b, vectors="first")
    for i in range(5):
        T = _dense(a[i].cpu().numpy(), b[i].cpu().numpy())
        for j in range(6):
            exact = np.linalg.matrix_power(T, j)[0, 0]
            quad = float((first[i] ** 2 * theta[i] ** j).sum())
            assert abs(quad - exact) <= 1e-10 * max(1.0, abs(exact))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.standard_normal((300, 64)), dtype=dtype)
    b = torch.tensor(rng.standard_normal((300, 63)), dtype=dtype)
    wc, vc = curvext.tridiag_eigh(a, b)
    wg, vg = curvext.tridiag_eigh(a.cuda(), b.cuda())
    eps = EPS[dtype]
    torch.testing.assert_close(wg.cpu(), wc, rtol=0, atol=64 * eps * 8)
    # Same math on both devices; vectors agree up to rounding (signs are fixed by convention).
    torch.testing.assert_close(vg.cpu(), vc, rtol=0, atol=1e-3 if dtype == torch.float32 else 1e-9)


def test_cuda_batch_over_several_workspace_chunks():
    """B = 400 matrices of m = 200: the CUDA kernel's ~256 MiB workspace holds ~169 of them, so
    the batch runs in three chunks; every chunk must land at its own rows."""
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    rng = np.random.default_rng(5)
    a = torch.tensor(rng.standard_normal((400, 200)))
    b = torch.tensor(rng.standard_normal((400, 199)))
    wc, vc = curvext.tridiag_eigh(a, b)
    wg, vg = curvext.tridiag_eigh(a.cuda(), b.cuda())
    torch.testing.assert_close(wg.cpu(), wc, rtol=0, atol=1e-12)
    torch.testing.assert_close(vg.cpu(), vc, rtol=0, atol=1e-9)
    _, fg = curvext.tridiag_eigh(a.cuda(), b.cuda(), vectors="first")
    torch.testing.assert_close(fg.cpu(), vc[:, 0], rtol=0, atol=1e-9)


def test_opcheck(device):
    a = torch.randn(4, 7, dtype=torch.float64, device=device)
    b = torch.randn(4, 6, dtype=torch.float64, device=device)
    for mode in (0, 1, 2):
        torch.library.opcheck(torch.ops.curvext.tridiag_eigh, (a, b, mode))


def test_torch_compile_traces_op():
    a = torch.randn(3, 5, dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)

    def f(a, b):
        w, _ = torch.ops.curvext.tridiag_eigh(a, b, 0)
        return w * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b), f(a, b))


@pytest.mark.parametrize(
    "alpha, beta, exc, words",
    [
        (torch.randn(4), torch.randn(3), ValueError, "alpha must be (B, m)"),
        (torch.randn(2, 4), torch.randn(2, 4), ValueError, "beta must be (B, m-1)"),
        (torch.randn(2, 4), torch.randn(3, 3), ValueError, "beta must be (B, m-1)"),
        (torch.randn(0, 4), torch.randn(0, 3), ValueError, "empty batch"),
        (torch.randn(2, 4).int(), torch.randn(2, 3).int(), TypeError, "alpha must be float32 or float64"),
        (torch.randn(2, 4), torch.randn(2, 3, dtype=torch.float64), TypeError, "beta must have alpha's dtype"),
        (torch.tensor([[1.0, float("nan")]]), torch.tensor([[1.0]]), ValueError, "alpha must be finite"),
        (torch.tensor([[1.0, 2.0]]), torch.tensor([[float("inf")]]), ValueError, "beta must be finite"),
    ],
)
def test_bad_input(alpha, beta, exc, words):
    with pytest.raises(exc, match=pytest.importorskip("re").escape(words)):
        curvext.tridiag_eigh(alpha, beta)


def test_bad_vectors_argument():
    with pytest.raises(ValueError, match="vectors must be one of"):
        curvext.tridiag_eigh(torch.randn(2, 3), torch.randn(2, 2), vectors="all")


def test_raw_op_checks_shapes():
    with pytest.raises(RuntimeError, match="beta must be"):
        torch.ops.curvext.tridiag_eigh(torch.randn(2, 4), torch.randn(2, 2), 0)
    with pytest.raises(RuntimeError, match="mode must be"):
        torch.ops.curvext.tridiag_eigh(torch.randn(2, 4), torch.randn(2, 3), 5)
