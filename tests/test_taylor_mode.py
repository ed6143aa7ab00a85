"""curvext.taylor_mode: collapsed second-order sums against dense float64 Hessians."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvext import taylor_mode
from curvext.quadratic_forms import (_second_directional_derivatives, class_curvature_sums, logit_quadratic_form_sums,
                                     logit_quadratic_forms)
from curvext.zoo import LeNet, NiN


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


@pytest.fixture
def every_rule():
    return EveryRule().double().eval()


def test_plan_covers_every_rule(every_rule):
    plan = taylor_mode.plan_for(every_rule)
    assert plan is not None
    kinds = {step.kind for step in plan.steps}
    assert {"input", "attr", "shape", "linear", "elementwise", "product", "output"} <= kinds


def test_laplacian_sums_match_dense_hessian(every_rule):
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    V = unit_rows(5, x.shape[1:])
    H = dense_hessians(every_rule, x)  # (B, L, d, d)
    Vf = V.reshape(5, -1)
    expected = torch.einsum("jd,blde,je->bl", Vf, H, Vf)
    pairs = taylor_mode.Pairs(1, squares=(slice(0, 5), 0))
    got = taylor_mode.second_order_sums(taylor_mode.plan_for(every_rule), x, V.unsqueeze(1), pairs)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_mixed_and_squared_targets_in_one_pass(every_rule):
    """Per-image tangents: target 0 sums two squares, targets 1 and 2 are mixed derivatives."""
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    t = unit_rows(2 * 4, x.shape[1:]).reshape(4, 2, *x.shape[1:])  # rows 0,1: squares; 2,3: one pair
    pairs = taylor_mode.Pairs(3, squares=(slice(0, 2), 0), products=(slice(2, 3), slice(3, 4), slice(1, 2)))
    got = taylor_mode.second_order_sums(taylor_mode.plan_for(every_rule), x, t, pairs)
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


def test_inplace_relu_with_a_residual_keeps_the_primal():
    """torchvision-style blocks: ReLU(inplace=True) on a value nothing else reads is computed out
    of place; the residual branch still sees its own input."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.head = nn.Linear(2 * 5 * 5, 3)

        def forward(self, x):
            y = torch.tanh(x)
            out = self.relu(self.conv1(y))
            out = F.softplus(self.conv2(out)) + y
            return self.head(out.flatten(1))

    model = Block().double().eval()
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    assert taylor_mode.plan_for(model) is not None
    expected = _second_directional_derivatives(model, x, V).sum(dim=1)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0), expected,
                               rtol=1e-10, atol=1e-13)


class SoftmaxOverTheBatch(nn.Module):
    def forward(self, x):
        return torch.softmax(x.flatten(1), dim=0)  # mixes the images: not a per-image map


class SoftmaxWithoutDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.softmax = nn.Softmax()  # dim=None: torch picks one by the input's rank

    def forward(self, x):
        return self.softmax(x.flatten(1))


class AttentionModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 1, batch_first=True)  # a leaf of torch.fx: no rule

    def forward(self, x):
        z = x.flatten(2)  # (B, C, HW)
        return self.attention(z, z, z, need_weights=False)[0].flatten(1)


class DataDependent(nn.Module):
    def forward(self, x):
        return x.flatten(1) if x.sum() > 0 else -x.flatten(1)


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x.flatten(1), x.flatten(1)


class InplaceReused(nn.Module):
    def forward(self, x):
        y = x.flatten(1) * 2
        z = F.relu(y, inplace=True)
        return z + y  # eager: y was overwritten; out-of-place rules would differ


class InplaceMethod(nn.Module):
    def forward(self, x):
        return x.flatten(1).tanh_()


class BatchStatistics(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4, track_running_stats=False)

    def forward(self, x):
        return self.norm(x.flatten(1))


@pytest.mark.parametrize("model", [SoftmaxOverTheBatch(), SoftmaxWithoutDim(), AttentionModule(), DataDependent(),
                                   TwoOutputs(), InplaceReused(), InplaceMethod(), BatchStatistics()],
                         ids=lambda m: type(m).__name__)
def test_models_without_rules_get_no_plan_and_fall_back(model, caplog):
    model.double().eval()
    with caplog.at_level(logging.INFO, logger="curvext.taylor_mode"):
        assert taylor_mode.build_plan(model) is None
    assert caplog.records, "the reason is logged"
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64) + 0.1
    V = unit_rows(3, x.shape[1:])
    if not isinstance(model, (DataDependent, TwoOutputs, InplaceReused, InplaceMethod, SoftmaxOverTheBatch,
                              BatchStatistics)):
        # The fallback still answers: forward-over-forward mode.
        torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0),
                                   logit_quadratic_forms(model, x, V, "autograd", 0.0).sum(dim=1))


def test_batch_norm_in_training_mode_disables_the_plan():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    assert taylor_mode.plan_for(model) is not None
    model.train()
    assert taylor_mode.plan_for(model) is None
    model.eval()
    assert taylor_mode.plan_for(model) is not None


def test_a_replaced_module_gets_a_new_plan():
    """The rules were chosen per module class: swapping an activation for a batch-statistics
    layer must not keep the element-wise rule."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    assert taylor_mode.plan_for(model) is not None
    model[2] = nn.BatchNorm1d(4, track_running_stats=False).double()
    assert taylor_mode.plan_for(model) is None
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0),
                               logit_quadratic_forms(model, x, V, "autograd", 0.0).sum(dim=1))
    model[2] = nn.Tanh()
    assert taylor_mode.plan_for(model) is not None


def test_a_users_own_function_named_like_a_torch_op_gets_no_rule():
    def relu(t):  # not torch's: a quadratic, whose second derivative a ReLU rule would drop
        return t * t

    class Own(nn.Module):
        def forward(self, x):
            return relu(x.flatten(1))

    assert taylor_mode.build_plan(Own()) is not None  # traced through: t * t is a product
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    torch.testing.assert_close(logit_quadratic_form_sums(Own(), x, V, "autograd", 0.0),
                               2 * (V.reshape(3, -1) ** 2).sum(0).expand(2, 4))


def test_detector_sums_are_the_same_without_the_plan(monkeypatch):
    model = NiN(1, 8, 10, "smooth").double().eval()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    pred = model(x).argmax(1)
    cls = torch.stack([torch.tensor([c for c in range(10) if c != p][:4]) for p in pred.tolist()])
    V = unit_rows(5, x.shape[1:])
    with_plan = class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0)
    monkeypatch.setattr(taylor_mode, "plan_for", lambda m: None)
    torch.testing.assert_close(with_plan, class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0),
                               rtol=1e-10, atol=1e-13)


def test_on_each_device_matches_cpu(device, every_rule):
    """On "cpu" this only checks that the comparison runs; on a GPU it is the CUDA test."""
    import copy

    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    V = unit_rows(4, x.shape[1:])
    expected = logit_quadratic_form_sums(every_rule, x, V, "autograd", 0.0)
    moved = copy.deepcopy(every_rule).to(device)
    assert taylor_mode.plan_for(moved) is not None
    got = logit_quadratic_form_sums(moved, x.to(device), V.to(device), "autograd", 0.0)
    assert got.device.type == torch.device(device).type
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-9, atol=1e-12)


# Cases a review found (each was wrong or crashed before its fix): the graph walk must either
# match forward-over-forward mode or decline and fall back.
class TransposeAttribute(nn.Module):  # x.T is a value, not metadata like x.shape
    def forward(self, x):
        y = torch.tanh(x.flatten(1))
        return y.T.T * 1.0 + y * y


class PoolWithIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        return self.pool(torch.tanh(x) ** 2)[0].flatten(1)


class ConstantInForward(nn.Module):  # the tracer lifts torch.tensor(...) onto its GraphModule
    def forward(self, x):
        return torch.tanh(x.flatten(1)) * torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)


class SliceOfSize(nn.Module):  # slice bounds computed from size()
    def forward(self, x):
        y = torch.tanh(x.flatten(1)) ** 2
        return y[:, : y.size(1) // 2]


class ProductWithReduction(nn.Module):  # factors of different ranks
    def forward(self, x):
        y = torch.tanh(x.flatten(1))
        return y * y.mean() + y * y.sum(0)


class GateFirst(nn.Module):  # squeeze-and-excitation: a (B, C, 1, 1) gate times a feature map
    def forward(self, x):
        gate = torch.sigmoid(x.mean((2, 3), keepdim=True))
        return (gate * torch.tanh(x)).flatten(1)


class PowTensorExponent(nn.Module):  # broadcasts the output beyond the input's shape
    def __init__(self):
        super().__init__()
        self.register_buffer("e", torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x):
        return torch.pow(x.flatten(1).unsqueeze(-1), self.e).flatten(1)


class BatchStatisticsInEval(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4, track_running_stats=False)

    def forward(self, x):
        return torch.tanh(self.bn(x.flatten(1)))


class InplaceOnAView(nn.Module):  # the in-place ReLU also overwrites y, read again below
    def forward(self, x):
        y = torch.tanh(x) - 0.3
        r = F.relu(y.view(y.size(0), -1), inplace=True)
        return r * 2 + y.flatten(1) ** 2


class AliasedAugmentedAssignment(nn.Module):  # fx records g += ... as an out-of-place add
    def forward(self, x):
        h = torch.tanh(x.flatten(1))
        g = h
        g += h ** 2
        return g * h


@pytest.mark.parametrize("model, planned", [
    (TransposeAttribute(), False), (PoolWithIndices(), False), (ConstantInForward(), True), (SliceOfSize(), True),
    (ProductWithReduction(), True), (GateFirst(), True), (PowTensorExponent(), False),
    (BatchStatisticsInEval(), False), (InplaceOnAView(), False), (AliasedAugmentedAssignment(), True),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_reviewed_cases_match_forward_over_forward(model, planned):
    model.double().eval()
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64) - 0.5
    V = unit_rows(3, x.shape[1:])
    assert (taylor_mode.build_plan(model) is not None) == planned
    expected = _second_directional_derivatives(model, x, V).sum(dim=1)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0), expected,
                               rtol=1e-9, atol=1e-12)


def test_a_walk_that_differs_from_the_model_is_dropped(caplog):
    """In-place updates through an alias are invisible in the fx graph; the one-off comparison of
    the walk's output with the model's own catches them."""
    model = AliasedAugmentedAssignment().double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    plan = taylor_mode.plan_for(model)
    assert plan is not None and not plan.checked
    with caplog.at_level(logging.WARNING, logger="curvext.taylor_mode"):
        assert taylor_mode.checked(plan, x) is None
    assert "differs" in caplog.text
    assert taylor_mode.plan_for(model) is None
    good = EveryRule().double().eval()
    assert taylor_mode.checked(taylor_mode.plan_for(good), torch.rand(2, 1, 6, 6, dtype=torch.float64)).checked


def test_same_class_replacements_and_foreign_plans():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    plan = taylor_mode.plan_for(model)
    model[2] = nn.ELU(inplace=True)  # same class, a new object: the plan is rebuilt
    assert taylor_mode.plan_for(model) is not plan and not plan.usable()
    other = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double().eval()
    with pytest.raises(ValueError, match="another model"):
        logit_quadratic_form_sums(other, x, V, "autograd", 0.0, taylor=taylor_mode.plan_for(model))


def test_only_torchs_own_namespaces_count_as_torch():
    for name, expected in (("torch", "pad"), ("torch.nn.functional", "pad"), ("torch_utils", ""),
                           ("torchvision.ops", "")):
        def pad(t):
            return t

        pad.__module__ = name
        assert taylor_mode._name(pad) == expected, name


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
    plan = taylor_mode.plan_for(model)
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
    assert taylor_mode.plan_for(model) is not None


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
    plan = taylor_mode.plan_for(model)
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
    pairs = taylor_mode.Pairs(3, squares=(slice(0, 2), 0), products=(slice(2, 4), slice(0, 2), slice(1, 3)))
    got = taylor_mode.second_order_sums(plan, x, t, pairs)
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
    plan = taylor_mode.plan_for(model)
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
    plan = taylor_mode.plan_for(model)
    assert plan is not None and "matrix_product" in {step.kind for step in plan.steps}
    assert_sums_match_dense_hessians(model, plan, torch.randn(2, 1, 4, 4, dtype=torch.float64))


class _Tokens(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x.flatten(1))  # (B, 4)


@pytest.mark.parametrize("op", [
    lambda h: F.softmax(h, -2),
    nn.Softmax(dim=-2),
    lambda h: h.softmax(-2),
    lambda h: F.layer_norm(h, h.shape),
    lambda h: F.log_softmax(h.sum(1), -1).unsqueeze(1),  # a (B,) vector: its last dim is the batch
], ids=["softmax(-2)", "Softmax(dim=-2)", "method softmax(-2)", "layer_norm(all dims)", "1-d log_softmax"])
def test_smooth_nodes_over_the_batch_drop_the_plan(op, caplog):
    model = _Tokens(op).double().eval()
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    plan = taylor_mode.plan_for(model)
    assert plan is not None  # the dimension is known only at run time ...
    with caplog.at_level(logging.WARNING, logger="curvext.taylor_mode"):
        assert taylor_mode.checked(plan, x) is None  # ... where the one-off check refuses it
    assert "mixes the images" in caplog.text
    assert taylor_mode.plan_for(model) is None


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
    assert taylor_mode.plan_for(model) is not None
    for taylor in (True, False):
        torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0, taylor=taylor), expected,
                                   rtol=1e-10, atol=1e-12)


def test_a_traced_through_modules_mode_is_part_of_the_plan():
    """torchvision's stochastic depth is the identity only in eval mode; the trace bakes the mode
    in, so switching modes must rebuild the plan (not keep or lose it for good)."""
    torchvision = pytest.importorskip("torchvision")

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh())
            self.drop = torchvision.ops.StochasticDepth(0.5, "row")

        def forward(self, x):
            return x.flatten(1) + self.drop(self.branch(x))

    model = Residual().double().train()
    assert taylor_mode.plan_for(model) is None  # random in training mode
    model.eval()
    assert taylor_mode.plan_for(model) is not None
    model.train()
    assert taylor_mode.plan_for(model) is None
    model.eval()
    assert taylor_mode.plan_for(model) is not None
