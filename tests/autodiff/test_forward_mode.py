"""curvext.autodiff.forward_mode: nested forward mode through layer norm against reverse-over-reverse
Hessians (float64), and the quadratic forms of a model without a Taylor-mode plan."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from curvext.autodiff import forward_mode, taylor_plan
from curvext.curvature.quadratic_forms import logit_quadratic_form_sums, logit_quadratic_forms


def second_directional(fn, p, a):
    return jvp(lambda w: jvp(fn, (w,), (a,))[1], (p,), (a,))[1]


def reverse_reference(fn, p, a):
    """``D^2 fn(p)[a, a]`` for every output, from the reverse-over-reverse Hessian of each row."""
    rows = []
    for b in range(p.shape[0]):
        H = jacrev(jacrev(lambda z: fn(z.unsqueeze(0))[0]))(p[b])  # (*out, *in, *in)
        k = a[b].dim()
        rows.append(torch.tensordot(torch.tensordot(H, a[b], dims=k), a[b], dims=k))
    return torch.stack(rows)


def _affine_layer_norm():
    torch.manual_seed(0)
    norm = nn.LayerNorm((3, 4)).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


CALLS = {
    "nn.LayerNorm": lambda norm: norm,
    "F.layer_norm": lambda norm: lambda h: F.layer_norm(h, (3, 4), norm.weight, norm.bias, 1e-3),
    "torch.layer_norm": lambda norm: lambda h: torch.layer_norm(h, [4], norm.weight[0], None, 1e-5, False),
    "no affine": lambda norm: lambda h: F.layer_norm(h, (4,)),
}


@pytest.mark.parametrize("name", CALLS)
def test_nested_forward_mode_through_layer_norm_matches_reverse_mode(name):
    fn = CALLS[name](_affine_layer_norm())
    p = torch.randn(2, 3, 4, dtype=torch.float64)
    a = torch.randn(2, 3, 4, dtype=torch.float64)
    with forward_mode.corrected():
        got = second_directional(fn, p, a)
        first = jvp(fn, (p,), (a,))
    torch.testing.assert_close(got, reverse_reference(fn, p, a), rtol=1e-10, atol=1e-12)
    value, tangent = jvp(fn, (p,), (a,))  # outside the context: torch's own (right to first order)
    torch.testing.assert_close(first[0], value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(first[1], tangent, rtol=1e-10, atol=1e-12)


def test_the_decomposition_equals_torch_layer_norm():
    norm = _affine_layer_norm()
    h = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(forward_mode.layer_norm(h, (3, 4), norm.weight, norm.bias, norm.eps), norm(h),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forward_mode.layer_norm(h, 4), F.layer_norm(h, (4,)), rtol=1e-12, atol=1e-12)


class NormedAttention(nn.Module):
    """A transformer-style block: no Taylor-mode plan (``nn.MultiheadAttention`` is a leaf of
    ``torch.fx``), so the quadratic forms take the vmapped forward-over-forward path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.embed, self.norm, self.head = nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)
        with torch.no_grad():
            self.norm.weight.normal_()

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 4, 4))  # (B, 4 tokens, 6)
        h = self.norm(tokens)
        h = self.attention(h, h, h, need_weights=False)[0]
        return self.head(h.mean(dim=1))


def test_quadratic_forms_of_an_attention_model_without_a_plan_match_dense_hessians():
    """Layer norm (a wrong nested forward rule) and nn.MultiheadAttention (the fused CPU
    attention kernel has no forward-mode rule) on the vmapped forward-over-forward path."""
    model = NormedAttention().double().eval()
    assert taylor_plan.plan_for(model) is None
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    V = F.normalize(torch.randn(3, 16, dtype=torch.float64), dim=1).reshape(3, 1, 4, 4)
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU attention kernel has no double backward
        dense = torch.stack([jacrev(jacrev(lambda z: model(z.reshape(1, 1, 4, 4))[0]))(x[b].reshape(-1))
                             for b in range(2)])  # (B, L, d, d)
    Vf = V.reshape(3, -1)
    expected = torch.einsum("jd,blde,je->bjl", Vf, dense, Vf)
    torch.testing.assert_close(logit_quadratic_forms(model, x, V, "autograd", 0.0), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0), expected.sum(dim=1),
                               rtol=1e-10, atol=1e-12)


class PointwiseThenAdaptivePool(nn.Module):
    """Convolutions through to adaptive average pooling, as the NiN's last layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv, self.act, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Softplus(), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.head(self.act(self.conv(x))), 1).flatten(1)


@pytest.mark.parametrize("taylor", [True, False])
def test_adaptive_pooling_of_channels_last_input_is_batched_without_a_fallback_warning(taylor):
    # torch's vmap has no batching rule for adaptive pooling of channels-last input: a per-row loop
    # and a UserWarning; both passes give it contiguous input.
    model = PointwiseThenAdaptivePool().eval()
    # One-channel images with channels-last strides (as the digits loader makes them: both layouts
    # at once) make every convolution's output channels last.
    x = torch.rand(4, 4, 4, 1).permute(0, 3, 1, 2)
    assert x.stride() == (16, 1, 4, 1) and not model.conv(x).is_contiguous()
    V = torch.randn(3, 1, 4, 4)
    with pytest.warns() as record:
        import warnings

        warnings.warn("sentinel", UserWarning, stacklevel=1)  # pytest.warns needs one warning
        sums = logit_quadratic_form_sums(model, x, V, "autograd", 0.0, taylor=taylor)
    assert [str(w.message) for w in record] == ["sentinel"]
    assert (taylor_plan.plan_for(model) is not None) or not taylor
    reference = logit_quadratic_form_sums(model.double(), x.double(), V.double(), "autograd", 0.0, taylor=False)
    torch.testing.assert_close(sums.double(), reference, rtol=1e-4, atol=1e-6)
