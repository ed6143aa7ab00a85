"""curvext.power_iteration and the power_step op against dense eigendecompositions."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import curvext
from curvext import _ops
from tests.linalg.test_lanczos import batched_op, dense_batch


@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
@pytest.mark.parametrize("dtype, tol, rtol", [(torch.float64, 1e-9, 1e-6), (torch.float32, 1e-4, 1e-4)])
def test_extremal_eigenvalue(which, dtype, tol, rtol, device):
    n = 50
    # Both ends of every spectrum are separated from the bulk so the shifted runs converge
    # within max_iters (the ratio of the two largest shifted magnitudes is <= 0.92).
    spectra = np.stack([np.linspace(-0.5, 0.5, n) for _ in range(4)])
    for s, (lo, hi) in enumerate([(-1, 5), (-5, 1), (-4, 3), (-2, 1)]):
        spectra[s, 0], spectra[s, -1] = lo, hi
    A = dense_batch(spectra, dtype=dtype, device=device)
    v0 = torch.randn(4, n, dtype=dtype, device=device)
    res = curvext.power_iteration(batched_op(A), v0, which=which, max_iters=2000, tol=tol)
    ref = np.sort(spectra, axis=1)
    want = {"LA": ref[:, -1], "SA": ref[:, 0],
            "LM": np.take_along_axis(ref, np.abs(ref).argmax(1)[:, None], 1)[:, 0]}[which]
    got = res.eigenvalues[:, 0].double().cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=rtol * 10 if dtype == torch.float32 else rtol)
    assert res.converged.all()
    y = res.eigenvectors[:, 0].double()
    ay = torch.einsum("bij,bj->bi", A.double(), y)
    bound = 2 * tol * np.abs(want).max() + (1e-5 if dtype == torch.float32 else 0)
    assert ((ay - res.eigenvalues.double() * y).norm(dim=1) <= bound).all()


def test_samples_stop_at_their_own_iteration():
    n = 30
    spectra = np.stack([np.linspace(0, 1, n)] * 2)
    spectra[0, -1] = 50.0  # fast
    spectra[1, -1] = 1.2   # slow
    A = dense_batch(spectra)
    res = curvext.power_iteration(batched_op(A), torch.randn(2, n, dtype=torch.float64), max_iters=1000, tol=1e-10)
    assert res.steps[0] < res.steps[1]
    np.testing.assert_allclose(res.eigenvalues[:, 0].numpy(), [50.0, 1.2], rtol=1e-8)


def test_power_step_op(device):
    v = torch.nn.functional.normalize(torch.randn(3, 8, dtype=torch.float64, device=device), dim=1)
    w = torch.randn(3, 8, dtype=torch.float64, device=device)
    shift = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64, device=device)
    v_next, theta, residual, conv = torch.ops.curvext.power_step(v, w, shift, 1e-3)
    t = (v * w).sum(1)
    torch.testing.assert_close(theta, t)
    torch.testing.assert_close(residual, (w - t[:, None] * v).norm(dim=1))
    torch.testing.assert_close(v_next, torch.nn.functional.normalize(w + shift[:, None] * v, dim=1))
    assert torch.equal(conv, residual <= 1e-3 * t.abs())
    torch.library.opcheck(torch.ops.curvext.power_step, (v, w, shift, 1e-3))


def test_cuda_power_matches_cpu():
    if not (torch.cuda.is_available() and _ops.has_cuda_kernels()):
        pytest.skip("needs a CUDA GPU and a CUDA build")
    A = dense_batch(np.random.default_rng(1).standard_normal((5, 40)))
    v0 = torch.randn(5, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rc = curvext.power_iteration(batched_op(A), v0, which="LA", max_iters=500, tol=1e-8)
    rg = curvext.power_iteration(batched_op(A.cuda()), v0.cuda(), which="LA", max_iters=500, tol=1e-8)
    torch.testing.assert_close(rg.eigenvalues.cpu(), rc.eigenvalues, rtol=1e-7, atol=1e-9)


def test_bad_arguments():
    op = batched_op(dense_batch(np.ones((2, 6))))
    v0 = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="which must be one of"):
        curvext.power_iteration(op, v0, which="BE")
    with pytest.raises(ValueError, match="max_iters must be a positive int"):
        curvext.power_iteration(op, v0, max_iters=0)
    with pytest.raises(ValueError, match=re.escape("tol must be > 0")):
        curvext.power_iteration(op, v0, tol=-1.0)
    with pytest.raises(ValueError, match="empty batch"):
        curvext.power_iteration(op, v0[:0])
    with pytest.raises(RuntimeError, match="shift must be"):
        torch.ops.curvext.power_step(v0, v0, torch.zeros(3, dtype=torch.float64), 1e-3)
