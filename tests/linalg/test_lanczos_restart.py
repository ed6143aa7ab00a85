"""Thick-restart Lanczos (basis_size, max_steps) and its convergence reporting, against dense
float64 numpy.linalg.eigh of operators with planted spectra.

Tolerances: tol = 1e-10 bounds each pair's residual by 1e-10 max|lambda|; an eigenvalue's error is
then at most that (and for a separated one ~residual^2 / gap, far below), so 1e-8 relative is a
margin of 100 over what the solver promises; orthogonality of Ritz vectors of well separated
values follows to ~residual / gap.
"""
from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch

import curvext
from curvext import _ops
from tests.linalg.test_lanczos import batched_op, dense_batch

DRIVER = sys.modules["curvext.linalg.lanczos"]  # the module (curvext.linalg.lanczos is the function)


def issue_spectra(B=8, n=300):
    """The issue's case: linspace(-3, 2, n) with the top two values replaced by 10 and 9, so the
    third to fifth largest sit in a cluster of spacing 5 / (n - 1) at the wanted end."""
    spectrum = np.linspace(-3.0, 2.0, n)
    spectrum[-2:] = [9.0, 10.0]
    return np.stack([spectrum] * B)


def wanted(spectra, k, which):
    ref = np.sort(spectra, axis=1)
    n = ref.shape[1]
    if which == "LA":
        return ref[:, -k:]
    if which == "SA":
        return ref[:, :k]
    if which == "BE":
        return np.concatenate([ref[:, : k // 2], ref[:, n - (k + 1) // 2:]], axis=1)
    order = np.argsort(-np.abs(ref), axis=1, kind="stable")[:, :k]
    return np.sort(np.take_along_axis(ref, order, axis=1), axis=1)


def solve(spectra, k, which, seed=3, **kwargs):
    A = dense_batch(spectra, seed=seed)
    v0 = torch.randn(A.shape[0], A.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", curvext.ConvergenceWarning)
        res = curvext.lanczos(batched_op(A), v0, k=k, which=which, **kwargs)
    return A, res


def check_pairs(A, res, spectra, k, which, rel):
    scale = np.abs(spectra).max(axis=1, keepdims=True)
    err = np.abs(res.eigenvalues.numpy() - wanted(spectra, k, which)) / scale
    assert err.max() <= rel, err.max()
    Y = res.eigenvectors
    true_residual = (torch.einsum("bij,bkj->bki", A, Y) - res.eigenvalues.unsqueeze(2) * Y).norm(dim=2)
    # The reported residuals bound the true ones (up to rounding of the products, ~1e-15 here).
    assert bool((true_residual <= res.residuals + 1e-13).all())
    assert float(true_residual.max()) <= rel * float(scale.max())
    gram = Y @ Y.transpose(1, 2)
    assert float((gram - torch.eye(k, dtype=torch.float64)).abs().max()) < 1e-7


def test_issue_case_converges_with_default_settings():
    spectra = issue_spectra()
    A, res = solve(spectra, 5, "LA", tol=1e-10)
    assert bool(res.converged.all())
    # The old fixed budget (60 steps = the default basis) was not enough: the run restarted.
    assert int(res.steps.min()) > DRIVER.default_basis_size(5, 300)
    check_pairs(A, res, spectra, 5, "LA", 1e-8)


def test_small_basis_converges_in_bounded_memory(monkeypatch):
    shapes = []
    real = DRIVER._allocate_basis

    def recording(B, rows, n, device, dtype):
        shapes.append((B, rows, n))
        return real(B, rows, n, device, dtype)

    monkeypatch.setattr(DRIVER, "_allocate_basis", recording)
    spectra = issue_spectra()
    A, res = solve(spectra, 5, "LA", tol=1e-10, basis_size=30)
    assert shapes == [(8, 31, 300)]  # the run's whole basis: basis_size + 1 vectors per sample
    assert int(res.steps.min()) > 31  # ~140 steps: more than four bases' worth of new vectors
    assert bool(res.converged.all())
    check_pairs(A, res, spectra, 5, "LA", 1e-8)


@pytest.mark.parametrize("which", ["SA", "BE", "LM"])
@pytest.mark.parametrize("basis_size", [15, 30])
def test_restarted_ends(which, basis_size):
    spectra = issue_spectra(B=3)
    A, res = solve(spectra, 5, which, tol=1e-10, basis_size=basis_size)
    assert bool(res.converged.all()) and int(res.steps.min()) > basis_size
    check_pairs(A, res, spectra, 5, which, 1e-8)


def test_clustered_ends_both_sides():
    n = 300
    spectrum = np.linspace(-1.0, 1.0, n)
    spectrum[:3] = [-2.0, -1.999, -1.998]
    spectrum[-3:] = [2.0, 2.0005, 2.001]
    spectra = np.stack([spectrum] * 3)
    A, res = solve(spectra, 6, "BE", tol=1e-10, basis_size=20)
    assert bool(res.converged.all())
    check_pairs(A, res, spectra, 6, "BE", 1e-8)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_degenerate_end_with_restarts(which):
    """A double eigenvalue at the wanted end: k = 1 gives it with a vector in its 2-D eigenspace;
    k = 3 gives it (once, or twice when rounding reveals the second copy) and true eigenvalues."""
    n = 300
    spectrum = np.linspace(-1.0, 1.0, n)
    spectrum[[-1, -2] if which == "LA" else [0, 1]] = 3.0 if which == "LA" else -3.0
    spectra = np.stack([spectrum] * 3)
    A, res = solve(spectra, 1, which, tol=1e-10, basis_size=12)
    target = 3.0 if which == "LA" else -3.0
    np.testing.assert_allclose(res.eigenvalues[:, 0].numpy(), target, rtol=1e-9)
    Y = res.eigenvectors[:, 0]
    assert float((torch.einsum("bij,bj->bi", A, Y) - target * Y).norm(dim=1).max()) < 1e-8
    A, res = solve(spectra, 3, which, tol=1e-10, basis_size=12)
    assert bool(res.converged.all())
    values = res.eigenvalues.numpy()
    distance = np.abs(values[:, :, None] - np.sort(spectra, axis=1)[:, None, :]).min(axis=2)
    assert distance.max() <= 1e-8 * 3.0  # every value is an eigenvalue
    ends = values[:, -1] if which == "LA" else values[:, 0]
    np.testing.assert_allclose(ends, target, rtol=1e-9)


def test_samples_restart_at_different_steps(monkeypatch):
    rng = np.random.default_rng(0)
    n = 300
    spectra = np.sort(rng.standard_normal((6, n)), axis=1)
    spectra[0, -4:] = [20.0, 30.0, 40.0, 50.0]  # converges before its first restart
    spectra[3, -5:] = np.linspace(3.0, 3.01, 5)  # a tight cluster: many restarts
    restarted = []
    real = DRIVER.thick_restart

    def recording(basis, alpha, beta, locked_error, rows, *args):
        kept = real(basis, alpha, beta, locked_error, rows, *args)
        restarted.append(dict(zip(rows.tolist(), kept.tolist())))
        return kept

    monkeypatch.setattr(DRIVER, "thick_restart", recording)
    A, res = solve(spectra, 4, "LA", tol=1e-10, basis_size=16)
    assert bool(res.converged.all())
    check_pairs(A, res, spectra, 4, "LA", 1e-8)
    assert all(0 not in r for r in restarted)
    # Samples keep different numbers of vectors (their own locks), so their bases fill at
    # different steps: some restarts take only part of the samples still running.
    assert len({tuple(sorted(r)) for r in restarted}) > 1
    assert len({kept for r in restarted for kept in r.values()}) > 1


def test_breakdown_on_the_step_that_fills_the_basis(monkeypatch):
    """v0 spans exactly 6 eigenvectors and basis_size = 6: the sixth step breaks down (an
    invariant subspace) as the basis fills. The restart keeps exact Ritz pairs (zero coupling)
    and continues from the fresh direction, finding the true top pair outside the start space.
    (Rounding outside the subspace grows by ~||A|| / beta per step, ~1e-13 after six steps here:
    breakdown_tol 1e-9 calls that a breakdown, as the default 100 eps would after fewer steps.)"""
    n, M = 80, 6
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.linspace(-1.0, 1.0, n)
    lam[-2:] = [3.0, 4.0]
    A = torch.tensor((Q * lam) @ Q.T).unsqueeze(0)
    v0 = torch.tensor(Q[:, [0, 15, 30, 45, 60, 75]] @ rng.standard_normal(M)).unsqueeze(0)
    couplings = []
    real = DRIVER.thick_restart

    def recording(basis, alpha, beta, locked_error, rows, theta, *args):
        couplings.append(float(beta[rows, theta.shape[1] - 1].abs().max()))
        return real(basis, alpha, beta, locked_error, rows, theta, *args)

    monkeypatch.setattr(DRIVER, "thick_restart", recording)
    res = curvext.lanczos(batched_op(A), v0, k=2, which="LA", tol=1e-10, basis_size=M, breakdown_tol=1e-9)
    assert couplings and couplings[0] == 0.0  # the first restart came with the breakdown
    np.testing.assert_allclose(res.eigenvalues[0].numpy(), [3.0, 4.0], rtol=1e-9)
    assert bool(res.converged.all())


def test_float32_restarts():
    spectra = issue_spectra(B=4)
    A = dense_batch(spectra, seed=3, dtype=torch.float32)
    v0 = torch.randn(4, 300, generator=torch.Generator().manual_seed(1))
    res = curvext.lanczos(batched_op(A), v0, k=5, which="LA", tol=1e-6, basis_size=30)
    assert bool(res.converged.all())
    # float32 products carry ~1e-7 relative rounding; tol 1e-6 is what the residuals reach.
    err = np.abs(res.eigenvalues.double().numpy() - wanted(spectra, 5, "LA")) / 10.0
    assert err.max() < 1e-5


def test_padding_keeps_the_scale_of_small_operators():
    """Samples of different sizes are solved as one padded batch: the pad must scale with T, or
    float32 bisection (accurate to ~eps times the padded norm) loses a 1e-4-sized spectrum."""
    rng = np.random.default_rng(3)
    spectra = 1e-4 * np.sort(rng.standard_normal((4, 150)), axis=1)
    spectra[0, -1] = 1e-3  # stops early: the others are padded past its size
    A = dense_batch(spectra, dtype=torch.float32)
    res = curvext.lanczos(batched_op(A), torch.randn(4, 150), k=3, which="LA", tol=1e-5, basis_size=150)
    assert len(set(res.steps.tolist())) > 1
    scale = np.abs(spectra).max(axis=1, keepdims=True)
    err = np.abs(res.eigenvalues.double().numpy() - wanted(spectra, 3, "LA")) / scale
    assert err.max() < 1e-5  # float32 Lanczos reaches ~1e-6 here; a pad of order 1 gave 4.5e-5


def hard_and_easy(B=4, n=200):
    """Even samples: one value far above the rest (a few steps); odd samples: a tight cluster at
    the top (hundreds of steps at tol 1e-10)."""
    spectra = np.stack([np.linspace(-1.0, 1.0, n)] * B)
    spectra[0::2, -1] = 20.0
    spectra[1::2, -3:] = [1.0005, 1.001, 1.0015]
    return spectra


def test_warning_names_the_unconverged_samples():
    spectra = hard_and_easy()
    A = dense_batch(spectra)
    v0 = torch.randn(4, 200, dtype=torch.float64)
    with pytest.warns(curvext.ConvergenceWarning) as record:
        res = curvext.lanczos(batched_op(A), v0, k=1, which="LA", tol=1e-10, max_steps=40)
    assert len(record) == 1
    message = str(record[0].message)
    named = [int(i) for i in re.findall(r"(\d+) \((?:[0-9.]+e[+-]\d+|inf)\)", message)]
    assert named == [1, 3]
    assert res.converged[:, 0].tolist() == [True, False, True, False]  # per-pair flags kept
    assert bool((res.residuals[1::2] > 1e-10 * res.eigenvalues[1::2].abs()).all())
    worst = float(re.search(r"1 \(([0-9.e+-]+)\)", message).group(1))
    assert worst == pytest.approx(float(res.residuals[1, 0] / res.eigenvalues[1, 0].abs()), rel=0.06)
    assert issubclass(curvext.ConvergenceWarning, UserWarning)


def test_warning_lists_ten_samples_then_a_count():
    spectra = hard_and_easy(B=26)
    A = dense_batch(spectra)
    with pytest.warns(curvext.ConvergenceWarning, match=r"13 of 26 samples .* 19 \([^)]*\) and 3 more"):
        curvext.lanczos(batched_op(A), torch.randn(26, 200, dtype=torch.float64), k=1, tol=1e-10, max_steps=40)


def test_strict_raises_with_the_partial_result():
    spectra = hard_and_easy()
    A = dense_batch(spectra)
    v0 = torch.randn(4, 200, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict raises instead of warning
        with pytest.raises(curvext.ConvergenceError, match="did not converge within max_steps = 40") as info:
            curvext.lanczos(batched_op(A), v0, k=1, which="LA", tol=1e-10, max_steps=40, strict=True)
    err = info.value
    assert err.samples == [1, 3]
    assert isinstance(err.result, curvext.EigResult)
    assert err.result.converged[:, 0].tolist() == [True, False, True, False]
    np.testing.assert_allclose(err.result.eigenvalues[0::2, 0].numpy(), 20.0, rtol=1e-10)
    assert err.result.steps.tolist()[1::2] == [40, 40]
    # With the default budget the same run converges: strict has nothing to raise.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = curvext.lanczos(batched_op(A), v0, k=1, which="LA", tol=1e-10, strict=True)
    assert bool(res.converged.all())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(k=5, basis_size=5), "basis_size must exceed k = 5"),
        (dict(k=2, basis_size=0), "basis_size must be a positive int"),
        (dict(k=2, basis_size=True), "basis_size must be a positive int"),
        (dict(k=2, basis_size=2.5), "basis_size must be a positive int"),
        (dict(k=2, max_steps=True), "max_steps must be a positive int"),
    ],
)
def test_bad_basis_arguments(kwargs, words):
    op = batched_op(dense_batch(np.ones((1, 50))))
    with pytest.raises(ValueError, match=re.escape(words)):
        curvext.lanczos(op, torch.randn(1, 50, dtype=torch.float64), **kwargs)


def test_a_basis_as_large_as_the_budget_never_restarts(monkeypatch):
    monkeypatch.setattr(DRIVER, "thick_restart", lambda *a: pytest.fail("restarted"))
    spectra = issue_spectra(B=2)
    A, res = solve(spectra, 5, "LA", tol=1e-1, max_steps=200, basis_size=200)
    assert bool(res.converged.all())
    # basis_size = k is allowed when it covers max_steps: nothing to restart, the budget ends the run.
    with pytest.warns(curvext.ConvergenceWarning):
        curvext.lanczos(batched_op(dense_batch(spectra)), torch.randn(2, 300, dtype=torch.float64), k=5,
                        basis_size=5, max_steps=5, tol=1e-10)
    assert DRIVER.default_max_steps(300) == 3000 and DRIVER.default_max_steps(10**6) == DRIVER.MAX_STEPS_CAP


def test_cuda_restarts_match_cpu_in_bounded_memory():
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    spectra = issue_spectra()
    A = dense_batch(spectra, seed=3)
    v0 = torch.randn(8, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cpu = curvext.lanczos(batched_op(A), v0, k=5, which="BE", tol=1e-10, basis_size=30)
    A_gpu, v0_gpu = A.cuda(), v0.cuda()
    peaks, results = [], []
    for basis_size in (30, 300):  # restarted; unrestarted (~140 steps fit in the basis)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        results.append(curvext.lanczos(batched_op(A_gpu), v0_gpu, k=5, which="BE", tol=1e-10,
                                       basis_size=basis_size))
        peaks.append(torch.cuda.max_memory_allocated() - before)
    gpu, unrestarted = results
    assert int(unrestarted.steps.max()) < 300 and int(gpu.steps.min()) > 30
    # Bases of 31 and ~140 vectors (0.6 and 2.7 MB); workspaces of the tridiagonal solves add
    # about the same to both.
    assert peaks[0] < 0.5 * peaks[1]
    torch.testing.assert_close(gpu.eigenvalues.cpu(), cpu.eigenvalues, rtol=0, atol=1e-8 * 10)
    torch.testing.assert_close(unrestarted.eigenvalues.cpu(), cpu.eigenvalues, rtol=0, atol=1e-8 * 10)
    assert bool(gpu.converged.all())


def test_an_operator_that_returns_exact_zeros_mid_run_is_a_breakdown_not_noise():
    """A finite-difference operator on a ReLU net can return exactly zero for a Lanczos vector
    (both points in one linear region). What rounding leaves of the residual then is no
    direction, and normalising it gave the next Lanczos vector; it is a breakdown."""
    torch.manual_seed(0)
    B, n = 4, 40
    Q = torch.linalg.qr(torch.randn(B, n, n, dtype=torch.float64))[0]
    A = Q @ torch.diag_embed(torch.linspace(-1, 2, n, dtype=torch.float64).repeat(B, 1)) @ Q.transpose(1, 2)
    calls = []

    def op(V, index):
        calls.append(1)
        out = torch.einsum("bij,bj->bi", A[index], V)
        return out if len(calls) <= 3 else torch.zeros_like(out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvext.ConvergenceWarning)
        res = curvext.lanczos(op, torch.randn(B, n, dtype=torch.float64), k=2, which="LA", max_steps=30)
    assert torch.isfinite(res.eigenvalues).all() and torch.isfinite(res.eigenvectors).all()
    assert float(res.eigenvectors.abs().max()) <= 1.0 + 1e-12  # unit vectors, not amplified rounding
