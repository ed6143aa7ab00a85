"""curvext.curvature.quadratic_forms against closed forms (quadratic classifiers) and dense Hessians."""
from __future__ import annotations

import pytest
import torch

from curvext.curvature.quadratic_forms import (
    _hessian_normal_rows,
    _hessian_normal_vectorised,
    _second_directional_derivatives,
    _second_directional_rows,
    class_curvature_sums,
    class_curvatures,
    hessian_normal_products,
    logit_quadratic_forms,
)


class Quadratic(torch.nn.Module):
    """f_c(x) = 1/2 x^T A_c x + b_c^T x on flattened inputs: every Hessian is known exactly."""

    def __init__(self, L=4, d=12, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(L, d, d, generator=g, dtype=torch.float64)
        self.register_buffer("A", (A + A.transpose(1, 2)) / 2)
        self.register_buffer("b", torch.randn(L, d, generator=g, dtype=torch.float64))

    def forward(self, x):
        z = x.reshape(x.shape[0], -1)
        return 0.5 * torch.einsum("bi,lij,bj->bl", z, self.A, z) + z @ self.b.T


def competing(pred, L, K):
    return torch.stack([torch.tensor([c for c in range(L) if c != p][:K]) for p in pred.tolist()])


def reference_kappa(model, x, cls, pred, V):
    z = x.reshape(x.shape[0], -1)
    B, K = cls.shape
    T = V.shape[0]
    out = torch.zeros(B, K, T, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            i, kh = cls[b, k], pred[b]
            H = model.A[i] - model.A[kh]
            g = H @ z[b] + model.b[i] - model.b[kh]
            n = g / g.norm()
            P = torch.eye(z.shape[1], dtype=torch.float64) - torch.outer(n, n)
            for j in range(T):
                u = P @ V[j].reshape(-1)
                out[b, k, j] = u @ H @ u / g.norm()
    return out


@pytest.mark.parametrize("method", ["autograd", "fd", "fd2"])
def test_quadratic_classifier_closed_form(method):
    model = Quadratic().eval()
    x = torch.randn(3, 1, 3, 4, dtype=torch.float64)
    pred = model(x).argmax(1)
    cls = competing(pred, 4, 3)
    V = torch.nn.functional.normalize(torch.randn(5, 12, dtype=torch.float64), dim=1).reshape(5, 1, 3, 4)
    kappa = class_curvatures(model, x, cls, pred, V, method, h=0.1)
    # Finite differences are exact on quadratics up to rounding (fd2 divides by h^2).
    reference = reference_kappa(model, x, cls, pred, V)
    torch.testing.assert_close(kappa, reference, rtol=0, atol=1e-10)
    # The sums over directions (what Algorithm 2 uses) by the sum-first route.
    sums = class_curvature_sums(model, x, cls, pred, V, method, h=0.1)
    torch.testing.assert_close(sums, reference.sum(dim=2), rtol=0, atol=1e-9)


class SmoothNet(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), act,
                                       torch.nn.Linear(32, 5)).double()

    def forward(self, x):
        return self.net(x)


def test_logit_quadratic_forms_match_dense_hessian_and_fd_converges():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(3, 16, dtype=torch.float64), dim=1).reshape(3, 1, 4, 4)
    exact = logit_quadratic_forms(model, x, V, "autograd", 0.0)
    for b in range(2):
        for l in range(5):
            H = torch.autograd.functional.hessian(lambda z: model(z.reshape(1, 1, 4, 4))[0, l], x[b].reshape(-1))
            for j in range(3):
                v = V[j].reshape(-1)
                assert abs(float(v @ H @ v) - float(exact[b, j, l])) < 1e-10
    errors = {}
    for method in ("fd", "fd2"):
        errors[method] = [float((logit_quadratic_forms(model, x, V, method, h) - exact).abs().max())
                          for h in (1e-1, 1e-2, 1e-3)]
        # Central differences: error O(h^2), so each 10x smaller h cuts it by ~100x.
        assert errors[method][1] < errors[method][0] / 30
        assert errors[method][2] < 1e-5


def test_relu_net_exact_zero_fd_not():
    model = SmoothNet(torch.nn.ReLU()).eval()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(6, 16, dtype=torch.float64), dim=1).reshape(6, 1, 4, 4)
    exact = logit_quadratic_forms(model, x, V, "autograd", 0.0)
    assert float(exact.abs().max()) == 0.0
    fd = logit_quadratic_forms(model, x, V, "fd2", 0.5)
    assert float(fd.abs().max()) > 1e-3


def test_chunking_does_not_change_results():
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(7, 16, dtype=torch.float64), dim=1).reshape(7, 1, 4, 4)
    for method in ("autograd", "fd", "fd2"):
        whole = logit_quadratic_forms(model, x, V, method, 0.1, max_rows=10_000)
        pieces = logit_quadratic_forms(model, x, V, method, 0.1, max_rows=6)
        torch.testing.assert_close(whole, pieces)


class SmoothConvNet(torch.nn.Module):
    """Conv + eval-mode BatchNorm + softplus + average pool: the layers vmap has to batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Softplus(),
            torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 6)).double()
        with torch.no_grad():
            self.net[1].running_mean.uniform_(-0.5, 0.5)
            self.net[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.net(x)


def test_vectorised_passes_equal_the_per_row_fallback():
    # The vmapped passes share each image's forward; the fallback repeats it per row. Same math,
    # different batching: equal to rounding.
    model = SmoothConvNet().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(5, 32, dtype=torch.float64), dim=1).reshape(5, 2, 4, 4)
    rows_x = x.repeat_interleave(5, dim=0)
    rows_v = V.repeat(3, 1, 1, 1)
    torch.testing.assert_close(_second_directional_derivatives(model, x, V),
                               _second_directional_rows(model, rows_x, rows_v).reshape(3, 5, 6),
                               rtol=1e-10, atol=1e-12)
    pred = model(x).argmax(1)
    cls = competing(pred, 6, 4)
    for got, want in zip(_hessian_normal_vectorised(model, x, cls, pred), _hessian_normal_rows(model, x, cls, pred)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Sum first (Taylor-mode sums, one H n per class) == per-direction curvatures summed.
    torch.testing.assert_close(class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0),
                               class_curvatures(model, x, cls, pred, V, "autograd", 0.0).sum(dim=2),
                               rtol=1e-10, atol=1e-12)


class _Cube(torch.autograd.Function):
    """x^3 with backward only: double backward works, torch.func.vmap does not."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class CubeNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.l1, self.l2 = torch.nn.Linear(6, 8).double(), torch.nn.Linear(8, 3).double()

    def forward(self, x):
        return self.l2(_Cube.apply(self.l1(x.flatten(1))))


def test_hessian_normal_products_fall_back_when_vmap_cannot_batch_the_model(caplog):
    model = CubeNet().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    cls, pred = torch.tensor([[1, 2], [0, 2]]), torch.tensor([0, 1])
    with caplog.at_level("WARNING", logger="curvext.curvature.quadratic_forms"):
        grad, hn = hessian_normal_products(model, x, cls, pred, "autograd", 0.0)
    assert "falling back" in caplog.text
    for b in range(2):
        for k in range(2):
            F = lambda z, i=int(cls[b, k]), j=int(pred[b]): model(z.unsqueeze(0))[0, i] - model(z.unsqueeze(0))[0, j]
            H = torch.autograd.functional.hessian(F, x[b])
            g = torch.autograd.functional.jacobian(F, x[b])
            torch.testing.assert_close(grad[2 * b + k], g, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(hn[2 * b + k], H @ (g / g.norm()), rtol=1e-10, atol=1e-12)


def test_scored_sums_choose_the_classes_from_their_own_forward_pass(monkeypatch, caplog):
    """scored_class_curvature_sums picks the same classes as a separate forward pass would, and
    returns class_curvature_sums' values for them, also on the per-row fallback."""
    import curvext.curvature.quadratic_forms as qf

    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    V = torch.nn.functional.normalize(torch.randn(5, 16, dtype=torch.float64), dim=1).reshape(5, 1, 4, 4)
    with torch.no_grad():
        logits = model(x)
    for classes in (None, 2):
        pred, cls = qf.competing_classes(logits, classes)
        assert cls.shape == (4, 4 if classes is None else 2)
        assert not (cls == pred.unsqueeze(1)).any()
        assert (logits.gather(1, cls).diff(dim=1) <= 0).all()  # by decreasing logit
        expected = class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0)
        got_logits, got_pred, got_cls, sums = qf.scored_class_curvature_sums(model, x, V, classes)
        torch.testing.assert_close(got_logits, logits, rtol=1e-14, atol=0)
        assert torch.equal(got_pred, pred) and torch.equal(got_cls, cls)
        torch.testing.assert_close(sums, expected, rtol=1e-12, atol=1e-14)

    def cannot_batch(*args):
        raise RuntimeError("vmap: no batching rule")

    monkeypatch.setattr(qf, "_hessian_normal_vectorised", cannot_batch)
    with caplog.at_level("WARNING", logger="curvext.curvature.quadratic_forms"):
        _, got_pred, got_cls, sums = qf.scored_class_curvature_sums(model, x, V, 2)
    assert "falling back" in caplog.text
    pred, cls = qf.competing_classes(logits, 2)
    assert torch.equal(got_cls, cls)
    torch.testing.assert_close(sums, class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0),
                               rtol=1e-12, atol=1e-14)


def test_a_model_torch_cannot_differentiate_twice_gets_a_clear_error():
    """Hardsigmoid (MobileNetV3's gates) has no double-backward formula in PyTorch: the exact
    method cannot run, and the error says which methods can."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Hardsigmoid(),
                                torch.nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    cls, pred = torch.tensor([[1, 2], [0, 2]]), torch.tensor([0, 1])
    with pytest.raises(RuntimeError, match=r"cannot differentiate twice.*method='fd' or 'fd2'"):
        hessian_normal_products(model, x, cls, pred, "autograd", 0.0)
    grad, hn = hessian_normal_products(model, x, cls, pred, "fd", 1e-3)  # the alternative runs
    assert torch.isfinite(hn).all()


def test_a_model_without_nested_forward_rules_gets_the_same_clear_error():
    """An in-place SiLU (EfficientNet's) has no forward-mode rule for its backward in PyTorch: the
    forward-over-forward sums cannot run (models with a Taylor-mode plan do not need them)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.SiLU(inplace=True),
                                torch.nn.Linear(8, 3)).double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    V = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"silu_backward.*method='fd' or 'fd2'"):
        logit_quadratic_forms(model, x, V, "autograd", 0.0)


def test_hessian_normal_products_split_the_classes_when_memory_runs_out(monkeypatch, caplog):
    import curvext.curvature.quadratic_forms as qf

    model = SmoothConvNet().eval()
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    pred = model(x).argmax(1)
    cls = competing(pred, 6, 5)
    whole = qf._hessian_normal_vectorised(model, x, cls, pred)
    real_vmap, sizes = qf.vmap, []

    def scarce_memory(fn):  # a device that holds at most two class slots at once
        def run(slots):
            sizes.append(slots.shape[0])
            if slots.shape[0] > 2:
                raise torch.OutOfMemoryError("out of memory")
            return real_vmap(fn)(slots)
        return run

    monkeypatch.setattr(qf, "vmap", scarce_memory)
    with caplog.at_level("INFO", logger="curvext.curvature.quadratic_forms"):
        split = qf._hessian_normal_vectorised(model, x, cls, pred)
    assert sizes == [5, 2, 3, 1, 2] and "splitting" in caplog.text
    for got, want in zip(split, whole):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
