"""curvext.detection.calibration_file and CurvatureDetector.save/load: the round trip keeps every
decision; another model's calibration and malformed files are refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from curvext.detection import CurvatureDetector
from curvext.detection.calibration_file import read_calibration
from tests.curvature.test_quadratic_forms import SmoothNet


@pytest.fixture
def calibrated():
    torch.manual_seed(0)
    model = SmoothNet(torch.nn.Softplus()).double().eval()
    x = torch.rand(20, 1, 4, 4, dtype=torch.float64)
    det = CurvatureDetector(model, num_directions=3, method="fd2", h=0.2, orientation="higher", seed=5)
    return det.calibrate(x, fpr=0.1), x


def test_round_trip_keeps_settings_threshold_and_decisions(tmp_path, calibrated):
    det, x = calibrated
    path = det.save(tmp_path / "cal.json", preprocessing={"image": {"image_size": 4}})
    loaded = CurvatureDetector.load(path, det.model)
    assert loaded.config == det.config and loaded.threshold == det.threshold
    assert (loaded.orientation, loaded.recovery, loaded.fpr) == (det.orientation, det.recovery, 0.1)
    a, b = det.detect(x), loaded.detect(x)
    assert torch.equal(a.perturbed, b.perturbed) and torch.equal(a.recovered, b.recovered)
    cal = read_calibration(path)
    assert cal.preprocessing == {"image": {"image_size": 4}} and cal.n_images == 20 and cal.curvext_version


def test_another_models_weights_are_refused_naming_both_digests(tmp_path, calibrated):
    det, _ = calibrated
    path = det.save(tmp_path / "cal.json")
    other = SmoothNet(torch.nn.Softplus()).double().eval()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    recorded = read_calibration(path).model_digest
    with pytest.raises(ValueError, match=f"digest {recorded}, but this model's digest is [0-9a-f]+"):
        CurvatureDetector.load(path, other)


def test_saving_needs_a_calibration_and_a_file_name(tmp_path, calibrated):
    det, _ = calibrated
    with pytest.raises(RuntimeError, match="not calibrated"):
        CurvatureDetector(det.model, method="fd2").save(tmp_path / "x.json")
    with pytest.raises(IsADirectoryError, match="folder"):
        det.save(tmp_path)


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    ('{"format": "something-else"}', "not a curvext calibration"),
    ('{"format": "curvext-calibration", "version": 99}', "version 99"),
])
def test_malformed_files_are_refused(tmp_path, content, message):
    path = tmp_path / "cal.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_calibration(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_calibration(tmp_path / "missing.json")


def test_invalid_settings_inside_a_calibration_are_refused(tmp_path, calibrated):
    det, _ = calibrated
    path = det.save(tmp_path / "cal.json")
    document = json.loads(path.read_text())
    document["config"]["h"] = -1
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="invalid calibration.*h must be"):
        read_calibration(path)
