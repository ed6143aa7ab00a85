"""curvext.autodiff.taylor_plan and taylor_graph: which models get a plan, when it is dropped or rebuilt, and
that planned sums equal forward-over-forward ones."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvext.autodiff import taylor_plan, taylor_rules
from curvext.curvature.quadratic_forms import (
    _second_directional_derivatives,
    class_curvature_sums,
    logit_quadratic_form_sums,
    logit_quadratic_forms,
)
from curvext.data.zoo import NiN
from tests.autodiff.test_taylor_rules import (  # noqa: F401
    EveryRule,
    assert_sums_match_dense_hessians,
    dense_hessians,
    unit_rows,
)


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
    assert taylor_plan.plan_for(model) is not None
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
    with caplog.at_level(logging.INFO, logger="curvext.autodiff.taylor_plan"):
        assert taylor_plan.build_plan(model) is None
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
    assert taylor_plan.plan_for(model) is not None
    model.train()
    assert taylor_plan.plan_for(model) is None
    model.eval()
    assert taylor_plan.plan_for(model) is not None


def test_a_replaced_module_gets_a_new_plan():
    """The rules were chosen per module class: swapping an activation for a batch-statistics
    layer must not keep the element-wise rule."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    assert taylor_plan.plan_for(model) is not None
    model[2] = nn.BatchNorm1d(4, track_running_stats=False).double()
    assert taylor_plan.plan_for(model) is None
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0),
                               logit_quadratic_forms(model, x, V, "autograd", 0.0).sum(dim=1))
    model[2] = nn.Tanh()
    assert taylor_plan.plan_for(model) is not None


def test_a_users_own_function_named_like_a_torch_op_gets_no_rule():
    def relu(t):  # not torch's: a quadratic, whose second derivative a ReLU rule would drop
        return t * t

    class Own(nn.Module):
        def forward(self, x):
            return relu(x.flatten(1))

    assert taylor_plan.build_plan(Own()) is not None  # traced through: t * t is a product
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
    monkeypatch.setattr(taylor_plan, "plan_for", lambda m: None)
    torch.testing.assert_close(with_plan, class_curvature_sums(model, x, cls, pred, V, "autograd", 0.0),
                               rtol=1e-10, atol=1e-13)


def test_on_each_device_matches_cpu(device, every_rule):
    """On "cpu" this only checks that the comparison runs; on a GPU it is the CUDA test."""
    import copy

    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    V = unit_rows(4, x.shape[1:])
    expected = logit_quadratic_form_sums(every_rule, x, V, "autograd", 0.0)
    moved = copy.deepcopy(every_rule).to(device)
    assert taylor_plan.plan_for(moved) is not None
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
    assert (taylor_plan.build_plan(model) is not None) == planned
    expected = _second_directional_derivatives(model, x, V).sum(dim=1)
    torch.testing.assert_close(logit_quadratic_form_sums(model, x, V, "autograd", 0.0), expected,
                               rtol=1e-9, atol=1e-12)


def test_a_walk_that_differs_from_the_model_is_dropped(caplog):
    """In-place updates through an alias are invisible in the fx graph; the one-off comparison of
    the walk's output with the model's own catches them."""
    model = AliasedAugmentedAssignment().double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    plan = taylor_plan.plan_for(model)
    assert plan is not None and not plan.checked
    with caplog.at_level(logging.WARNING, logger="curvext.autodiff.taylor_plan"):
        assert taylor_plan.checked(plan, x) is None
    assert "differs" in caplog.text
    assert taylor_plan.plan_for(model) is None
    good = EveryRule().double().eval()
    assert taylor_plan.checked(taylor_plan.plan_for(good), torch.rand(2, 1, 6, 6, dtype=torch.float64)).checked


def test_same_class_replacements_and_foreign_plans():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 3)).double().eval()
    x = torch.rand(2, 1, 2, 2, dtype=torch.float64)
    V = unit_rows(3, x.shape[1:])
    plan = taylor_plan.plan_for(model)
    model[2] = nn.ELU(inplace=True)  # same class, a new object: the plan is rebuilt
    assert taylor_plan.plan_for(model) is not plan and not plan.usable()
    other = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double().eval()
    with pytest.raises(ValueError, match="another model"):
        logit_quadratic_form_sums(other, x, V, "autograd", 0.0, taylor=taylor_plan.plan_for(model))


def test_only_torchs_own_namespaces_count_as_torch():
    for name, expected in (("torch", "pad"), ("torch.nn.functional", "pad"), ("torch_utils", ""),
                           ("torchvision.ops", "")):
        def pad(t):
            return t

        pad.__module__ = name
        assert taylor_rules.torch_name(pad) == expected, name


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
    plan = taylor_plan.plan_for(model)
    assert plan is not None  # the dimension is known only at run time ...
    with caplog.at_level(logging.WARNING, logger="curvext.autodiff.taylor_plan"):
        assert taylor_plan.checked(plan, x) is None  # ... where the one-off check refuses it
    assert "mixes the images" in caplog.text
    assert taylor_plan.plan_for(model) is None


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
    assert taylor_plan.plan_for(model) is None  # random in training mode
    model.eval()
    assert taylor_plan.plan_for(model) is not None
    model.train()
    assert taylor_plan.plan_for(model) is None
    model.eval()
    assert taylor_plan.plan_for(model) is not None
