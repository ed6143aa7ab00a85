"""curvext.detection.benign: benign noise and how often a calibrated detector flags it."""
from __future__ import annotations

import logging

import pytest
import torch

from curvext.data import load_digits
from curvext.detection.benign import BENIGN_SIGMA, benign_noise, reacts_to_benign_noise
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scoring import Scores


def test_benign_noise_is_seeded_clipped_and_of_one_grey_level():
    x = torch.full((64, 1, 16, 16), 0.5)
    a, b = benign_noise(x, seed=3), benign_noise(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, benign_noise(x, seed=4)) and a.dtype == x.dtype
    # 16384 draws: the sample standard deviation is within 2% of sigma (its relative error ~ 1/sqrt(2n) = 0.6%)
    assert float((a - x).std()) == pytest.approx(BENIGN_SIGMA, rel=0.02)
    edges = benign_noise(torch.zeros(4, 1, 8, 8), seed=0)
    assert float(edges.min()) == 0.0 and float(edges.max()) <= 5 * BENIGN_SIGMA  # clipped at the range's low end
    assert float(benign_noise(torch.zeros(4, 1, 8, 8), seed=0, input_range=None).min()) < 0  # normalised inputs


def test_reaction_threshold():
    assert not reacts_to_benign_noise(0.10, 0.05) and reacts_to_benign_noise(0.16, 0.05)
    assert not reacts_to_benign_noise(0.30, 0.25) and reacts_to_benign_noise(0.76, 0.25)


def test_calibrate_measures_benign_noise_and_warns_when_the_detector_reacts(relu_lenet, monkeypatch, caplog,
                                                                            tmp_path):
    """The rate is the share of noisy calibration images the calibrated decision flags. A stub
    statistic that jumps for any image off the clean set (as rho does on max-pool ties) warns."""
    model = relu_lenet[0]
    x = load_digits("test").images[:40]
    det = CurvatureDetector(model, num_directions=2, method="fd2", h=0.05, orientation="higher").calibrate(x)
    noisy_rho = det.score(benign_noise(x, det.config.seed)).rho
    assert det.benign_flag_rate == pytest.approx(float((noisy_rho >= det.threshold).double().mean()))
    loaded = CurvatureDetector.load(det.save(tmp_path / "cal.json"), model)  # kept in the calibration file
    assert loaded.benign_flag_rate == det.benign_flag_rate
    clean = {tuple(img.flatten().tolist()) for img in x}
    real = CurvatureDetector.score

    def jumpy(self, images):
        s = real(self, images)
        off = torch.tensor([tuple(img.flatten().tolist()) not in clean for img in images])
        return Scores(torch.where(off, s.rho + 1e3, s.rho), s.per_class, s.predicted, s.competitors)

    monkeypatch.setattr(CurvatureDetector, "score", jumpy)
    with caplog.at_level(logging.WARNING, logger="curvext.detection.detector"):
        det.calibrate(x)
    assert det.benign_flag_rate == 1.0
    assert "flags 100% of its calibration images once Gaussian noise" in caplog.text
    assert "larger h than 0.05" in caplog.text
