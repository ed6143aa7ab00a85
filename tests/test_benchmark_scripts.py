"""Smoke runs of the benchmark scripts that only a lent GPU runs in full (benchmarks/gpu_check.sh):
a broken script would otherwise be found only when a GPU session is already spending its time."""
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
                                      "--batch-size", "2", "--methods", "fd2", "--out", str(out)])
    text = out.read_text()
    assert "ResNet-50" in text and text == capsys.readouterr().out
    rate = float(re.search(r"\| fd2 \(h=[0-9.]+\) \| ([0-9.]+) \|", text).group(1))
    assert rate > 0
