"""curvext.utils.model_checks: which models have a zero exact input Hessian."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvext.data import zoo
from curvext.utils.model_checks import is_piecewise_linear

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices


class FunctionalReLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return F.relu(self.fc(x.flatten(1)))


@pytest.mark.parametrize("activation, expected", [("relu", True), ("smooth", False)])
def test_zoo_models_eager_traced_and_scripted(activation, expected):
    model = zoo.build("lenet", activation, "digits").eval()
    assert is_piecewise_linear(model) is expected
    assert is_piecewise_linear(torch.jit.trace(model, torch.rand(2, 1, 8, 8))) is expected
    assert is_piecewise_linear(torch.jit.script(model)) is expected


def test_functional_relu_is_seen_in_torchscript_graphs():
    model = FunctionalReLU().eval()
    assert is_piecewise_linear(model) is True  # through a symbolic fx trace
    assert is_piecewise_linear(torch.jit.trace(model, torch.rand(2, 1, 2, 2))) is True
    assert is_piecewise_linear(torch.jit.script(model)) is True


def test_exported_programs():
    relu = torch.export.export(zoo.build("lenet", "relu", "digits").eval(), (torch.rand(2, 1, 8, 8),)).module()
    smooth = torch.export.export(zoo.build("lenet", "smooth", "digits").eval(), (torch.rand(2, 1, 8, 8),)).module()
    functional = torch.export.export(FunctionalReLU().eval(), (torch.rand(2, 1, 2, 2),)).module()
    assert is_piecewise_linear(relu) and is_piecewise_linear(functional) and not is_piecewise_linear(smooth)


def test_graphs_behind_a_wrapper_and_fx_traces():
    from curvext.data.normalization import Normalized

    functional = FunctionalReLU().eval()
    exported = torch.export.export(zoo.build("lenet", "relu", "digits").eval(), (torch.rand(2, 1, 8, 8),)).module()
    scripted = torch.jit.script(functional)
    for inner in (exported, scripted):
        assert is_piecewise_linear(Normalized(inner, (0.5,), (0.25,)))
    assert is_piecewise_linear(torch.fx.symbolic_trace(functional))  # F.relu as a call_function

    class MethodReLU(torch.nn.Module):
        def forward(self, x):
            return x.relu()

    assert is_piecewise_linear(torch.fx.symbolic_trace(MethodReLU()))  # .relu() as a call_method
    smooth = torch.fx.symbolic_trace(zoo.build("lenet", "smooth", "digits").eval())
    assert not is_piecewise_linear(Normalized(smooth, (0.5,), (0.25,)))


def test_untraceable_eager_models_are_judged_by_their_modules():
    class DataDependent(torch.nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc, self.act = torch.nn.Linear(4, 3), act

        def forward(self, x):
            if x.sum() > 0:  # symbolic tracing cannot follow this
                x = -x
            return F.relu(self.act(self.fc(x.flatten(1))))

    assert is_piecewise_linear(DataDependent(torch.nn.ReLU())) is True  # the module is seen
    assert is_piecewise_linear(DataDependent(torch.nn.Softplus())) is False  # F.relu behind control flow: not


def test_tracing_leaves_the_users_model_alone():
    """The fx trace runs forward with proxies; what forward stores on self must not stick."""

    class LazyCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.pos, self.calls = torch.nn.Linear(4, 3), None, 0

        def forward(self, x):
            self.calls += 1
            if self.pos is None:
                self.pos = torch.arange(3.0)
            return torch.tanh(self.fc(x.flatten(1))) + self.pos

    model = LazyCache().eval()
    assert is_piecewise_linear(model) is False
    assert model.pos is None and model.calls == 0
    assert isinstance(model(torch.rand(2, 1, 2, 2)), torch.Tensor)


def test_adaptive_max_pool_modules():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveMaxPool2d(2), torch.nn.Tanh())
    assert is_piecewise_linear(model)


def test_check_batch_takes_any_sample_shape_and_names_the_argument():
    from curvext.utils.model_checks import check_batch, check_images

    check_batch(torch.zeros(3, 2), "x1")
    check_batch(torch.zeros(3, 1, 8, 8), "x1")
    for bad, kind, message in [(torch.zeros(3), ValueError, r"x1 must be a \(B, \*shape\) batch"),
                               (torch.zeros(0, 2), ValueError, r"x1 is an empty batch"),
                               (torch.zeros(2, 2, dtype=torch.long), TypeError, "x1 must be a floating-point"),
                               (torch.tensor([[0.0], [float("nan")]]), ValueError, r"sample\(s\) \[1\]"),
                               ([[0.0]], TypeError, "x1 must be a torch.Tensor")]:
        with pytest.raises(kind, match=message):
            check_batch(bad, "x1")
    # Images keep their own wording.
    with pytest.raises(ValueError, match=r"x must be a \(B, C, H, W\) batch"):
        check_images(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"image\(s\) \[0\]"):
        check_images(torch.full((1, 1, 2, 2), float("inf")), input_range=None)
