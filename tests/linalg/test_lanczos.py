"""curvext.lanczos and the lanczos_step / ritz_vectors ops against dense numpy.linalg.eigh.

Operators are batched dense symmetric matrices with prescribed spectra, A_s = Q_s diag(l_s) Q_s^T,
so every sample's exact eigenpairs are known. Accuracy targets: 1e-6 relative in float64 and
1e-4 in float32 (the issue's numbers; the convergence test tol is set below them).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

import curvext
from curvext import _ops


def dense_batch(spectra: np.ndarray, seed: int = 0, dtype=torch.float64, device="cpu"):
    B, n = spectra.shape
    rng = np.random.default_rng(seed)
    mats = []
    for s in range(B):
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        mats.append((Q * spectra[s]) @ Q.T)
    A = torch.tensor(np.stack(mats), dtype=dtype, device=device)
    return A


def batched_op(A: torch.Tensor, calls: list | None = None):
    def op(V, index):
        if calls is not None:
            calls.append(index.tolist())
        return torch.einsum("bij,bj->bi", A[index], V)

    return op


def reference(A: torch.Tensor) -> np.ndarray:
    return np.linalg.eigvalsh(A.double().cpu().numpy())


def _check_values(res, ref_sorted, k, which, rtol):
    if which == "LA":
        want = ref_sorted[:, -k:]
    elif which == "SA":
        want = ref_sorted[:, :k]
    elif which == "BE":
        want = np.concatenate([ref_sorted[:, : k // 2], ref_sorted[:, ref_sorted.shape[1] - (k + 1) // 2 :]], axis=1)
    else:
        order = np.argsort(-np.abs(ref_sorted), axis=1)[:, :k]
        want = np.sort(np.take_along_axis(ref_sorted, order, axis=1), axis=1)
    scale = np.abs(ref_sorted).max(axis=1, keepdims=True)
    got = res.eigenvalues.double().cpu().numpy()
    assert np.all(np.abs(got - want) <= rtol * scale), np.abs(got - want).max()


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("dtype, tol, rtol", [(torch.float64, 1e-8, 1e-6), (torch.float32, 1e-5, 1e-4)])
def test_indefinite_spectra(which, dtype, tol, rtol, device):
    rng = np.random.default_rng(1)
    n, k = 120, 4
    spectra = rng.standard_normal((6, n))
    spectra[:, :3] *= 8  # a few dominant values of both signs
    A = dense_batch(spectra, dtype=dtype, device=device)
    v0 = torch.randn(6, n, dtype=dtype, device=device, generator=None)
    res = curvext.lanczos(batched_op(A), v0, k=k, which=which, tol=tol, max_steps=n)
    assert res.converged.all()
    _check_values(res, reference(A), k, which, rtol)
    # Ritz vectors: unit, orthogonal, and eigenvectors of A.
    Y = res.eigenvectors.double()
    gram = Y @ Y.transpose(1, 2)
    identity = torch.eye(k, dtype=gram.dtype, device=device)
    assert (gram - identity).abs().max() < (1e-8 if dtype == torch.float64 else 1e-3)
    AY = torch.einsum("bij,bkj->bki", A.double(), Y)
    resid = (AY - res.eigenvalues.double().unsqueeze(2) * Y).norm(dim=2)
    scale = torch.tensor(np.abs(reference(A)).max(axis=1), device=device).unsqueeze(1)
    assert (resid <= 10 * tol * scale + (1e-4 * scale if dtype == torch.float32 else 0)).all()


def test_image_shaped_samples_and_steps_per_sample():
    # Samples converge at different steps; finished ones are no longer passed to op.
    n = 3 * 4 * 5
    spectra = np.stack([np.linspace(-1, 1, n) for _ in range(3)])
    spectra[0, -1] = 100.0  # huge gap: converges in a few steps
    spectra[1, -1] = 1.5     # moderate gap
    spectra[2, -1] = 1.01    # tiny gap: needs many steps
    A = dense_batch(spectra)
    calls: list = []
    shape_op = batched_op(A, calls)

    def op(V, index):
        assert V.shape[1:] == (3, 4, 5)
        return shape_op(V.reshape(V.shape[0], -1), index).reshape(V.shape)

    v0 = torch.randn(3, 3, 4, 5, dtype=torch.float64)
    res = curvext.lanczos(op, v0, k=1, which="LA", tol=1e-10, max_steps=n)
    assert res.eigenvectors.shape == (3, 1, 3, 4, 5)
    np.testing.assert_allclose(res.eigenvalues[:, 0].numpy(), spectra[:, -1], rtol=1e-8)
    steps = res.steps.tolist()
    assert steps[0] < steps[1] < steps[2] <= n
    # Sample 0 stopped being passed after its last step.
    assert sum(0 in c for c in calls) == steps[0]
    assert len(calls) == max(steps)


def test_degenerate_extremal_eigenvalue():
    n = 80
    spectra = np.stack([np.r_[np.linspace(-1, 1, n - 2), 3.0, 3.0]] * 2)
    A = dense_batch(spectra, seed=4)
    res = curvext.lanczos(batched_op(A), torch.randn(2, n, dtype=torch.float64), k=1, which="LA", tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues[:, 0].numpy(), [3.0, 3.0], rtol=1e-6)
    # The Ritz vector lies in the 2-D eigenspace.
    Y = res.eigenvectors[:, 0]
    AY = torch.einsum("bij,bj->bi", A, Y)
    assert (AY - 3.0 * Y).norm(dim=1).max() < 1e-6


def test_rank_one_operator(device):
    n = 50
    u = torch.randn(3, n, dtype=torch.float64).to(device)
    u = u / u.norm(dim=1, keepdim=True)
    lam = torch.tensor([2.0, -5.0, 0.5], dtype=torch.float64, device=device)

    def op(V, index):
        return lam[index, None] * u[index] * (u[index] * V).sum(1, keepdim=True)

    res = curvext.lanczos(op, torch.randn(3, n, dtype=torch.float64).to(device), k=1, which="LM", tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues[:, 0].cpu().numpy(), lam.cpu().numpy(), rtol=1e-10)
    cos = (res.eigenvectors[:, 0] * u).sum(1).abs()
    np.testing.assert_allclose(cos.cpu().numpy(), 1.0, rtol=1e-8)
    assert (res.steps < n).all()  # the breakdown ends the run long before the dimension


def test_start_vector_inside_invariant_subspace(device):
    # v0 spans a 3-dim eigenspace; the true extremes lie outside it. After the breakdown the
    # solver restarts orthogonally and still finds them.
    n = 60
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.linspace(-1, 1, n)
    lam[-1] = 4.0
    A = torch.tensor((Q * lam) @ Q.T, device=device).unsqueeze(0)
    v0 = torch.tensor(Q[:, 10:13] @ rng.standard_normal(3), device=device).unsqueeze(0)
    res = curvext.lanczos(batched_op(A), v0, k=2, which="LA", tol=1e-10, max_steps=n)
    np.testing.assert_allclose(res.eigenvalues[0].cpu().numpy(), [lam[-2], lam[-1]], rtol=1e-6, atol=1e-8)
    assert res.converged.all()


def test_whole_space_exhausted_with_fewer_values_than_k(device):
    # The operator is zero on the complement of a 2-D space: Lanczos finds both non-zero values
    # and one copy of 0, then stops early instead of running all n steps.
    n = 40
    rng = np.random.default_rng(6)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.zeros(n)
    lam[:2] = [3.0, -2.0]
    A = torch.tensor((Q * lam) @ Q.T, device=device).unsqueeze(0)
    res = curvext.lanczos(batched_op(A), torch.randn(1, n, dtype=torch.float64).to(device), k=3, which="LM",
                          tol=1e-10)
    np.testing.assert_allclose(np.sort(res.eigenvalues[0].cpu().numpy()), [-2.0, 0.0, 3.0], atol=1e-10)
    assert res.steps[0] < n


def test_lanczos_step_op_builds_orthonormal_basis_and_tridiagonal(device):
    # Direct test of the fused op: Q^T Q = I and Q^T A Q = T after m steps.
    torch.manual_seed(0)
    B, n, m = 3, 40, 25
    A = dense_batch(np.random.default_rng(2).standard_normal((B, n)), device=device)
    basis = torch.zeros(B, m + 1, n, dtype=torch.float64, device=device)
    v = torch.randn(B, n, dtype=torch.float64, device=device)
    basis[:, 0] = v / v.norm(dim=1, keepdim=True)
    alpha = torch.zeros(B, m, dtype=torch.float64, device=device)
    beta = torch.zeros(B, m, dtype=torch.float64, device=device)
    idx = torch.arange(B, device=device)
    for j in range(m):
        w = torch.einsum("bij,bj->bi", A, basis[:, j])
        flags = torch.ops.curvext.lanczos_step(basis, w, alpha, beta, idx, j, 1e-14, 0)
        assert (flags == 0).all()
    Q = basis[:, :m]
    eye = torch.eye(m, dtype=torch.float64, device=device)
    assert (Q @ Q.transpose(1, 2) - eye).abs().max() < 1e-13
    T = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    QAQ = Q @ A @ Q.transpose(1, 2)
    assert (QAQ - T).abs().max() < 1e-12


@pytest.mark.parametrize("dtype, eps", [(torch.float64, 2.0**-53), (torch.float32, 2.0**-24)])
def test_lanczos_step_orthogonal_when_w_lies_mostly_in_the_basis(dtype, eps, device):
    # w = (large part inside span(q_0..q_{j-2}), which the three-term recurrence leaves alone)
    # + 1e-3 * (part outside): one Gram-Schmidt pass cancels ~all of w and leaves rounding of
    # ~eps * ||w|| / ||r|| = 1e3 eps along the basis; the second pass must bring it to ~eps.
    B, n, j = 2, 200, 6
    g = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(n, j + 1, generator=g, dtype=torch.float64))[0].T
    basis = torch.zeros(B, j + 2, n, dtype=torch.float64)
    basis[:, : j + 1] = Q
    outside = torch.randn(B, n, generator=g, dtype=torch.float64)
    outside -= (outside @ Q.T) @ Q
    outside /= outside.norm(dim=1, keepdim=True)
    w = torch.randn(B, j - 1, generator=g, dtype=torch.float64) @ Q[: j - 1] + 1e-3 * outside
    basis, w = basis.to(dtype).to(device), w.to(dtype).to(device)
    alpha = torch.zeros(B, j + 1, dtype=dtype, device=device)
    beta = torch.zeros(B, j + 1, dtype=dtype, device=device)
    flags = torch.ops.curvext.lanczos_step(basis, w, alpha, beta, torch.arange(B, device=device), j, 100 * eps, 0)
    assert (flags == 0).all()
    r = basis[:, j + 1].double().cpu()
    Qd = basis[0, : j + 1].double().cpu()
    assert (r.norm(dim=1) - 1).abs().max() < 10 * eps
    assert (r @ Qd.T).abs().max() < 20 * eps  # one pass only would leave ~1e3 eps


def test_lanczos_step_op_only_touches_indexed_samples(device):
    B, n = 4, 10
    basis = torch.zeros(B, 3, n, dtype=torch.float64, device=device)
    basis[:, 0, 0] = 1.0
    alpha = torch.zeros(B, 2, dtype=torch.float64, device=device)
    beta = torch.zeros(B, 2, dtype=torch.float64, device=device)
    before = basis.clone()
    idx = torch.tensor([2], device=device)
    w = torch.randn(1, n, dtype=torch.float64).to(device)
    torch.ops.curvext.lanczos_step(basis, w, alpha, beta, idx, 0, 1e-14, 0)
    changed = (basis != before).flatten(1).any(1)
    assert changed.tolist() == [False, False, True, False]
    assert alpha[:, 0].ne(0).tolist() == [False, False, True, False]


def test_opcheck_lanczos_step_and_ritz_vectors(device):
    B, n, M = 3, 9, 4
    basis = torch.zeros(B, M + 1, n, dtype=torch.float64, device=device)
    basis[:, 0] = torch.nn.functional.normalize(torch.randn(B, n, dtype=torch.float64, device=device), dim=1)
    alpha = torch.zeros(B, M, dtype=torch.float64, device=device)
    beta = torch.zeros(B, M, dtype=torch.float64, device=device)
    idx = torch.tensor([0, 2], device=device)
    w = torch.randn(2, n, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.curvext.lanczos_step, (basis, w, alpha, beta, idx, 0, 1e-12, 0))
    coeffs = torch.randn(B, 3, 2, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.curvext.ritz_vectors, (basis, coeffs))
    ref = torch.einsum("bjk,bjn->bkn", coeffs, basis[:, :3])
    torch.testing.assert_close(torch.ops.curvext.ritz_vectors(basis, coeffs), ref)


def test_cuda_lanczos_matches_cpu():
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    rng = np.random.default_rng(9)
    A = dense_batch(rng.standard_normal((8, 100)))
    v0 = torch.randn(8, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    rc = curvext.lanczos(batched_op(A), v0, k=5, which="BE", tol=1e-10)
    rg = curvext.lanczos(batched_op(A.cuda()), v0.cuda(), k=5, which="BE", tol=1e-10)
    torch.testing.assert_close(rg.eigenvalues.cpu(), rc.eigenvalues, rtol=1e-9, atol=1e-9)
    assert torch.equal(rg.steps, rc.steps)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(k=0), ValueError, "k must be an int in [1, n = 6]"),
        (dict(k=7), ValueError, "k must be an int in [1, n = 6]"),
        (dict(k=1, which="XX"), ValueError, "which must be one of"),
        (dict(k=1, max_steps=0), ValueError, "max_steps must be a positive int"),
        (dict(k=1, tol=0.0), ValueError, "tol must be > 0"),
    ],
)
def test_bad_arguments(kwargs, exc, words):
    op = batched_op(dense_batch(np.ones((2, 6))))
    with pytest.raises(exc, match=re.escape(words)):
        curvext.lanczos(op, torch.randn(2, 6, dtype=torch.float64), **kwargs)


def test_bad_start_vectors_and_operator_output():
    A = dense_batch(np.ones((2, 6)))
    op = batched_op(A)
    with pytest.raises(ValueError, match="empty batch"):
        curvext.lanczos(op, torch.zeros(0, 6, dtype=torch.float64), k=1)
    with pytest.raises(ValueError, match=re.escape("v0 must be finite; non-finite values in sample(s) [1]")):
        v = torch.randn(2, 6, dtype=torch.float64)
        v[1, 2] = float("nan")
        curvext.lanczos(op, v, k=1)
    with pytest.raises(ValueError, match=re.escape("zero vector in sample(s) [0]")):
        curvext.lanczos(op, torch.cat([torch.zeros(1, 6), torch.ones(1, 6)]).double(), k=1)
    with pytest.raises(TypeError, match="v0 must be float32 or float64"):
        curvext.lanczos(op, torch.ones(2, 6, dtype=torch.int64), k=1)
    with pytest.raises(ValueError, match=re.escape("must return shape (2, 6)")):
        curvext.lanczos(lambda V, i: V[:, :3], torch.randn(2, 6, dtype=torch.float64), k=1)
    with pytest.raises(TypeError, match="must return torch.float64"):
        curvext.lanczos(lambda V, i: V.float(), torch.randn(2, 6, dtype=torch.float64), k=1)

    def nan_op(V, index):
        out = op(V, index)
        out[index == 1] = float("nan")
        return out

    with pytest.raises(FloatingPointError, match=re.escape("sample(s) [1]")):
        curvext.lanczos(nan_op, torch.randn(2, 6, dtype=torch.float64), k=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonfinite_products_name_the_sample(dtype, device):
    A = dense_batch(np.random.default_rng(4).standard_normal((3, 12)), dtype=dtype, device=device)
    op = batched_op(A)

    def nan_op(V, index):
        out = op(V, index)
        return torch.where((index == 1).view(-1, 1), torch.full_like(out, float("inf")), out)

    with pytest.raises(FloatingPointError, match=re.escape("sample(s) [1]")):
        curvext.lanczos(nan_op, torch.randn(3, 12, dtype=dtype).to(device), k=2)


def test_lanczos_step_deep_into_a_long_basis(device):
    """A step far beyond the basis of a typical run (> 6000 coefficients: the CUDA kernel's
    shared memory needs the opt-in above 48 KB) on a tiny problem, against a dense reference."""
    B, n, j = 2, 3, 7000
    basis = torch.zeros(B, j + 2, n, dtype=torch.float64, device=device)
    basis[:, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    basis[:, j] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # rows 1..j-1 are zero
    alpha = torch.zeros(B, j + 1, dtype=torch.float64, device=device)
    beta = torch.zeros(B, j + 1, dtype=torch.float64, device=device)
    beta[:, j - 1] = 0.5
    w = torch.tensor([[0.3, 2.0, 0.4], [0.0, -1.0, 0.0]], dtype=torch.float64, device=device)
    flags = torch.ops.curvext.lanczos_step(basis, w, alpha, beta, torch.arange(B, device=device), j, 1e-12, 0)
    # Sample 0: alpha = q_j . w = 2; r = w - 2 q_j - 0.5 q_{j-1} (q_{j-1} = 0) with its e0 part
    # removed by the reorthogonalisation: r = (0, 0, 0.4), beta = 0.4, next row e2.
    assert flags.tolist()[0] == 0
    assert float(alpha[0, j]) == pytest.approx(2.0, abs=1e-12) and float(beta[0, j]) == pytest.approx(0.4, abs=1e-12)
    torch.testing.assert_close(basis[0, j + 1].cpu(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # Sample 1: w = -q_j: an invariant subspace, so a breakdown flag and alpha = -1.
    assert flags.tolist()[1] != 0 and float(alpha[1, j]) == pytest.approx(-1.0, abs=1e-12)


def test_raw_lanczos_step_rejects_bad_arguments():
    basis = torch.zeros(2, 3, 5)
    alpha = torch.zeros(2, 2)
    beta = torch.zeros(2, 2)
    w = torch.zeros(1, 5)
    with pytest.raises(RuntimeError, match="step must be in"):
        torch.ops.curvext.lanczos_step(basis, w, alpha, beta, torch.tensor([0]), 2, 1e-6, 0)
    with pytest.raises(RuntimeError, match="outside the batch"):
        torch.ops.curvext.lanczos_step(basis, w, alpha, beta, torch.tensor([5]), 0, 1e-6, 0)
    with pytest.raises(RuntimeError, match="w must be"):
        torch.ops.curvext.lanczos_step(basis, torch.zeros(2, 5), alpha, beta, torch.tensor([0]), 0, 1e-6, 0)
    with pytest.raises(RuntimeError, match="dtype of basis"):
        torch.ops.curvext.lanczos_step(basis, w.double(), alpha, beta, torch.tensor([0]), 0, 1e-6, 0)
    # alpha and beta rows share one stride in the kernels: a wider beta would be written at the
    # wrong rows, so the widths must agree.
    with pytest.raises(RuntimeError, match="same width"):
        torch.ops.curvext.lanczos_step(basis, w, alpha, torch.zeros(2, 3), torch.tensor([0]), 0, 1e-6, 0)


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
def test_low_rank_operator_with_more_wanted_values_than_its_rank(which, device):
    # Rank 3 in n = 40: after the Krylov space {nonzero eigenvectors + one null direction} the
    # restart direction is an eigenvector (A = 0 on the complement), so the zero eigenvalue's
    # multiplicity is known and fills the k = 6 wanted values instead of NaN.
    n, k = 40, 6
    lam = torch.zeros(n, dtype=torch.float64)
    lam[:3] = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    lam = lam.to(device)
    res = curvext.lanczos(lambda V, i: lam * V, torch.randn(1, n, dtype=torch.float64).to(device), k=k, which=which)
    res = dataclasses.replace(res, **{f.name: getattr(res, f.name).cpu() for f in dataclasses.fields(res)})
    lam = lam.cpu()
    full = np.sort(lam.numpy())
    want = {"LA": full[-k:], "SA": full[:k], "BE": np.r_[full[: k // 2], full[n - (k + 1) // 2:]],
            "LM": np.sort(full[np.argsort(-np.abs(full), kind="stable")[:k]])}[which]
    np.testing.assert_allclose(res.eigenvalues[0].numpy(), want, atol=1e-12)
    assert res.converged.all() and res.steps[0] < n
    Y = res.eigenvectors[0]
    assert (Y @ Y.T - torch.eye(k, dtype=torch.float64)).abs().max() < 1e-12
    assert (lam * Y - res.eigenvalues[0][:, None] * Y).abs().max() < 1e-12
