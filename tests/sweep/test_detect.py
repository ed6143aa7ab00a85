"""curvext.sweep.detect: one row per image with the detector's own values, errors as rows,
resumable, refusing another run's folder and another model's calibration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from curvext.data.image_folder import Preprocessing, scan_image_folder
from curvext.detection import CurvatureDetector, DetectorConfig
from curvext.sweep import COLUMNS, calibrate_dataset, detect_dataset
from curvext.sweep.output import OutputInUse
from curvext.sweep.sources import FolderSource
from tests.conftest import write_digit_folder
from tests.sweep.conftest import DIGITS_PREPROCESSING


def detections(out) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "detections").glob("part-*.parquet"))],
                     ignore_index=True)


def test_rows_equal_the_detector_on_the_same_images(tmp_path, relu_lenet, digit_folder, calibration):
    model = relu_lenet[0]
    result = detect_dataset(model, digit_folder, calibration, tmp_path / "out", chunk_size=16, workers=0)
    assert result.status.leader and result.summary.is_file() and (tmp_path / "out" / "rho-histogram.png").is_file()
    table = detections(tmp_path / "out")
    assert list(table.columns) == list(COLUMNS) and len(table) == 40
    manifest = scan_image_folder(digit_folder)
    assert table["path"].tolist() == list(manifest.paths) and table["label"].tolist() == list(manifest.labels)
    # Independent path: the same images decoded once, scored by CurvatureDetector.detect.
    source = FolderSource(manifest, DIGITS_PREPROCESSING, workers=0)
    x = torch.cat([b.images for b in source.batches(range(40), 40, "cpu")])
    expected = CurvatureDetector.load(calibration, model).detect(x)
    torch.testing.assert_close(torch.tensor(table["rho"].to_numpy()), expected.rho.double(), rtol=1e-6, atol=1e-9)
    assert table["perturbed"].tolist() == expected.perturbed.tolist()
    assert table["recovered"].tolist() == expected.recovered.tolist()
    assert table["predicted"].tolist() == expected.predicted.tolist()
    assert all(len(c) == 9 for c in table["top_classes"]) and table["error"].isna().all()
    summary = result.summary.read_text()
    assert "| 40 | 0 | 40 |" in summary and "accuracy of the model's labels" in summary


def test_a_corrupted_file_is_a_row_with_its_error(tmp_path, relu_lenet, calibration):
    folder = write_digit_folder(tmp_path / "images", 6, flat=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "empty.jpg").write_bytes(b"")
    detect_dataset(relu_lenet[0], folder, calibration, tmp_path / "out", workers=0)
    table = detections(tmp_path / "out")
    bad = table[table["error"].notna()]
    assert sorted(bad["path"]) == ["broken.png", "empty.jpg"] and bad["rho"].isna().all()
    assert table["label"].isna().all() and table[table["error"].isna()]["rho"].notna().all()
    assert "broken.png" in (tmp_path / "out" / "summary.md").read_text()


def test_a_rerun_computes_only_missing_parts(tmp_path, relu_lenet, digit_folder, calibration):
    out = tmp_path / "out"
    detect_dataset(relu_lenet[0], digit_folder, calibration, out, chunk_size=16, workers=0)
    first = detections(out)
    parts = sorted((out / "detections").glob("part-*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in parts}
    parts[1].unlink()
    again = detect_dataset(relu_lenet[0], digit_folder, calibration, out, chunk_size=16, workers=0)
    assert (again.status.computed, again.status.skipped) == (1, 2)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in parts if p != parts[1])
    pd.testing.assert_frame_equal(detections(out), first)


def test_another_run_in_the_same_folder_is_refused(tmp_path, relu_lenet, digit_folder, calibration):
    out = tmp_path / "out"
    detect_dataset(relu_lenet[0], digit_folder, calibration, out, chunk_size=16, workers=0)
    with pytest.raises(OutputInUse, match="chunk_size"):
        detect_dataset(relu_lenet[0], digit_folder, calibration, out, chunk_size=8, workers=0)


def test_a_calibration_for_another_model_is_refused(tmp_path, digit_folder, calibration):
    from curvext.data import zoo

    other = zoo.build("lenet", "relu", "digits").eval()  # random weights
    with pytest.raises(ValueError, match="digest"):
        detect_dataset(other, digit_folder, calibration, tmp_path / "out", workers=0)


def test_an_empty_folder_is_refused(tmp_path, relu_lenet, calibration):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        detect_dataset(relu_lenet[0], tmp_path / "empty", calibration, tmp_path / "out")


def test_out_of_memory_halves_the_batch_and_continues(tmp_path, relu_lenet, digit_folder, calibration,
                                                      monkeypatch, caplog):
    real = CurvatureDetector.score
    sizes = []

    def scarce(self, x):
        sizes.append(self.batch_size)
        if self.batch_size > 4:
            raise torch.OutOfMemoryError("simulated")
        return real(self, x)

    monkeypatch.setattr(CurvatureDetector, "score", scarce)
    with caplog.at_level("WARNING", logger="curvext.sweep.detect"):
        detect_dataset(relu_lenet[0], digit_folder, calibration, tmp_path / "out", batch_size=16, workers=0)
    assert sizes[:3] == [16, 8, 4] and "4 images at a time" in caplog.text
    assert detections(tmp_path / "out")["rho"].notna().all()


def test_worker_processes_give_the_same_rows(tmp_path, relu_lenet, digit_folder, calibration):
    detect_dataset(relu_lenet[0], digit_folder, calibration, tmp_path / "main", chunk_size=16, workers=0)
    detect_dataset(relu_lenet[0], digit_folder, calibration, tmp_path / "workers", chunk_size=16, workers=2)
    pd.testing.assert_frame_equal(detections(tmp_path / "workers"), detections(tmp_path / "main"))


def test_an_image_with_non_finite_curvature_is_a_row_not_a_crash(tmp_path, relu_lenet, calibration, monkeypatch):
    folder = write_digit_folder(tmp_path / "images", 5, flat=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "black.png")
    real = CurvatureDetector.score

    def fails_on_black(self, x):
        if bool((x.flatten(1).amax(1) == 0).any()):
            raise FloatingPointError("non-finite curvature for image(s) [0] of the batch")
        return real(self, x)

    monkeypatch.setattr(CurvatureDetector, "score", fails_on_black)
    detect_dataset(relu_lenet[0], folder, calibration, tmp_path / "out", workers=0)
    table = detections(tmp_path / "out")
    black = table[table["path"] == "black.png"].iloc[0]
    assert "non-finite curvature" in black["error"] and np.isnan(black["rho"])
    assert table[table["path"] != "black.png"]["rho"].notna().all()


def test_a_calibration_saved_without_preprocessing_needs_one(tmp_path, relu_lenet, digit_folder, calibration):
    from curvext.detection.calibration_file import read_calibration

    det = CurvatureDetector.load(calibration, relu_lenet[0])
    det.threshold = read_calibration(calibration).threshold
    bare = det.save(tmp_path / "bare.json")
    with pytest.raises(ValueError, match="records no preprocessing"):
        detect_dataset(relu_lenet[0], digit_folder, bare, tmp_path / "a", workers=0)
    detect_dataset(relu_lenet[0], digit_folder, bare, tmp_path / "b", preprocessing=DIGITS_PREPROCESSING, workers=0)
    detect_dataset(relu_lenet[0], digit_folder, calibration, tmp_path / "c", workers=0)
    pd.testing.assert_frame_equal(detections(tmp_path / "b"), detections(tmp_path / "c"))
    with pytest.raises(ValueError, match="differs from the calibration"):
        detect_dataset(relu_lenet[0], digit_folder, calibration, tmp_path / "d",
                       preprocessing=Preprocessing(image_size=8, channels=3))


def test_the_recorded_normalisation_is_put_in_front_of_the_model(tmp_path, relu_lenet, digit_folder):
    """Calibrated with normalize=(mean, std): detect_dataset wraps the user's model the same way, so
    the digests match, and the rows equal a detector on the wrapped model."""
    from curvext.data.normalization import Normalized

    normalize = ((0.1,), (0.9,))
    cal = calibrate_dataset(relu_lenet[0], digit_folder, tmp_path / "cal.json", images=20,
                            config=DetectorConfig(num_directions=2, method="fd2", h=0.1, orientation="higher"),
                            preprocessing=DIGITS_PREPROCESSING, normalize=normalize, scales=None, workers=0)
    assert cal.preprocessing["normalize"] == [[0.1], [0.9]]
    detect_dataset(relu_lenet[0], digit_folder, tmp_path / "cal.json", tmp_path / "out", workers=0)
    wrapped = Normalized(relu_lenet[0], *normalize).eval()
    source = FolderSource(scan_image_folder(digit_folder), DIGITS_PREPROCESSING, workers=0)
    x = torch.cat([b.images for b in source.batches(range(40), 40, "cpu")])
    expected = CurvatureDetector.load(tmp_path / "cal.json", wrapped).score(x).rho
    torch.testing.assert_close(torch.tensor(detections(tmp_path / "out")["rho"].to_numpy()), expected.double(),
                               rtol=1e-6, atol=1e-9)
