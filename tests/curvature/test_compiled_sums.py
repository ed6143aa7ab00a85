"""curvext.curvature.compiled_sums: the exact sums through torch.compile equal the eager ones, in one
graph, and fall back to eager (with a warning) when compilation fails or the compiler is wrong."""
from __future__ import annotations

import pytest
import torch

from curvext.autodiff import taylor_plan
from curvext.curvature.quadratic_forms import scored_class_curvature_sums
from curvext.data import zoo
from curvext.detection.detector import CurvatureDetector
from tests.curvature.test_quadratic_forms import SmoothNet

# Older compilers fall back to eager on these graphs (seen with torch 2.11: the compiled sums'
# first group differed from the eager one and was replaced), so what is checked is the fallback.
needs_recent_compiler = pytest.mark.skipif(torch.__version__ < "2.14", reason="torch.compile before 2.14 falls "
                                           "back to eager on the curvature sums; the fallback is tested below")


@needs_recent_compiler
def test_the_compiled_sums_are_one_graph_on_a_zoo_model():
    """Dynamo traces the whole exact computation (Taylor-mode walk, vmapped reverse-over-reverse
    pass, projections) without a graph break; a nested tuple in an isinstance of the Taylor walk
    once cost 13 breaks and hit the recompile limit."""
    model = zoo.build("lenet", "smooth", "digits").eval()
    x, V = torch.rand(4, 1, 8, 8), torch.randn(3, 1, 8, 8)
    plan = taylor_plan.checked(taylor_plan.plan_for(model), x)
    assert plan is not None
    def sums(x, V):
        return scored_class_curvature_sums(model, x, V, None, taylor=plan)

    with torch.no_grad():
        explained = torch._dynamo.explain(sums)(x, V)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1


@needs_recent_compiler
def test_compiled_scores_equal_eager_ones_and_pad_the_last_group(device):
    model = SmoothNet(torch.nn.Softplus()).eval().to(device)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).to(device)  # groups of 4 and 1: the 1 is padded to 4
    eager = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4).score(x)
    det = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4, compile=True)
    compiled = det.score(x)
    assert not det._compiled_sums.failed
    torch.testing.assert_close(compiled.rho, eager.rho, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(compiled.per_class, eager.per_class, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert torch.equal(compiled.predicted, eager.predicted)


@needs_recent_compiler
def test_compiled_zoo_cnn_matches_eager_in_float32():
    """The real architecture (convolutions, average pooling, softplus) through the compiler."""
    from curvext import data
    from curvext.data import zoo

    model = zoo.train("lenet", "smooth", "digits").model
    x = data.load_digits("test").images[:12]
    eager = CurvatureDetector(model, num_directions=4, method="autograd", batch_size=8).score(x)
    det = CurvatureDetector(model, num_directions=4, method="autograd", batch_size=8, compile=True)
    compiled = det.score(x)
    assert not det._compiled_sums.failed
    # float32 kernels fused in another order: rounding differences only (measured 1e-6).
    torch.testing.assert_close(compiled.rho, eager.rho, rtol=1e-4, atol=1e-6)

    # Compiled in inference ("freezing") mode: an in-place weight update (an optimizer step) must
    # still reach the next call, not a copy of the weights folded in at compilation.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3)
    updated = det.score(x)
    eager = CurvatureDetector(model, num_directions=4, method="autograd", batch_size=8).score(x)
    assert not torch.allclose(updated.rho, compiled.rho, rtol=1e-2)
    torch.testing.assert_close(updated.rho, eager.rho, rtol=1e-4, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=2, method="autograd", compile=True)
    with caplog.at_level("WARNING"):
        out = det.score(x)
    assert det._compiled_sums.failed and "no C++ compiler" in caplog.text
    eager = CurvatureDetector(model, num_directions=2, method="autograd").score(x)
    torch.testing.assert_close(out.rho, eager.rho, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [dict(method="fd2"), dict(method="autograd", estimator="deflated")])
def test_compile_only_for_the_exact_hutchinson_sums(kwargs):
    with pytest.raises(ValueError, match="compile=True"):
        CurvatureDetector(SmoothNet(torch.nn.Softplus()).eval(), compile=True, **kwargs)


class _LogSoftmaxTokens(torch.nn.Module):
    """torch 2.14's compiler gets this graph's second derivatives wrong (F.log_softmax, dim=-1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv, self.linear = torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Linear(16, 5)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(2)
        return self.linear(h.sum(1) + torch.nn.functional.log_softmax(h, dim=-1).mean(1))


def test_compiled_results_that_differ_from_eager_ones_are_replaced_by_them(caplog):
    model = _LogSoftmaxTokens().double().eval()
    x = torch.rand(5, 2, 4, 4, dtype=torch.float64)
    eager = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4, input_range=None).score(x)
    det = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4, compile=True, input_range=None)
    with caplog.at_level("WARNING", logger="curvext.curvature.compiled_sums"):
        compiled = det.score(x)
    torch.testing.assert_close(compiled.rho, eager.rho, rtol=1e-10, atol=1e-12)
    if det._compiled_sums.failed:  # the compiler's bug caught on the first group, or no compiler at all
        assert "differ from the eager ones" in caplog.text or "could not compile" in caplog.text


def test_the_first_compiled_group_is_checked_against_the_eager_sums(monkeypatch, caplog):
    model = SmoothNet(torch.nn.Softplus()).eval()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4, compile=True)
    sums = det._compiled_sums
    real = sums._compiled
    # a wrong compiler
    monkeypatch.setattr(sums, "_compiled", lambda x, V: (lambda o: (*o[:3], o[3] * 1.01))(real(x, V)))
    with caplog.at_level("WARNING", logger="curvext.curvature.compiled_sums"):
        got = det.score(x)
    assert sums.failed and "differ from the eager ones" in caplog.text
    eager = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4).score(x)
    torch.testing.assert_close(got.rho, eager.rho, rtol=1e-12, atol=0)


@needs_recent_compiler
def test_models_with_normalisation_layers_compile():
    """Eval-mode batch norm and group norm go through the Taylor walk as elementary operations,
    which the compiler traces (torch's own jvp of them does not compile)."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.SiLU(),
                                torch.nn.GroupNorm(2, 4), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    model.train()(torch.randn(8, 2, 4, 4))  # running statistics
    model = model.double().eval()
    x = torch.rand(5, 2, 4, 4, dtype=torch.float64)
    eager = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4).score(x)
    det = CurvatureDetector(model, num_directions=3, method="autograd", batch_size=4, compile=True)
    compiled = det.score(x)
    assert not det._compiled_sums.failed
    torch.testing.assert_close(compiled.rho, eager.rho, rtol=1e-10, atol=1e-12)
