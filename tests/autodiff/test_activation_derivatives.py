"""curvext.autodiff.activation_derivatives against torch's own derivatives (reverse mode, twice), float64."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import grad
from torch.nn import functional as F

from curvext.autodiff import activation_derivatives, taylor_plan
from curvext.curvature.quadratic_forms import logit_quadratic_form_sums

CASES = {
    "Softplus": (nn.Softplus(), (), {}),
    "Softplus beta=2 threshold=5": (nn.Softplus(beta=2.0, threshold=5.0), (), {}),
    "F.softplus positional": (F.softplus, (0.5, 4.0), {}),
    "F.softplus keywords": (F.softplus, (), {"beta": 3.0, "threshold": 6.0}),
    "Tanh": (nn.Tanh(), (), {}),
    "torch.tanh": (torch.tanh, (), {}),
    "Sigmoid": (nn.Sigmoid(), (), {}),
    "torch.sigmoid": (torch.sigmoid, (), {}),
    "SiLU": (nn.SiLU(), (), {}),
    "F.silu": (F.silu, (), {}),
}


@pytest.mark.parametrize("name", CASES)
def test_closed_forms_equal_reverse_mode_derivatives(name):
    fn, extra, kwargs = CASES[name]
    # Both signs, the flat tails and both sides of Softplus's thresholds (beta z = threshold).
    z = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64),
                   torch.tensor([4.0 / 0.5 - 1e-3, 4.0 / 0.5 + 1e-3, 2.5 - 1e-3, 2.5 + 1e-3, 2.0 - 1e-3, 2.0 + 1e-3,
                                 20 - 1e-3, 20 + 1e-3], dtype=torch.float64)])

    def sigma(v):
        return fn(v, *extra, **kwargs)

    def slope_of(v):
        return grad(lambda w: sigma(w).sum())(v)

    want_slope = slope_of(z)
    want_bend = grad(lambda v: slope_of(v).sum())(z)
    derivatives = activation_derivatives.closed_form(fn, (z,) + extra, kwargs)
    assert derivatives is not None
    value, slope, bend = derivatives(z)
    torch.testing.assert_close(value, sigma(z), rtol=1e-14, atol=0)  # relative, also in the tails
    torch.testing.assert_close(slope, want_slope, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bend, want_bend, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2.0, 5.0), (0.5, 4.0), (3.0, 20.0), (0.1, 20.0)])
def test_softplus_value_is_accurate_to_a_few_units_in_the_last_place(dtype, beta, threshold):
    # Reference: torch's softplus in float64 on the same (rounded) inputs; |beta z| <= 80 keeps
    # exp(-|beta z|) out of float32's subnormal range, where every implementation loses digits.
    # Results below the dtype's smallest normal number (float16: |beta z| > 9.7) lose digits anyway.
    bound = min(80.0, -math.log(torch.finfo(dtype).tiny) - 1) / beta
    z = torch.cat([torch.linspace(-bound, bound, 200001, dtype=torch.float64).to(dtype),
                   torch.tensor([0.0, 1e-30, -1e-30, threshold / beta, threshold / beta * (1 + 1e-6)], dtype=dtype)])
    reference = F.softplus(z.double(), beta, threshold)
    got = activation_derivatives.softplus(z, beta, threshold)
    assert got.dtype == dtype
    ulps = (got.double() - reference).abs() / reference.abs() / torch.finfo(dtype).eps
    # Half precision is computed in float32 and rounded once, as torch does. In float32/64 the
    # rounded product beta z alone costs up to |beta z| ulp in the left tail (softplus ~ exp there),
    # as it does in torch's kernel; beta = 0.5 and 2 multiply exactly.
    if dtype in (torch.float16, torch.bfloat16):
        assert float(ulps.max()) < 1
    else:
        assert bool((ulps < 4 + (z.double() * beta).abs()).all()), float(ulps.max())
        if beta in (0.5, 1.0, 2.0):
            assert float(ulps.max()) < 4


def test_softplus_has_torchs_derivatives_in_every_mode():
    # Reverse mode twice, forward mode twice, mixed, vmap and a forward-mode dual level, at 0, in
    # both tails and around the threshold (the value's own expression would give 0/0 and
    # cancellation there): all of them see torch's softplus.
    z = torch.tensor([-40.0, -20.0, -3.0, 0.0, 1e-9, 2.0, 4.9, 5.0, 5.1, 18.0, 40.0], dtype=torch.float64)

    def ours(v):
        return activation_derivatives.softplus(v, 2.0, 10.0)

    def torchs(v):
        return F.softplus(v, 2.0, 10.0)

    def slope(f):
        return lambda v: grad(lambda w: f(w).sum())(v)

    tangent = torch.linspace(-1, 1, z.numel(), dtype=torch.float64)
    for derivative in (slope,  # reverse
                       lambda f: lambda v: grad(lambda w: slope(f)(w).sum())(v),  # reverse over reverse
                       lambda f: lambda v: torch.func.jvp(f, (v,), (tangent,))[1],  # forward
                       lambda f: lambda v: torch.func.jvp(lambda w: torch.func.jvp(f, (w,), (tangent,))[1],
                                                          (v,), (tangent,))[1],  # forward over forward
                       lambda f: lambda v: torch.func.jvp(slope(f), (v,), (tangent,))[1],  # forward over reverse
                       lambda f: lambda v: torch.func.vmap(slope(f))(torch.stack([v, -v]))):
        torch.testing.assert_close(derivative(ours)(z), derivative(torchs)(z), rtol=1e-14, atol=0)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(z, tangent)
        torch.testing.assert_close(torch.autograd.forward_ad.unpack_dual(ours(dual)).tangent,
                                   torch.autograd.forward_ad.unpack_dual(torchs(dual)).tangent, rtol=1e-14, atol=0)
    # Compiled, a torch.func transform still sees torch's softplus.
    compiled = torch.compile(lambda v: grad(lambda w: ours(w).sum())(v), fullgraph=True)
    torch.testing.assert_close(compiled(z), slope(torchs)(z), rtol=1e-14, atol=0)
    # Evaluated without differentiation it is the fast expression, equal to torch's to rounding.
    with torch.no_grad():
        fast = ours(z.clone().requires_grad_(True))
    assert torch.equal(fast, activation_derivatives._softplus_value(z, 2.0, 10.0))
    torch.testing.assert_close(fast, torchs(z), rtol=1e-15, atol=0)


class _ScaledSoftplus(nn.Softplus):
    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("fn", [nn.GELU(), nn.ELU(), _ScaledSoftplus(), torch.exp], ids=str)
def test_no_closed_form_for_other_activations_or_subclasses(fn):
    assert activation_derivatives.closed_form(fn, (torch.zeros(1),), {}) is None


class Mixed(nn.Module):
    """Every activation with a closed form, module and function forms."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.l1, self.l2, self.l3 = nn.Linear(6, 9), nn.Linear(9, 9), nn.Linear(9, 4)
        self.act1, self.act2 = nn.Softplus(beta=1.5, threshold=2.0), nn.SiLU()

    def forward(self, x):
        h = self.act1(self.l1(x.flatten(1)))
        h = torch.tanh(self.l2(h)) + torch.sigmoid(h) + F.softplus(h, beta=0.5)
        return self.l3(self.act2(h) + F.silu(h))


def test_taylor_sums_with_closed_forms_equal_the_generic_route(monkeypatch):
    model = Mixed().double().eval()
    x = 2 * torch.randn(5, 6, dtype=torch.float64)  # some pre-activations pass Softplus's threshold
    V = torch.nn.functional.normalize(torch.randn(4, 6, dtype=torch.float64), dim=1)
    assert taylor_plan.plan_for(model) is not None
    with torch.no_grad():
        scaled = 1.5 * model.l1(x)
    assert (scaled > 2.0).any() and (scaled < 2.0).any()  # both sides of act1's threshold
    closed = logit_quadratic_form_sums(model, x, V, "autograd", 0.0)
    calls = []
    real = activation_derivatives.closed_form
    monkeypatch.setattr(activation_derivatives, "closed_form", lambda *a: calls.append(a) or None)
    generic = logit_quadratic_form_sums(model, x, V, "autograd", 0.0)
    assert len(calls) == 6  # every activation asked, none answered ...
    assert all(real(*call) is not None for call in calls)  # ... which the closed forms all answer
    torch.testing.assert_close(closed, generic, rtol=1e-11, atol=1e-13)
    # Dense Hessians of every logit (SiLU has no forward-over-forward rule: no taylor=False here).
    dense = torch.stack([
        torch.stack([torch.einsum("ti,ij,tj->", V, torch.autograd.functional.hessian(
            lambda z, l=l: model(z.unsqueeze(0))[0, l], x[b]), V) for l in range(4)]) for b in range(5)])
    torch.testing.assert_close(closed, dense, rtol=1e-10, atol=1e-12)
