"""curvext.autodiff.taylor_rules: every rule's collapsed second-order sums against dense float64 Hessians."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvext.autodiff import taylor_plan, taylor_rules
from curvext.curvature.quadratic_forms import (
    _second_directional_derivatives,
    logit_quadratic_form_sums,
)
from curvext.data.zoo import LeNet, NiN


class EveryRule(nn.Module):
    """Touches every rule: affine input scaling by buffers (get_attr), convolution, eval-mode batch
    norm, element-wise modules and functions (with a keyword constant), a residual sum of two carried
    values, a product of two carried values, a power, average and max pooling, a view sized by
    ``size()``, concatenation, a mean and a linear layer."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.2))
        self.register_buffer("std", torch.tensor(0.7))
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 3, 3, padding=1)  # so that the product's factors have unrelated tangents
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.Softplus(beta=2.0)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(3 * 3 * 3 + 1, classes)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        z = (x - self.mean) / self.std
        a = self.act(self.bn(self.conv(z)))
        b = torch.tanh(self.conv2(z)) + a  # residual sum of two carried values
        c = a * F.silu(b) + 0.3 * b ** 2  # product rule and an element-wise power
        p = F.max_pool2d(self.pool(c), 1)
        flat = p.view(p.size(0), -1)
        flat = torch.cat([flat, flat.mean(1, keepdim=True)], dim=1)
        return self.fc(F.gelu(flat))


def dense_hessians(model, x):
    """``(B, L, d, d)`` float64 Hessians of every logit with respect to each image."""
    out = []
    for b in range(x.shape[0]):
        def logits(z):
            return model(z.reshape(1, *x.shape[1:]))[0]

        # Reverse over reverse (SiLU has no forward-over-forward rule).
        out.append(torch.func.jacrev(torch.func.jacrev(logits))(x[b].reshape(-1)))
    return torch.stack(out)


def unit_rows(count, shape, dtype=torch.float64):
    return F.normalize(torch.randn(count, int(torch.tensor(shape).prod()), dtype=dtype), dim=1).reshape(count, *shape)


def test_plan_covers_every_rule(every_rule):
    plan = taylor_plan.plan_for(every_rule)
    assert plan is not None
    kinds = {step.kind for step in plan.steps}
    assert {"input", "attr", "shape", "linear", "elementwise", "product", "output"} <= kinds


def test_laplacian_sums_match_dense_hessian(every_rule):
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    V = unit_rows(5, x.shape[1:])
    H = dense_hessians(every_rule, x)  # (B, L, d, d)
    Vf = V.reshape(5, -1)
    expected = torch.einsum("jd,blde,je->bl", Vf, H, Vf)
    pairs = taylor_rules.Pairs(1, squares=(slice(0, 5), 0))
    got = taylor_plan.second_order_sums(taylor_plan.plan_for(every_rule), x, V.unsqueeze(1), pairs)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_mixed_and_squared_targets_in_one_pass(every_rule):
    """Per-image tangents: target 0 sums two squares, targets 1 and 2 are mixed derivatives."""
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    t = unit_rows(2 * 4, x.shape[1:]).reshape(4, 2, *x.shape[1:])  # rows 0,1: squares; 2,3: one pair
    pairs = taylor_rules.Pairs(3, squares=(slice(0, 2), 0), products=(slice(2, 3), slice(3, 4), slice(1, 2)))
    got = taylor_plan.second_order_sums(taylor_plan.plan_for(every_rule), x, t, pairs)
    H = dense_hessians(every_rule, x)
    tf = t.reshape(4, 2, -1)

    def form(a, b):
        return torch.einsum("bd,blde,be->bl", tf[a], H, tf[b])

    torch.testing.assert_close(got[0], form(0, 0) + form(1, 1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], form(2, 3), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[2], torch.zeros_like(got[2]), rtol=0, atol=0)  # no pair feeds it


@pytest.mark.parametrize("architecture", [LeNet, NiN])
def test_zoo_models_match_forward_over_forward(architecture):
    model = architecture(1, 8, 10, "smooth").double().eval()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    V = unit_rows(6, x.shape[1:])
    expected = _second_directional_derivatives(model, x, V).sum(dim=1)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0), expected,
                               rtol=1e-10, atol=1e-13)
    # Chunks of directions (max_rows) add up to the same sums.
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0, max_rows=9), expected,
                               rtol=1e-10, atol=1e-13)


class HardGated(nn.Module):
    """MobileNetV3-style: Hardswish features gated by a Hardsigmoid squeeze-and-excitation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Hardswish()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Hardsigmoid())
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.act(self.conv(x) * 2.5)  # scaled so Hardswish's quadratic middle and its flat parts are hit
        return self.head(torch.tanh(h * self.gate(h)).flatten(1))


def test_hardsigmoid_gets_the_piecewise_linear_rule():
    """Hardsigmoid has no double backward (nor forward-over-forward rule) in torch, so neither a
    dense Hessian nor the fallback can serve as reference: central differences of exact
    gradients do, in float64 (h = 1e-5: truncation ~1e-10, rounding ~1e-11)."""
    model = HardGated().double().eval()
    plan = taylor_plan.plan_for(model)
    assert plan is not None and "piecewise" in {step.kind for step in plan.steps}
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    got = logit_quadratic_form_sums(model, x, V, "autograd", 0.0)

    def gradients(z):  # (B, L, *shape): every logit's gradient at each image
        return torch.func.vmap(torch.func.jacrev(lambda y: model(y.unsqueeze(0))[0]))(z)

    h = 1e-5
    expected = sum(((gradients(x + h * v) - gradients(x - h * v)) / (2 * h) * v).flatten(2).sum(2) for v in V)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_torchvision_mobilenet_v3_gets_a_plan():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    assert taylor_plan.plan_for(model) is not None


class SmoothPerImage(nn.Module):
    """Every map of the ``smooth`` rule, and padding modes other than zeros."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 4, 3)
        self.group_norm = nn.GroupNorm(2, 4)
        self.layer_norm = nn.LayerNorm(16)
        self.rms_norm = nn.RMSNorm(16)
        self.log_softmax = nn.LogSoftmax(dim=1)
        self.linear = nn.Linear(16, 5)
        with torch.no_grad():  # affine parameters away from their identity defaults
            for norm in (self.group_norm, self.layer_norm):
                norm.weight.normal_()
                norm.bias.normal_()
            self.rms_norm.weight.normal_()

    def forward(self, x):
        h = self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))  # (B, 4, 4, 4)
        h = torch.tanh(self.group_norm(h)).flatten(2)  # (B, 4, 16)
        h = self.layer_norm(h) + F.softmax(h, dim=-1) * 3 + F.normalize(h, dim=2)
        h = self.rms_norm(h).sum(1) + torch.log_softmax(h, dim=2).mean(1)  # (B, 16)
        return self.log_softmax(self.linear(h))


def test_smooth_per_image_maps_match_dense_hessians():
    model = SmoothPerImage().double().eval()
    plan = taylor_plan.plan_for(model)
    assert plan is not None and "smooth" in {step.kind for step in plan.steps}
    assert_sums_match_dense_hessians(model, plan, torch.randn(2, 2, 4, 4, dtype=torch.float64))


def assert_sums_match_dense_hessians(model, plan, x):
    """The Laplacian sums, and squared and mixed targets in one pass, against dense Hessians."""
    H = dense_hessians(model, x)
    V = unit_rows(3, x.shape[1:])
    Vf = V.reshape(3, -1)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0),
                               torch.einsum("jd,blde,je->bl", Vf, H, Vf), rtol=1e-10, atol=1e-12)
    t = unit_rows(2 * 4, x.shape[1:]).reshape(4, 2, *x.shape[1:])
    pairs = taylor_rules.Pairs(3, squares=(slice(0, 2), 0), products=(slice(2, 4), slice(0, 2), slice(1, 3)))
    got = taylor_plan.second_order_sums(plan, x, t, pairs)
    tf = t.reshape(4, 2, -1)

    def form(a, b):
        return torch.einsum("bd,blde,be->bl", tf[a], H, tf[b])

    torch.testing.assert_close(got[0], form(0, 0) + form(1, 1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], form(2, 0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[2], form(3, 1), rtol=1e-10, atol=1e-12)


def test_torchvision_convnext_gets_a_plan_that_matches_forward_over_forward_mode():
    """Layer norm over channels-last features, GELU, depthwise convolutions, layer scale."""
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.convnext_tiny(num_classes=4).double().eval()
    plan = taylor_plan.plan_for(model)
    assert plan is not None and "smooth" in {step.kind for step in plan.steps}
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    V = unit_rows(2, x.shape[1:])
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0),
                               logit_quadratic_form_sums(model, x, V, "autograd", 0.0, taylor=False),
                               rtol=1e-9, atol=1e-12)


class SelfAttention(nn.Module):
    """Single-head self-attention written out: matrix products of two computed tensors."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.q, self.k, self.v, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        tokens = x.reshape(x.shape[0], 4, 4)
        q, k, v = self.q(tokens), self.k(tokens), self.v(tokens)
        weights = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)
        return self.out(torch.bmm(weights, v).mean(dim=1) + torch.matmul(q, k.transpose(1, 2)).sum(dim=1))


def test_matrix_products_of_computed_tensors_match_dense_hessians():
    model = SelfAttention().double().eval()
    plan = taylor_plan.plan_for(model)
    assert plan is not None and "matrix_product" in {step.kind for step in plan.steps}
    assert_sums_match_dense_hessians(model, plan, torch.randn(2, 1, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("running", [False, True], ids=["per-image statistics", "running statistics"])
def test_instance_norm_matches_dense_hessians_with_and_without_a_plan(running):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.InstanceNorm2d(3, affine=True, track_running_stats=running),
                          nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 4)).double()
    if running:
        model.train()(torch.randn(8, 1, 4, 4, dtype=torch.float64))  # some running statistics
    model.eval()
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    Vf = V.reshape(3, -1)
    expected = torch.einsum("jd,blde,je->bl", Vf, dense_hessians(model, x), Vf)
    assert taylor_plan.plan_for(model) is not None
    for taylor in (True, False):
        torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0, taylor=taylor), expected,
                                   rtol=1e-10, atol=1e-12)


