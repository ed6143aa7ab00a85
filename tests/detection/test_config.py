"""DetectorConfig: validation on construction, replace, round trip; the detector's attributes
read and write it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from curvext.detection import CurvatureDetector, DetectorConfig
from curvext.detection.config import DEFAULT_PROBE_EPS_LINF, DEFAULT_SCALE
from tests.curvature.test_quadratic_forms import SmoothNet


@pytest.mark.parametrize("changes, name", [
    (dict(method="exact"), "method"),
    (dict(estimator="sampled"), "estimator"),
    (dict(orientation="up"), "orientation"),
    (dict(probe_norm="l1"), "probe_norm"),
    (dict(num_directions=0), "num_directions"),
    (dict(num_directions=2.0), "num_directions"),
    (dict(classes=0), "classes"),
    (dict(batch_size=True), "batch_size"),
    (dict(deflation_k=-1), "deflation_k"),
    (dict(deflation_basis_size=0), "deflation_basis_size"),
    (dict(deflation_basis_size=4), "deflation_basis_size must exceed deflation_k = 4"),
    (dict(deflation_basis_size=10.0), "deflation_basis_size"),
    (dict(h=0.0), "^h must"),
    (dict(h=float("inf")), "^h must"),
    (dict(h=float("nan")), "^h must"),
    (dict(h="0.1"), "^h must"),
    (dict(probe_eps=-1.0), "probe_eps"),
    (dict(probe_eps=float("inf")), "probe_eps"),
    (dict(seed=1.5), "seed"),
    (dict(input_range=(1.0, 0.0)), "input_range"),
    (dict(compile=True, method="fd2"), "compile"),  # fd2 has nothing to compile
    (dict(compile=True, method="autograd", estimator="deflated"), "compile"),
    (dict(recovery="largest"), "recovery"),
    (dict(recovery="probe", orientation="higher"), "recovery"),  # the probe runs with orientation "probe" only
])
def test_bad_settings_are_refused_by_name(changes, name):
    with pytest.raises(ValueError, match=name):
        DetectorConfig(**changes)


def test_defaults_and_resolved_scale():
    assert DetectorConfig().method == "auto" and DetectorConfig().h is None  # resolved with the method
    assert DetectorConfig().recovery == "max"
    assert DetectorConfig(method="fd2").h == DEFAULT_SCALE
    assert DetectorConfig(method="autograd").h == 0.0
    assert DetectorConfig(h=1).h == 1.0 and isinstance(DetectorConfig(h=1).h, float)
    assert DetectorConfig(probe_norm="linf").probe_radius(784) == DEFAULT_PROBE_EPS_LINF
    assert DetectorConfig().probe_radius(784) == pytest.approx(0.05 * 28)
    assert DetectorConfig(probe_eps=0.3).probe_radius(784) == 0.3


def test_frozen_replace_and_round_trip():
    cfg = DetectorConfig(num_directions=4, classes=3, method="fd", h=0.02, input_range=(-1, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.h = 0.1
    assert cfg.replace(h=0.1).h == 0.1 and cfg.h == 0.02
    with pytest.raises(ValueError, match="^h must"):
        cfg.replace(h=-1)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown detector settings"):
        DetectorConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_detector_attributes_read_and_replace_the_config():
    model = SmoothNet(torch.nn.Softplus()).eval()
    det = CurvatureDetector(model, num_directions=3, method="fd2")
    assert det.num_directions == 3 and det.config.method == "fd2"
    det.h = 0.2
    assert det.config.h == 0.2
    with pytest.raises(ValueError, match="^h must"):
        det.h = float("inf")
    assert det.config.h == 0.2
    base = DetectorConfig(num_directions=5, method="autograd")
    assert CurvatureDetector(model, base, seed=3).config == base.replace(seed=3)
    with pytest.raises(TypeError, match="config"):
        CurvatureDetector(model, {"num_directions": 3})


def test_a_new_method_takes_its_default_scale_unless_h_was_set():
    assert DetectorConfig(method="autograd").replace(method="fd2").h == DEFAULT_SCALE
    assert DetectorConfig().replace(method="autograd").h == 0.0
    assert DetectorConfig(h=0.3).replace(method="fd").h == 0.3
    model = SmoothNet(torch.nn.Softplus()).eval()
    det = CurvatureDetector(model, method="autograd")
    det.method = "fd"
    assert det.config.h == DEFAULT_SCALE
