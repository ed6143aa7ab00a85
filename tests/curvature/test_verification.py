"""curvext.curvature.verification: the one-off comparison of forward-mode sums with reverse mode."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from curvext.autodiff import forward_mode
from curvext.curvature import verification
from curvext.detection import CurvatureDetector
from tests.autodiff.test_forward_mode import NormedAttention


def test_the_detector_refuses_a_model_whose_nested_forward_rule_is_wrong(monkeypatch):
    """Without the layer-norm correction (as for an operation curvext does not know about), the
    one-off comparison with reverse mode catches the wrong second derivatives."""
    monkeypatch.setattr(forward_mode, "_REPLACED", {})  # torch's own (wrong) nested rule
    model = NormedAttention().eval()
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"disagrees with reverse mode.*method='fd' or 'fd2'"):
        CurvatureDetector(model, num_directions=2, method="autograd").score(x)
    CurvatureDetector(model, num_directions=2, method="fd2").score(x)  # finite differences need no check


def test_the_check_runs_once_per_model_and_again_after_a_module_swap(monkeypatch):
    model = NormedAttention().eval()
    x = torch.rand(3, 1, 4, 4)
    checked = []
    real = verification._check_against_reverse_mode
    monkeypatch.setattr(verification, "_check_against_reverse_mode", lambda m, *a: checked.append(m) or real(m, *a))
    det = CurvatureDetector(model, num_directions=2, method="autograd")
    det.score(x)
    det.score(x)
    CurvatureDetector(model, num_directions=3, method="autograd").score(x)
    assert checked == [model]
    model.head = nn.Linear(6, 3)
    det.score(x)
    assert checked == [model, model]


def test_a_model_without_second_derivatives_gets_the_passes_clear_error():
    """Hardsigmoid has no double-backward rule: the check cannot run, and the exact passes then
    raise their own error naming the alternatives."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Hardsigmoid(), nn.Linear(8, 3)).eval()
    with pytest.raises(RuntimeError, match="cannot differentiate twice"):
        CurvatureDetector(model, num_directions=2, method="autograd").score(torch.rand(2, 1, 4, 4))


def test_the_check_copies_the_model_to_float64_on_the_cpu_without_touching_it():
    model = NormedAttention().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = verification._float64_cpu_copy(model)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in copy.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(a is b for a, b in zip(copy.parameters(), model.parameters()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(copy(x.double()).float(), model(x), rtol=1e-5, atol=1e-6)
