"""curvext.autodiff.pointwise_conv: 1x1 convolutions as matrix products, against torch's convolution."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from curvext.autodiff.pointwise_conv import _pointwise_call, pointwise_as_matmul, pointwise_conv2d
from curvext.curvature.quadratic_forms import _hessian_normal_vectorised


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_conv2d_equals_the_convolution(batched, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((3, 5, 4, 6) if batched else (5, 4, 6), generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(pointwise_conv2d(x, w, b), F.conv2d(x, w, b), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("with_bias", [True, False])
def test_channels_last_input_gives_torchs_values_in_torchs_layout(with_bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(7, 5, 1, 1, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64) if with_bias else None
    assert _pointwise_call((x, w, b), {}) is not None
    got, want = pointwise_conv2d(x, w, b), F.conv2d(x, w, b)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    for out in (got, want):
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_only_pointwise_convolutions_of_cpu_tensors_are_rerouted():
    x, w1, w3 = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 1, 1), torch.randn(3, 4, 3, 3)
    assert _pointwise_call((x, w1, None, (1, 1), (0, 0), (1, 1), 1), {}) is not None
    assert _pointwise_call((x, w1), {"padding": "same"}) is not None
    assert _pointwise_call((x,), {"weight": w1, "bias": None}) is not None
    assert _pointwise_call((x, w3), {}) is None  # 3x3
    assert _pointwise_call((x, w1, None, 2), {}) is None  # strided
    assert _pointwise_call((x, w1, None, 1, 1), {}) is None  # zero-padded border
    assert _pointwise_call((x, w1, None, 1, 0, 2), {}) is None  # dilation (kept out for simplicity)
    assert _pointwise_call((torch.randn(2, 4, 5, 5), torch.randn(4, 2, 1, 1), None, 1, 0, 1, 2), {}) is None  # groups
    assert _pointwise_call((torch.randn(2, 3, 5, 5), w1), {}) is None  # torch reports the channel mismatch
    assert _pointwise_call((x.to("meta"), w1.to("meta")), {}) is None  # not on the CPU
    # Calls torch would reject or compute differently stay with torch:
    assert _pointwise_call((x, w1, torch.zeros(3, dtype=torch.float64)), {}) is None  # bias dtype
    assert _pointwise_call((x, w1, torch.zeros(1)), {}) is None  # bias shape (torch raises)
    assert _pointwise_call((x, w1, None, (1, 1, 1)), {}) is None  # a 3-D stride (torch raises)
    assert _pointwise_call((x, w1, None, 1, (0, 0, 0, 0)), {}) is None
    assert _pointwise_call((x.double(), w1), {}) is None  # mixed dtypes (torch raises)
    assert _pointwise_call((x.transpose(2, 3), w1), {}) is None  # neither layout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _pointwise_call((x, w1), {}) is None  # autocast picks the conv's dtype


def test_the_context_reroutes_nn_conv2d_and_leaves_errors_to_torch():
    conv = nn.Conv2d(4, 6, 1).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with pointwise_as_matmul():
        rerouted = conv(x)
        with pytest.raises(RuntimeError, match="channels"):
            conv(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    torch.testing.assert_close(rerouted, conv(x), rtol=1e-14, atol=1e-14)


class PointwiseNet(nn.Module):
    """3x3 conv -> softplus -> 1x1 conv -> tanh -> 1x1 conv -> mean: a NiN block in miniature."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.Softplus(), nn.Conv2d(5, 4, 1), nn.Tanh(),
                                 nn.Conv2d(4, 3, 1)).double()

    def forward(self, x):
        return self.net(x).mean(dim=(2, 3))


def test_reverse_over_reverse_pass_with_pointwise_convolutions_matches_dense_hessians():
    # The pass runs in the context; the dense Hessians do not.
    model = PointwiseNet().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    pred = model(x).argmax(1)
    cls = torch.stack([torch.tensor([c for c in range(3) if c != p]) for p in pred.tolist()])
    grad, hn = _hessian_normal_vectorised(model, x, cls, pred)
    for b in range(2):
        for k in range(2):
            def margin(y, b=b, k=k):
                out = model(y.reshape(1, 2, 4, 4))[0]
                return out[cls[b, k]] - out[pred[b]]

            point = x[b].reshape(-1)
            g = torch.autograd.functional.jacobian(margin, point)
            H = torch.autograd.functional.hessian(margin, point)
            torch.testing.assert_close(grad[b * 2 + k], g, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(hn[b * 2 + k], H @ (g / g.norm()), rtol=1e-10, atol=1e-12)


def test_the_reverse_over_reverse_pass_reroutes_the_pointwise_convolutions(monkeypatch):
    from curvext.autodiff import pointwise_conv

    calls = []
    original = pointwise_conv.pointwise_conv2d

    def counted(*args):
        calls.append(args[1].shape)
        return original(*args)

    monkeypatch.setattr(pointwise_conv, "pointwise_conv2d", counted)
    model = PointwiseNet().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    pred = model(x).argmax(1)
    _hessian_normal_vectorised(model, x, torch.stack([torch.tensor([c for c in range(3) if c != p][:1])
                                                       for p in pred.tolist()]), pred)
    assert {tuple(s) for s in calls} == {(4, 5, 1, 1), (3, 4, 1, 1)}  # the two 1x1 layers, not the 3x3 one


def test_inputs_batched_by_vmap_are_computed_as_torch_does():
    # vmap can query only the standard layout of a batched tensor; a channels-last query raised.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, 1, 1, generator=g, dtype=torch.float64)
    for x in (torch.randn(5, 2, 4, 3, 3, generator=g, dtype=torch.float64),
              torch.randn(5, 2, 3, 3, 4, generator=g, dtype=torch.float64).permute(0, 1, 4, 2, 3)):
        with pointwise_as_matmul():
            got = torch.func.vmap(lambda xi: F.conv2d(xi, w))(x)
        torch.testing.assert_close(got, torch.func.vmap(lambda xi: F.conv2d(xi, w))(x), rtol=1e-14, atol=1e-14)
