"""curvext.curvature.hvp: exact and finite-difference input Hessian products against dense Hessians."""
from __future__ import annotations

import re

import pytest
import torch

from curvext.curvature.hvp import InputHessian
from tests.curvature.test_quadratic_forms import Quadratic, SmoothNet


def dense_hessian(model, x, a, c):
    out = []
    for b in range(x.shape[0]):
        F = lambda z, b=b: (lambda o: o[0, a[b]] - o[0, c[b]])(model(z.reshape(1, *x.shape[1:])))  # noqa: E731
        out.append(torch.autograd.functional.hessian(F, x[b].reshape(-1)))
    return torch.stack(out)


def pairs(model, x):
    top = model(x).topk(2, 1).indices
    return top[:, 1], top[:, 0]


@pytest.mark.parametrize("method", ["autograd", "fd"])
def test_quadratic_model_exact(method):
    model = Quadratic().eval()
    x = torch.randn(4, 1, 3, 4, dtype=torch.float64)
    a, c = pairs(model, x)
    H = InputHessian(model, x, a, c, method=method, h=0.3)
    V = torch.randn(4, 1, 3, 4, dtype=torch.float64)
    ref = torch.einsum("bij,bj->bi", model.A[a] - model.A[c], V.reshape(4, -1)).reshape(V.shape)
    torch.testing.assert_close(H(V, torch.arange(4)), ref, rtol=1e-10, atol=1e-10)
    # Subsets of the batch, in any order, give the same rows.
    idx = torch.tensor([3, 1])
    torch.testing.assert_close(H(V[idx], idx), ref[idx], rtol=1e-10, atol=1e-10)


def test_autograd_matches_dense_and_fd_converges():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    a, c = pairs(model, x)
    V = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    idx = torch.arange(3)
    ref = torch.einsum("bij,bj->bi", dense_hessian(model, x, a, c), V.reshape(3, -1)).reshape(V.shape)
    torch.testing.assert_close(InputHessian(model, x, a, c)(V, idx), ref, rtol=1e-9, atol=1e-10)
    errs = [float((InputHessian(model, x, a, c, method="fd", h=h)(V, idx) - ref).abs().max())
            for h in (1e-1, 1e-2, 1e-3)]
    assert errs[1] < errs[0] / 30 and errs[2] < 1e-5  # central differences: O(h^2)
    q = InputHessian(model, x, a, c, method="fd2", h=1e-3).quadratic_form(V, idx)
    torch.testing.assert_close(q, (V * ref).flatten(1).sum(1), rtol=1e-4, atol=1e-5)


def test_relu_exact_zero_fd_nonzero():
    model = SmoothNet(torch.nn.ReLU()).eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    a, c = pairs(model, x)
    V = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    assert float(InputHessian(model, x, a, c)(V, torch.arange(3)).abs().max()) == 0.0
    assert float(InputHessian(model, x, a, c, method="fd", h=0.5)(V, torch.arange(3)).abs().max()) > 1e-4


def test_graph_rebuilt_for_remaining_samples_gives_same_products():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    a, c = pairs(model, x)
    H = InputHessian(model, x, a, c)
    V = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    full = H(V, torch.arange(8))
    idx = torch.tensor([6, 2])
    part = H(V[idx], idx)  # graph shrinks to these two samples
    assert H._graph_rows.tolist() == [6, 2]
    torch.testing.assert_close(part, full[idx])
    torch.testing.assert_close(H(V[:3], torch.arange(3)), full[:3])  # grows back when needed


def test_refusals_and_errors():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    a, c = pairs(model, x)
    with pytest.raises(ValueError, match="eval mode"):
        InputHessian(SmoothNet(torch.nn.Softplus()).train(), x, a, c)
    with pytest.raises(ValueError, match="batch statistics|eval mode"):
        bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3)).double()
        InputHessian(bn, x, a, c)
    with pytest.raises(ValueError, match=re.escape("a must be a (B,) = (2,) int64")):
        InputHessian(model, x, a[:1], c)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=re.escape("sample(s) [1]")):
        InputHessian(model, bad, a, c)
    with pytest.raises(ValueError, match="quadratic forms only"):
        InputHessian(model, x, a, c, method="fd2")(x, torch.arange(2))
    H = InputHessian(model, x, a, c)
    V = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="V must match x's dtype"):
        H(V.float(), torch.arange(2))
    with pytest.raises(ValueError, match=re.escape("V must be (b, *shape) = (2, (1, 4, 4))")):
        H(V[:, :, :2], torch.arange(2))
    with pytest.raises(ValueError, match="index must lie in"):
        H(V, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="index must be a"):
        H(V, torch.tensor([0.0, 1.0]))
    V[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=re.escape("sample(s) [0]")):
        H(V, torch.arange(2))
