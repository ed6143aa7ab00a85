"""The README's Python examples run as written and give what their comments say."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run_block(marker: str) -> dict:
    blocks = [b for b in python_blocks() if marker in b]
    assert len(blocks) == 1, f"expected one README python block containing {marker!r}, found {len(blocks)}"
    namespace: dict = {}
    exec(compile(blocks[0], f"README.md ({marker})", "exec"), namespace)
    return namespace


def test_every_python_block_is_covered():
    markers = ("curvext.lanczos(", "curvext.CurvatureDetector(", "curvext.CurvatureMonitor(", "curvext.find_paths(")
    for block in python_blocks():
        assert any(m in block for m in markers), f"README python block not run by a test:\n{block[:200]}"


def test_eigensolver_example():
    ns = run_block("curvext.lanczos(")
    B = ns["B"]
    res, top = ns["res"], ns["top"]
    assert res.eigenvalues.shape == (B, 4) and res.eigenvectors.shape == (B, 4, ns["n"])
    assert bool(res.converged.all())
    # The spectrum was planted: top four eigenvalues 2, 3, 4, 5.
    expected = torch.linalg.eigvalsh(ns["A"])[:, -4:]
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(top.eigenvalues[:, 0], torch.full((B,), 5.0, dtype=torch.float64), rtol=1e-4, atol=0)
    small = ns["small"]
    assert bool(small.converged.all()) and int(small.steps.min()) > 12  # it restarted
    torch.testing.assert_close(small.eigenvalues, expected, rtol=1e-6, atol=1e-6)
    assert ns["caught"][0].category is ns["curvext"].ConvergenceWarning
    assert not bool(ns["short"].converged.all()) and ns["partial"].eigenvalues.shape == (B, 4)
    w, first = ns["w"], ns["first"]
    assert w.shape == (4096, 64) and first.shape == (4096, 64)
    torch.testing.assert_close((first**2).sum(1), torch.ones(4096), rtol=1e-4, atol=1e-4)


def test_detection_example(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path))  # train into a scratch cache, not ~/.cache
    ns = run_block("curvext.CurvatureDetector(")
    out, test = ns["out"], ns["test"]
    n = len(test) - 200
    assert out.perturbed.shape == (n,) and out.perturbed.dtype == torch.bool
    assert out.recovered.shape == out.predicted.shape == out.rho.shape == (n,)
    # Calibrated on clean images at 5% FPR: most of these clean images are not flagged.
    assert float(out.perturbed.float().mean()) < 0.2
    assert ns["det"].method == "fd2" and ns["det"].h == ns["choice"].h > 0  # "auto" on a ReLU net


def test_training_loop_example():
    ns = run_block("curvext.CurvatureMonitor(")
    history = ns["monitor"].history
    assert [r["step"] for r in history] == [0, 10, 20]
    for name in ("curvature", "rho", "grad_norm"):
        assert all(torch.isfinite(torch.tensor([r[f"{name}_median"], r[f"{name}_max"]])).all() for r in history)
    assert ns["model"].training  # the monitor gave the model back in train mode


def test_paths_example(tmp_path, monkeypatch):
    monkeypatch.setenv("CURVEXT_CACHE", str(tmp_path))  # train into a scratch cache, not ~/.cache
    ns = run_block("curvext.find_paths(")
    res, model = ns["res"], ns["zm"].model
    assert res.connected.shape == res.n_anchors.shape == res.length_ratio.shape == (10,)
    assert (res.labels == 3).all() and len(res.failures) == 10
    # The comment's claim: a connected path has label 3 at every point the search checked.
    points, pos = ns["points"], ns["pos"]
    assert points.shape[1:] == (1, 8, 8) and pos.shape == (points.shape[0],)
    if res.connected[0]:
        with torch.no_grad():
            assert (model(points).argmax(1) == 3).all()
    assert ((res.n_anchors == 0) <= (res.length_ratio == 1)).all()  # no anchor: the straight segment
