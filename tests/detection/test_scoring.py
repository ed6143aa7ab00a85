"""curvext.detection.scoring: the statistic under grad modes, and the directions."""
from __future__ import annotations

import pytest
import torch

from curvext.detection import CurvatureDetector, DetectorConfig, score_images
from curvext.detection.scoring import random_directions
from tests.curvature.test_quadratic_forms import SmoothNet


@pytest.mark.parametrize("method", ["autograd", "fd", "fd2"])
def test_scores_are_the_same_under_no_grad(method):
    model = SmoothNet(torch.nn.Softplus()).double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=3, method=method, estimator="hutchinson")
    expected = det.score(x)
    with torch.no_grad():
        got = det.score(x)
        assert not torch.is_grad_enabled()  # the caller's mode is left as it was
    torch.testing.assert_close(got.rho, expected.rho, rtol=1e-12, atol=0)


def test_inference_mode_is_refused_with_the_reason():
    model = SmoothNet(torch.nn.Softplus()).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        score_images(model, torch.rand(2, 1, 4, 4), DetectorConfig(num_directions=2))


def test_directions_are_unit_and_depend_on_the_seed_alone():
    V = random_directions((1, 4, 4), 5, seed=3, dtype=torch.float64)
    torch.testing.assert_close(V.flatten(1).norm(dim=1), torch.ones(5, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.equal(V, random_directions((1, 4, 4), 5, seed=3, dtype=torch.float64))
    assert not torch.equal(V, random_directions((1, 4, 4), 5, seed=4, dtype=torch.float64))


def test_images_of_the_wrong_shape_get_a_clear_message():
    model = SmoothNet(torch.nn.Softplus()).eval()  # 1 x 4 x 4 inputs
    det = CurvatureDetector(model, num_directions=2, method="fd2")
    with pytest.raises(ValueError, match=r"rejects inputs of shape \(3, 4, 4\).*channels and size"):
        det.score(torch.rand(2, 3, 4, 4))
