"""Fixtures of the sweep tests: a calibrated zoo model."""
from __future__ import annotations

import pytest

from curvext.data.image_folder import Preprocessing
from curvext.detection import DetectorConfig
from curvext.sweep.calibrate import calibrate_dataset
from tests.conftest import write_digit_folder

DIGITS_PREPROCESSING = Preprocessing(image_size=8, resize=None, channels=1)


@pytest.fixture(scope="session")
def calibration(tmp_path_factory, relu_lenet):
    """A calibration of the ReLU LeNet on 40 other digits (fd2, T = 4, fixed h: fast)."""
    clean = write_digit_folder(tmp_path_factory.mktemp("clean") / "images", 40, offset=100)
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    config = DetectorConfig(num_directions=4, method="fd2", h=0.1)
    calibrate_dataset(relu_lenet[0], clean, path, images=40, config=config, preprocessing=DIGITS_PREPROCESSING,
                      scales=None, workers=0)
    return path
