"""Choosing the fd scale h from clean images by the orientation probe (curvext.detection.scale_selection)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from curvext import data
from curvext.data import zoo
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scale_selection import ScaleChoice
from curvext.evaluation.protocol import attack_suite, evaluate


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory):
    return zoo.train("lenet", "relu", "digits", cache=tmp_path_factory.mktemp("zoo")).model


@pytest.fixture(scope="module")
def clean(relu_model):
    test = data.load_digits("test").subset(60)
    with torch.no_grad():
        keep = relu_model(test.images).argmax(1) == test.labels
    return test.images[keep]


def test_choice_is_the_best_separating_candidate(relu_model, clean):
    det = CurvatureDetector(relu_model, num_directions=4, method="fd2", h=0.3)
    scales = (0.01, 0.05, 0.2)
    choice = det.choose_scale(clean, scales)
    assert isinstance(choice, ScaleChoice) and det.h == choice.h and choice.h in scales
    assert list(choice.separation) == list(scales) and choice.n_clean == clean.shape[0] > choice.n_probe > 0
    # Independent recomputation: a fresh detector at each fixed h, the same probe, sklearn's AUC.
    probe = det.probe(clean).images
    for h in scales:
        fixed = CurvatureDetector(relu_model, num_directions=4, method="fd2", h=h)
        rc, rp = fixed.score(clean).rho.numpy(), fixed.score(probe).rho.numpy()
        auc = roc_auc_score(np.r_[np.zeros(len(rc)), np.ones(len(rp))], np.r_[rc, rp])
        assert choice.separation[h] == pytest.approx(max(auc, 1 - auc), abs=1e-12)
    assert choice.separation[choice.h] == max(choice.separation.values())
    assert len(set(choice.separation.values())) > 1  # the scales really differ on this model
    assert "**" in choice.table()


def test_ties_go_to_the_larger_scale(relu_model, clean, monkeypatch):
    import sklearn.metrics

    det = CurvatureDetector(relu_model, num_directions=2, method="fd2")
    monkeypatch.setattr(sklearn.metrics, "roc_auc_score", lambda y, s: 0.7)
    assert det.choose_scale(clean[:10], (0.02, 0.1, 0.05)).h == 0.1


def test_bad_use_is_refused(relu_model, clean):
    det = CurvatureDetector(relu_model, num_directions=2, method="fd2")
    for bad in ((), (0.1, -1.0), (0.0,), ("a",), (float("inf"),)):
        with pytest.raises(ValueError, match="scales"):
            det.choose_scale(clean, bad)
    exact = CurvatureDetector(relu_model, num_directions=2, method="autograd")
    with pytest.raises(ValueError, match="fd"):
        exact.choose_scale(clean)
    tiny = CurvatureDetector(relu_model, num_directions=2, method="fd2", probe_eps=1e-6)
    with pytest.raises(ValueError, match="probe_eps"):
        tiny.choose_scale(clean)


def test_evaluate_chooses_once_and_caches_the_choice(relu_model, tmp_path, monkeypatch):
    test = data.load_digits("test").subset(40)
    attacks = {k: v for k, v in attack_suite().items() if k == "pgd-l2"}
    det = CurvatureDetector(relu_model, num_directions=2, method="fd2")
    rep = evaluate(relu_model, test.images, test.labels, detector=det, attacks=attacks, out_dir=tmp_path,
                   scales=(0.02, 0.2), progress=False)
    assert rep.scale_choice is not None and det.h == rep.scale_choice.h == rep.settings["h"]
    calls = []
    monkeypatch.setattr(CurvatureDetector, "choose_scale", lambda self, *a, **k: calls.append(1))
    det2 = CurvatureDetector(relu_model, num_directions=2, method="fd2")
    rep2 = evaluate(relu_model, test.images, test.labels, detector=det2, attacks=attacks, out_dir=tmp_path,
                    scales=(0.02, 0.2), progress=False)
    assert calls == [] and det2.h == rep.scale_choice.h and rep2.scale_choice == rep.scale_choice
