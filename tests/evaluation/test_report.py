"""curvext.evaluation.report: the warning on too few images."""
from __future__ import annotations

from types import SimpleNamespace

from curvext.evaluation.report import FEW_IMAGES, EvaluationReport


def _report(n_clean: int, perturbed: dict) -> EvaluationReport:
    rows = [SimpleNamespace(attack=a, score=s, n_perturbed=n) for a, n in perturbed.items()
            for s in ("curvext", "max-softmax")]
    return EvaluationReport(rows, "higher", 0.0, n_clean)


def test_few_images_are_flagged_in_the_header():
    assert _report(FEW_IMAGES, {"pgd-l2": FEW_IMAGES, "cw": 200}).few_images_note() is None
    note = _report(8, {"pgd-l2": 8, "cw": 3, "deepfool": 80}).few_images_note()
    assert note.startswith("**few images**: 8 clean, adversarial pgd-l2: 8; cw: 3;") and "deepfool" not in note
    assert "--images" in note
    small = _report(8, {"cw": 3})
    assert small.header().splitlines()[-1] == small.few_images_note()  # the header's last line
    only_attack = _report(100, {"cw": FEW_IMAGES - 1}).few_images_note()
    assert only_attack.startswith(f"**few images**: 100 clean, adversarial cw: {FEW_IMAGES - 1};")


def test_the_note_names_the_option_that_adds_images():
    assert "(--adaptive-images)" in _report(300, {"pgd-l2": 290, "adaptive-pgd": 48}).few_images_note()
    assert "(--images and --adaptive-images)" in _report(300, {"cw": 40, "adaptive-pgd": 48}).few_images_note()
    assert "(--images)" in _report(20, {"cw": 20}).few_images_note()


def test_a_detector_that_flags_benign_noise_is_called_out():
    quiet = EvaluationReport([], "higher", 0.0, 100, settings={"fpr": 0.05}, benign_fpr={"curvext": 0.04})
    assert "benign noise" not in quiet.header()
    loud = EvaluationReport([], "higher", 0.0, 100, settings={"fpr": 0.05}, benign_fpr={"curvext": 0.9})
    assert "**curvext flags 90% of the calibration images once benign noise" in loud.header()
