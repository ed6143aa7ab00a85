"""Smoke runs of the benchmark scripts at toy sizes: a broken script would otherwise be found only
when a benchmark session (or a lent GPU, benchmarks/gpu_check.sh) is already spending its time.
``--default-malloc`` keeps the scripts from tuning the test process's allocator."""
from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import load_script

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    return load_script(BENCHMARKS, name)


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
    shares = re.findall(r"\| (lanczos|lanczos, restarted[^|]*|power_iteration) \| ([0-9.]+)% \|", text)
    assert [name.split(",")[0] for name, _ in shares] == ["lanczos", "lanczos", "power_iteration"]
    # Every eigsh row prints both solvers' accuracy, checked against a float64 reference.
    eigsh_rows = [line for line in text.splitlines() if "scipy eigsh" in line]
    assert len(eigsh_rows) == 4 and all(line.count("ARPACK ratio") == 2 for line in eigsh_rows)
    for line in eigsh_rows:
        errors = [float(e) for e in re.findall(r"err ([0-9.e+-]+)", line)]
        assert max(errors) < 1e-4  # both within tol of max|lambda|
        if "implies ARPACK" in line:  # the tighter tol passes ARPACK's test, as eigsh does
            assert "less accurate" not in line and float(re.search(r"ARPACK ratio ([0-9.]+)", line).group(1)) <= 1.0


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


def test_sweep_benchmark_runs(tmp_path, capsys):
    out = tmp_path / "sweep.md"
    load("bench_sweep").main(["--images", "2", "--size", "32", "--directions", "2", "--classes", "2",
                              "--workers", "0", "--batch-sizes", "2", "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert "6 forward and 6 forward+backward passes" in text and text == capsys.readouterr().out
    row = re.search(r"\| 0 \| 2 \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|", text)
    assert row and all(float(v) > 0 for v in row.groups())


def test_training_monitor_benchmark_runs(tmp_path):
    out = tmp_path / "monitor.md"
    load("bench_training_monitor").main(["--mnist", str(tmp_path / "no-mnist"), "--train-limit", "192", "--every", "2",
                                         "--images", "4", "--repeats", "1", "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert "digits LeNet, one epoch of 192 images (3 steps of 64)" in text
    row = re.search(r"\| LeNet relu \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| 2 \| yes \|", text)
    assert row and float(row.group(3)) > 0  # records at steps 0 and 2; the same weights with the monitor
    for measure in ("curvature", "rho", "grad_norm", "all three"):
        assert f"| {measure} |" in text


def test_lanczos_memory_benchmark_runs(tmp_path):
    out = tmp_path / "memory.md"
    load("bench_lanczos_memory").main(["--quick", "--cases", "cifar", "--out", str(out), "--default-malloc"])
    text = out.read_text()
    rows = [line for line in text.splitlines() if "| cifar" in line]
    assert len(rows) == 2 and all("| 100%" in line for line in rows)  # both runs converged every pair
    errors = [float(e) for e in re.findall(r"dense error ([0-9.e+-]+)", text)]
    assert len(errors) == 2 and max(errors) < 1e-4  # within tol of max|lambda| of the dense spectrum
    assert re.search(r"values agree to [0-9.e+-]+ of max\|theta\|", text)


def test_benign_perturbations_benchmark_runs(tmp_path, capsys):
    out = tmp_path / "benign.md"
    load("benign_perturbations").main(["--images", "12", "--calibration-images", "12", "--h", "0.1",
                                       "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "| clean |  |" in text and "on the strokes only (background untouched)" in text
    assert "curvext fd2 h = 0.1, perturbed expected" in text


def test_adaptive_gradients_benchmark_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MNIST_DIR", raising=False)  # sklearn digits, as in CI
    out = tmp_path / "gradients.md"
    load("adaptive_gradients").main(["--images", "12", "--calibration-images", "12", "--h", "0.1", "--attacker-h",
                                     "detector,0.3", "--out", str(out), "--default-malloc"])
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "Detector: fd2, h = 0.1, perturbed expected" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 0.1 (the detector's) |", "| 0.3 |"))]
    assert len(rows) == 6  # two attacker scales, three step lengths
