"""curvext.training.penalty: parameter gradients against central differences in float64,
closed forms on linear and quadratic models, BatchNorm in train mode, bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvext.training.penalty import curvature_penalty


def logit_of_label(logits, y, reduction="sum"):
    """A loss linear in the logits, ``sum_b f_{y_b}(x_b)``: its input curvature is the model's."""
    assert reduction == "sum"
    return logits.gather(1, y[:, None]).sum()


class Quadratic(nn.Module):
    """f_c(x) = 1/2 x^T A_c x + b_c^T x with trainable A_c (symmetrised) and b_c."""

    def __init__(self, L=3, d=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # Planted spectra with a clear top in magnitude: |lambda_2| / |lambda_1| = 0.4 for every class.
        Q = torch.linalg.qr(torch.randn(L, d, d, generator=g, dtype=torch.float64))[0]
        top = torch.tensor([2.5, -3.0, 1.5], dtype=torch.float64)[:, None]
        spectrum = top * torch.linspace(-0.4, 0.4, d, dtype=torch.float64)
        spectrum[:, -1] = top[:, 0]
        self.A = nn.Parameter(Q @ torch.diag_embed(spectrum) @ Q.transpose(1, 2))
        self.b = nn.Parameter(torch.randn(L, d, generator=g, dtype=torch.float64))

    def sym(self):
        return (self.A + self.A.transpose(1, 2)) / 2

    def forward(self, x):
        z = x.reshape(x.shape[0], -1)
        return 0.5 * torch.einsum("bi,lij,bj->bl", z, self.sym(), z) + z @ self.b.T


def smooth_net(seed=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Softplus(), nn.Linear(4, 3)).double()


def central_difference_gradient(model, f, eps=1e-6):
    """``d f / d theta`` for every parameter entry by ``(f(theta + eps) - f(theta - eps)) / 2 eps``."""
    out = []
    with torch.no_grad():
        for p in model.parameters():
            g = torch.zeros_like(p)
            flat, gflat = p.view(-1), g.view(-1)
            for i in range(flat.numel()):
                keep = flat[i].item()
                flat[i] = keep + eps
                up = f().item()
                flat[i] = keep - eps
                down = f().item()
                flat[i] = keep
                gflat[i] = (up - down) / (2 * eps)
            out.append(g)
    return out


@pytest.mark.parametrize("kind, settings", [("cure", {"h": 0.3}), ("eig", {"iters": 30})])
def test_parameter_gradient_matches_central_differences_float64(kind, settings):
    model = smooth_net()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 2, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    value = curvature_penalty(model, x, y, kind=kind, **settings)
    grads = torch.autograd.grad(value, list(model.parameters()))
    if kind == "cure":  # z = sign(grad l) must not flip under the +-eps steps (it is constant there)
        xg = x.clone().requires_grad_(True)
        (gl,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        assert float(gl.abs().min()) > 1e-4
    else:  # the power steps converge: |lambda_2| / |lambda_1| <= 0.35 per image, 0.35^30 ~ 2e-14
        for b in range(4):
            H = torch.autograd.functional.hessian(
                lambda z: F.cross_entropy(model(z.view(1, 1, 2, 3)), y[b:b + 1], reduction="sum"), x[b].flatten())
            top2 = torch.linalg.eigvalsh(H).abs().sort().values[-2:]
            assert float(top2[0] / top2[1]) <= 0.35
    reference = central_difference_gradient(model, lambda: curvature_penalty(model, x, y, kind=kind, **settings))
    scale = max(float(r.abs().max()) for r in reference)
    assert scale > 1e-6  # a gradient that is there to compare
    for got, want in zip(grads, reference):
        # Central differences at eps 1e-6 in float64: truncation ~eps^2 |f'''| and rounding
        # ~1e-16 |f| / eps ~1e-10; "eig"'s power vector is converged, so detaching it costs
        # nothing (the Rayleigh quotient's derivative in the vector vanishes at an eigenvector).
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7 * scale)


def test_linear_model_has_zero_curvature_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    for kind in ("cure", "eig"):
        value = curvature_penalty(model, x, y, kind=kind, loss=logit_of_label)
        assert value.item() == 0.0
        value.backward()  # still differentiable
    # Cross-entropy is not linear in the logits: its softmax curves even a linear model's loss.
    assert curvature_penalty(model, x, y, kind="cure", loss=F.cross_entropy).item() > 0


def test_quadratic_model_closed_forms():
    model = Quadratic(L=3, d=6, seed=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    h = 0.7
    A = model.sym().detach().numpy()
    b = model.b.detach().numpy()
    z = x.reshape(4, -1).numpy()
    cure, eig = [], []
    for i in range(4):
        Ay = A[y[i]]
        grad = Ay @ z[i] + b[y[i]]  # grad l = A_y x + b_y
        u = np.sign(grad) / np.sqrt(grad.size)
        cure.append(np.sum((h * Ay @ u) ** 2))  # grad l(x + h u) - grad l(x) = h A_y u
        eig.append(np.abs(np.linalg.eigvalsh(Ay)).max())
    got = curvature_penalty(model, x, y, kind="cure", h=h, loss=logit_of_label)
    assert got.item() == pytest.approx(np.mean(cure), rel=1e-12)  # float64 rounding only
    assert np.mean(eig) == pytest.approx((2.5 + 3.0 + 3.0 + 1.5) / 4, rel=1e-12)  # the planted tops
    # 40 power steps at |lambda_2| / |lambda_1| = 0.4: the vector's error ~0.4^40 ~ 1e-16, the
    # Rayleigh quotient's its square: float64 rounding only.
    got = curvature_penalty(model, x, y, kind="eig", iters=40, loss=logit_of_label)
    assert got.item() == pytest.approx(np.mean(eig), rel=1e-12)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(),
                                  nn.Flatten(), nn.Linear(4 * 64, 10))

    def forward(self, x):
        return self.body(x)


def test_batchnorm_in_train_mode():
    torch.manual_seed(0)
    model = BNNet().double().train()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 10
    bn = model.body[1]
    bn.running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value = curvature_penalty(model, x, y, kind="cure", h=0.5)
    value.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    after = model.state_dict()
    for k in before:  # the penalty's passes leave running statistics and the batch count alone
        assert torch.equal(before[k], after[k]), k
    assert bn.momentum == 0.1
    # The value by hand on a copy (whose running statistics it updates): the batch's summed loss,
    # normalised by batch statistics, its gradient at x and at x + h z.
    ref = copy.deepcopy(model)
    xa = x.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(F.cross_entropy(ref(xa), y, reduction="sum"), xa)
    zs = torch.sign(g0)
    zs = zs / zs.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    xb = (x + 0.5 * zs).requires_grad_(True)
    (g1,) = torch.autograd.grad(F.cross_entropy(ref(xb), y, reduction="sum"), xb)
    want = (g1 - g0).flatten(1).pow(2).sum(1).mean()
    torch.testing.assert_close(value.detach(), want, rtol=1e-12, atol=0)
    assert not torch.equal(ref.body[1].running_mean, bn.running_mean)  # the reference did update its own
    # "eig" needs per-image Hessians: refused in train mode, computed in eval mode.
    with pytest.raises(ValueError, match=r"kind='eig' needs per-image input Hessians.*body\.1"):
        curvature_penalty(model, x, y, kind="eig")
    model.eval()
    assert torch.isfinite(curvature_penalty(model, x, y, kind="eig"))


def test_global_rng_untouched_and_deterministic():
    model = smooth_net()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    state = torch.get_rng_state()
    a = curvature_penalty(model, x, y, kind="eig", iters=3, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, curvature_penalty(model, x, y, kind="eig", iters=3, seed=4))


def test_bad_input_is_refused_by_name():
    model = smooth_net()
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="no parameters that require grad"):
        curvature_penalty(smooth_net().requires_grad_(False), x, y)
    with pytest.raises(ValueError, match="empty batch"):
        curvature_penalty(model, x[:0], y[:0])
    bad = x.clone()
    bad[1, 0, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"x must be finite; non-finite values in input\(s\) \[1\]"):
        curvature_penalty(model, bad, y)
    with pytest.raises(ValueError, match="x must be a floating"):
        curvature_penalty(model, x.long(), y)
    with pytest.raises(ValueError, match="y must be a tensor of targets with first dimension B = 3"):
        curvature_penalty(model, x, y[:2])
    with pytest.raises(ValueError, match="kind must be one of"):
        curvature_penalty(model, x, y, kind="hessian")
    for h in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="h must be a positive finite step"):
            curvature_penalty(model, x, y, h=h)
    with pytest.raises(ValueError, match="iters must be a positive int"):
        curvature_penalty(model, x, y, kind="eig", iters=0)
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        curvature_penalty(model, x, y, loss=lambda logits, y, reduction: F.cross_entropy(logits, y, reduction="none"))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        curvature_penalty(model, x, y)
