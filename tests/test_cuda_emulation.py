"""The CUDA kernels' own device code, run on the CPU through tests/cuda_emulation/cuda_shim.h
(one std::thread per CUDA thread, barriers for __syncthreads and warp shuffles), against the
CPU kernels: no GPU is needed to catch a wrong index, a missing barrier or a reduction that
drops a warp in csrc/cuda/*_kernel.cuh. The launch configuration (grid, 256 threads, shared
memory bytes) is the CUDA launchers'; what cannot be checked here is timing-dependent (a race
the barriers hide) and the CUDA runtime calls themselves."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

import curvext
from curvext import _ops
from tests.linalg.test_lanczos import batched_op, dense_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emulated():
    from torch.utils.cpp_extension import load

    try:
        return load(name="curvext_cuda_emulation", sources=[str(ROOT / "tests/cuda_emulation/emulate_kernels.cpp")],
                    extra_include_paths=[str(ROOT / "csrc/include"), str(ROOT / "csrc/cuda"),
                                         str(ROOT / "tests/cuda_emulation")],
                    extra_cflags=["-std=c++20", "-O2"], verbose=False)
    except (RuntimeError, OSError) as err:  # no C++20 compiler: nothing to emulate with
        pytest.skip(f"cannot build the CUDA emulation: {str(err).splitlines()[0][:200]}")


@pytest.fixture
def with_emulated_kernels(emulated, monkeypatch):
    """The drivers call the emulated CUDA kernels in place of the CPU ones."""
    real = _ops.ops
    ops = types.SimpleNamespace(lanczos_step=emulated.lanczos_step, power_step=emulated.power_step,
                                tridiag_eigh=emulated.tridiag_eigh, ritz_vectors=real.ritz_vectors,
                                arrowhead_tridiag=emulated.arrowhead_tridiag)
    monkeypatch.setattr(_ops, "ops", ops)


def _raw_step_inputs(dtype, B=5, M=6, n=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.zeros(B, M + 1, n, dtype=dtype)
    basis[:, 0] = torch.nn.functional.normalize(torch.randn(B, n, generator=g, dtype=dtype), dim=1)
    A = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    A = (A + A.transpose(1, 2)).to(dtype)
    return basis, A, torch.zeros(B, M, dtype=dtype), torch.zeros(B, M, dtype=dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lanczos_steps_match_the_cpu_kernel(emulated, dtype, tol):
    """Six fused steps for a subset of samples (index 0, 2, 4) through both kernels."""
    basis, A, alpha, beta = _raw_step_inputs(dtype)
    runs = []
    for step_op in (torch.ops.curvext.lanczos_step, emulated.lanczos_step):
        Q, a, b = basis.clone(), alpha.clone(), beta.clone()
        idx = torch.tensor([0, 2, 4])
        flags = []
        for j in range(6):
            w = torch.einsum("bij,bj->bi", A[idx], Q[idx, j])
            flags.append(step_op(Q, w, a, b, idx, j, 100 * torch.finfo(dtype).eps, 7).tolist())
        runs.append((Q, a, b, flags))
    (Qc, ac, bc, fc), (Qe, ae, be, fe) = runs
    assert fc == fe
    torch.testing.assert_close(ae, ac, rtol=0, atol=tol)
    torch.testing.assert_close(be, bc, rtol=0, atol=tol)
    torch.testing.assert_close(Qe, Qc, rtol=0, atol=10 * tol)
    assert torch.equal(Qe[[1, 3]], basis[[1, 3]])  # samples outside the index are untouched


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lanczos_steps_from_per_sample_rows_match_the_cpu_kernel(emulated, dtype, tol):
    """Samples at different rows of their bases (as after restarts of different sizes)."""
    basis, A, alpha, beta = _raw_step_inputs(dtype, B=4, M=9)
    Q0 = basis[:, 0].clone()
    start = torch.tensor([0, 3, 1, 5])
    for s, r in enumerate(start.tolist()):  # sample s starts from row r: rows 0..r orthonormal
        basis[s, : r + 1] = torch.linalg.qr(torch.randn(basis.shape[2], r + 1, dtype=torch.float64))[0].T.to(dtype)
    basis[0, 0] = Q0[0]
    runs = []
    for step_op in (torch.ops.curvext.lanczos_step, emulated.lanczos_step):
        Q, a, b = basis.clone(), alpha.clone(), beta.clone()
        idx, rows = torch.tensor([3, 0, 1]), start[[3, 0, 1]].clone()
        flags = []
        for _ in range(3):
            w = torch.einsum("bij,bj->bi", A[idx], Q[idx, rows])
            flags.append(step_op(Q, w, a, b, idx, int(rows.max()), 100 * torch.finfo(dtype).eps, 7, rows).tolist())
            rows += 1
        runs.append((Q, a, b, flags))
    (Qc, ac, bc, fc), (Qe, ae, be, fe) = runs
    assert fc == fe
    torch.testing.assert_close(ae, ac, rtol=0, atol=tol)
    torch.testing.assert_close(be, bc, rtol=0, atol=tol)
    torch.testing.assert_close(Qe, Qc, rtol=0, atol=10 * tol)
    assert torch.equal(Qe[2], basis[2])  # a sample outside the index is untouched
    Qs = Qc[3, :9].double()  # sample 3 went from row 5 to row 8: orthonormal rows 0..8
    assert float((Qs @ Qs.T - torch.eye(9, dtype=torch.float64)).abs().max()) < 100 * tol
    with pytest.raises(RuntimeError, match=r"device assert failed: j >= 0 && j <= step"):
        emulated.lanczos_step(basis.clone(), torch.zeros(1, basis.shape[2], dtype=dtype), alpha.clone(),
                              beta.clone(), torch.tensor([0]), 2, 1e-6, 0, torch.tensor([3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_arrowhead_reduction_matches_the_cpu_kernel(emulated, dtype):
    from tests.linalg.test_arrowhead import dense_checks, problems

    for B, L, seed in ((7, 12, 0), (3, 40, 3), (2, 1, 4)):
        d, a, sizes = problems(dtype, B=B, L=L, seed=seed)
        sizes = sizes.clamp(max=L)
        want = torch.ops.curvext.arrowhead_tridiag(d, a, sizes)
        got = emulated.arrowhead_tridiag(d, a, sizes)
        tol = 1e-12 if dtype == torch.float64 else 1e-6  # the same float64 rotations, FMA aside
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=tol)
        dense_checks(d, a, sizes, *got, 1e-12 if dtype == torch.float64 else 3e-6)
    with pytest.raises(RuntimeError, match=r"device assert failed: p >= 0 && p <= L"):
        emulated.arrowhead_tridiag(d, a, torch.full((2,), 5))


def test_lanczos_step_flags_breakdown_exhausted_and_nonfinite(emulated):
    n = 4
    basis = torch.zeros(3, 3, n, dtype=torch.float64)
    basis[:, 0, 0] = 1.0
    alpha, beta = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
    w = torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0], [float("nan"), 0, 0, 0]], dtype=torch.float64)
    idx = torch.arange(3)
    results = []
    for step_op in (torch.ops.curvext.lanczos_step, emulated.lanczos_step):
        Q, a, b = basis.clone(), alpha.clone(), beta.clone()
        results.append((step_op(Q, w, a, b, idx, 0, 1e-12, 3), Q, a, b))
    (fc, Qc, ac, bc), (fe, Qe, ae, be) = results
    assert fe.tolist() == fc.tolist() and fe.tolist()[0] == 1 and fe.tolist()[2] == 3
    torch.testing.assert_close(Qe[:2], Qc[:2], rtol=0, atol=1e-12)  # the same restart direction
    torch.testing.assert_close(ae[:2], ac[:2]) and torch.testing.assert_close(be[:2], bc[:2])
    # n = 1: no direction left after a breakdown: exhausted.
    one = torch.ones(1, 2, 1, dtype=torch.float64)
    flags = emulated.lanczos_step(one.clone(), torch.tensor([[3.0]], dtype=torch.float64),
                                  torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                                  torch.tensor([0]), 0, 1e-12, 0)
    assert flags.tolist() == torch.ops.curvext.lanczos_step(
        one.clone(), torch.tensor([[3.0]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
        torch.zeros(1, 1, dtype=torch.float64), torch.tensor([0]), 0, 1e-12, 0).tolist() == [2]


def test_an_index_outside_the_batch_is_the_kernels_device_assert(emulated):
    basis, A, alpha, beta = _raw_step_inputs(torch.float64, B=2)
    w = torch.randn(1, basis.shape[2], dtype=torch.float64)
    # The host side does not read the index (that would synchronise on a GPU): the kernel traps.
    with pytest.raises(RuntimeError, match=r"device assert failed: s >= 0 && s < batch"):
        emulated.lanczos_step(basis, w, alpha, beta, torch.tensor([5]), 0, 1e-12, 0)


def test_lanczos_driver_on_emulated_kernels(with_emulated_kernels):
    rng = np.random.default_rng(9)
    A = dense_batch(rng.standard_normal((4, 60)))
    v0 = torch.randn(4, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    emulated_result = curvext.lanczos(batched_op(A), v0, k=4, which="BE", tol=1e-10)
    reference = np.linalg.eigvalsh(A.numpy())
    want = np.concatenate([reference[:, :2], reference[:, -2:]], axis=1)
    np.testing.assert_allclose(emulated_result.eigenvalues.numpy(), want, rtol=0, atol=1e-8)
    assert bool(emulated_result.converged.all())


def test_restarted_lanczos_on_emulated_kernels(with_emulated_kernels):
    """Restarts of different sizes (per-sample rows in every step after them) and the arrowhead
    reduction, all through the emulated CUDA kernels."""
    rng = np.random.default_rng(9)
    spectra = np.sort(rng.standard_normal((3, 80)), axis=1)
    spectra[1, -3:] = [2.5, 2.502, 2.504]
    A = dense_batch(spectra)
    v0 = torch.randn(3, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    res = curvext.lanczos(batched_op(A), v0, k=3, which="LA", tol=1e-9, basis_size=12)
    reference = np.linalg.eigvalsh(A.numpy())[:, -3:]
    np.testing.assert_allclose(res.eigenvalues.numpy(), reference, rtol=0, atol=1e-7)
    assert bool(res.converged.all()) and int(res.steps.max()) > 12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_power_steps_match_the_cpu_kernel(emulated, dtype):
    g = torch.Generator().manual_seed(2)
    v = torch.nn.functional.normalize(torch.randn(6, 300, generator=g, dtype=dtype), dim=1)
    w = torch.randn(6, 300, generator=g, dtype=dtype)
    shift = torch.randn(6, generator=g, dtype=dtype)
    v[5] = 0.0  # the zero-norm fallback: the output keeps v
    w[5] = 0.0
    shift[5] = 0.0
    got = emulated.power_step(v, w, shift, 1e-3)
    want = torch.ops.curvext.power_step(v, w, shift, 1e-3)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for g_, w_ in zip(got[:3], want[:3]):
        torch.testing.assert_close(g_, w_, rtol=tol, atol=tol)
    assert torch.equal(got[3], want[3])


def _hard_tridiagonals(dtype):
    """Random, split (zero off-diagonals), Wilkinson-like and repeated-eigenvalue matrices, m = 1..40."""
    rng = np.random.default_rng(4)
    cases = [(rng.standard_normal((6, m)), rng.standard_normal((6, m - 1))) for m in (1, 2, 3, 17, 40)]
    a, b = rng.standard_normal((4, 30)), rng.standard_normal((4, 29))
    b[:, ::7] = 0.0  # splits
    cases.append((a, b))
    w = np.abs(np.arange(21) - 10.0)[None].repeat(3, 0)  # Wilkinson W21+: near-equal pairs
    cases.append((w, np.ones((3, 20))))
    cases.append((np.full((2, 12), 2.0), np.zeros((2, 11))))  # one eigenvalue 12 times
    return [(torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)) for a, b in cases]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tridiag_matches_the_cpu_kernel_in_every_mode(emulated, dtype):
    eps = torch.finfo(dtype).eps
    for a, b in _hard_tridiagonals(dtype):
        scale = float(a.abs().max() + 2 * b.abs().max()) if b.numel() else float(a.abs().max())
        for mode in (0, 1, 2):
            want = torch.ops.curvext.tridiag_eigh(a, b, mode)
            got = emulated.tridiag_eigh(a, b, mode)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=64 * eps * scale)
            if mode == 0:
                continue
            # Vectors: same math (float64 inverse iteration on both devices), same sign rule;
            # inside a cluster any orthonormal basis is right, so compare the projectors there.
            T = torch.diag_embed(a.double()) + torch.diag_embed(b.double(), 1) + torch.diag_embed(b.double(), -1)
            if mode == 2:
                V = got[1].double()
                residual = (T @ V - V * got[0].double().unsqueeze(1)).abs().amax()
                assert float(residual) <= 1e3 * eps * scale
                gram = V.transpose(1, 2) @ V
                assert float((gram - torch.eye(a.shape[1], dtype=torch.float64)).abs().amax()) <= 1e3 * eps
            else:  # Gauss quadrature: sum_k first_k^2 theta_k^p = (T^p)_00, whatever basis a cluster gets
                weights, theta = got[1].double() ** 2, got[0].double()
                for p in (0, 1, 2):
                    exact = torch.linalg.matrix_power(T, p)[:, 0, 0]
                    torch.testing.assert_close((weights * theta**p).sum(1), exact, rtol=0,
                                               atol=1e3 * eps * max(1.0, scale) ** p)


def test_tridiag_launcher_chunks_a_large_batch(emulated):
    """B = 400 matrices of m = 200 do not fit the launcher's ~256 MiB workspace at once: three
    chunks, each landing at its own rows."""
    rng = np.random.default_rng(5)
    a = torch.tensor(rng.standard_normal((400, 200)))
    b = torch.tensor(rng.standard_normal((400, 199)))
    want = torch.ops.curvext.tridiag_eigh(a, b, 1)
    got = emulated.tridiag_eigh(a, b, 1)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1].abs(), want[1].abs(), rtol=0, atol=1e-9)
