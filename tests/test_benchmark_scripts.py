"""Smoke runs of the benchmark scripts at toy sizes: a broken script would otherwise be found only
when a benchmark session (or a lent GPU, benchmarks/gpu_check.sh) is already spending its time.
``--default-malloc`` keeps the scripts from tuning the test process's allocator."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet50_detection_benchmark_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "resnet.md"
    load("bench_detect_resnet").main(["--device", "cpu", "--images", "2", "--size", "32", "--directions", "2",
                                      "--batch-size", "2", "--methods", "fd2", "--out", str(out),
                                      "--default-malloc"])
    text = out.read_text()
    assert "ResNet-50" in text and text == capsys.readouterr().out
    rate = float(re.search(r"\| fd2 \(h=[0-9.]+\) \| ([0-9.]+) \|", text).group(1))
    assert rate > 0


def test_compiled_core_comparison_runs(tmp_path, capsys):
    out = tmp_path / "core.md"
    load("compare_core").main(["--quick", "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert "malloc: C library default" in text
    for case in ("tridiag_eigh vectors", "lanczos diag+low-rank", "lanczos small-CNN input HVP"):
        assert case in text
    shares = re.findall(r"\| (lanczos|power_iteration) \| ([0-9.]+)% \|", text)
    assert [name for name, _ in shares] == ["lanczos", "power_iteration"]


def test_profile_benchmark_agrees_with_eigsh(capsys):
    load("bench_profiles").main(["--images", "2", "--k", "2", "--default-malloc"])
    text = capsys.readouterr().out
    err = float(re.search(r"max \|difference\| / max\|curvature\| = ([0-9.e+-]+)", text).group(1))
    assert err < 1e-3  # the two solvers found the same curvatures (tol 1e-4)


def test_hvp_benchmark_runs(capsys):
    load("bench_hvp").main(["--batch", "4", "--repeat", "1", "--default-malloc"])
    text = capsys.readouterr().out
    for method in ("autograd (cached graph)", "forward-over-reverse", "fd2 (quadratic form)"):
        assert f"| {method} |" in text


def test_benign_perturbations_benchmark_runs(tmp_path, capsys):
    out = tmp_path / "benign.md"
    load("benign_perturbations").main(["--images", "12", "--calibration-images", "12", "--h", "0.1",
                                       "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "| clean |  |" in text and "on the strokes only (background untouched)" in text
    assert "curvext fd2 h = 0.1, perturbed expected" in text
