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


def _stub_separation(monkeypatch, peak: float):
    """Replace score_images in scale_selection by a stub under which the 200 probe images' rho is
    that of the 400 clean ones (evenly spread on [0, 1]) shifted by ``0.8 exp(-ln(h / peak)^2 / 8)``,
    a bump in log h that peaks at ``h = peak``: the best h is known, and the AUC grows strictly
    with the shift (each 1/400 of shift moves 200 of the 80 000 pairs)."""
    import math
    from types import SimpleNamespace

    from curvext.detection import scale_selection
    from curvext.detection.probe import ProbeResult

    probe_images = torch.rand(200, 1, 8, 8)

    def stub(model, x, config, exact_sums=None):
        if x is probe_images:
            shift = 0.8 * math.exp(-math.log(config.h / peak) ** 2 / 8)
            return SimpleNamespace(rho=torch.linspace(0, 1, 200, dtype=torch.float64) + shift)
        return SimpleNamespace(rho=torch.linspace(0, 1, x.shape[0], dtype=torch.float64))

    monkeypatch.setattr(scale_selection, "score_images", stub)
    probe = ProbeResult(probe_images, torch.zeros(200, dtype=torch.long), torch.ones(400, dtype=torch.bool), 1.0)
    return scale_selection, probe


def test_grid_is_extended_toward_a_best_scale_beyond_it(monkeypatch, caplog):
    from curvext.detection.config import DetectorConfig

    config = DetectorConfig(method="fd2")
    clean = torch.rand(400, 1, 8, 8)
    scale_selection, probe = _stub_separation(monkeypatch, peak=0.3)
    # grid 0.01..0.1: best at its top edge -> 0.2, 0.4 (best), 0.8 (worse): stops, 0.4 inside
    choice = scale_selection.choose_scale(None, config, clean, probe, (0.01, 0.05, 0.1))
    assert choice.extended == (0.2, 0.4, 0.8) and choice.h == 0.4 and not choice.at_edge
    assert choice.best_separation == max(choice.separation.values()) == choice.separation[0.4]
    assert "h = 0.4 (probe-vs-clean separation" in choice.summary() and "(+)" in choice.table()
    # without extension: the edge of the grid, and a warning that the best may lie beyond
    with caplog.at_level("WARNING"):
        edge = scale_selection.choose_scale(None, config, clean, probe, (0.01, 0.05, 0.1), extend=False)
    assert edge.h == 0.1 and edge.at_edge and edge.extended == () and "may lie beyond" in caplog.text
    # far beyond the grid: three extensions (0.2, 0.4, 0.8) are not enough; still at the edge, said so
    scale_selection, probe = _stub_separation(monkeypatch, peak=3.0)
    far = scale_selection.choose_scale(None, config, clean, probe, (0.01, 0.05, 0.1))
    assert far.h == 0.8 and far.at_edge and "may lie beyond" in far.summary()
    # below the grid: halved down to, not past, the smallest scale float32 allows (1e-3)
    scale_selection, probe = _stub_separation(monkeypatch, peak=1e-4)
    low = scale_selection.choose_scale(None, config, clean, probe, (0.005, 0.01, 0.05))
    assert low.extended == (0.0025, 0.00125) and low.h == 0.00125 and low.at_edge
