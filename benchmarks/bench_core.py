"""pytest-benchmark view of the compiled core, each case next to its reference in one run.

    python -m pytest benchmarks/bench_core.py --benchmark-only --benchmark-group-by=group

Groups pair curvext with the reference it is compared to (ratios: see compare_core.py and
BENCHMARKS.md). Sizes follow the issue: tridiagonal B=4096, m=64 fp32; Lanczos B=64, n=3072, k=10.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from problems import cnn_input_hvp, diag_plus_low_rank  # noqa: E402

import curvext  # noqa: E402

# The Lanczos cases run a fixed 40 steps (tol 1e-30): not converging is the point, not news.
pytestmark = pytest.mark.filterwarnings("ignore::curvext.ConvergenceWarning")


@pytest.fixture(scope="module")
def tridiagonals():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, 64, generator=g)
    b = torch.randn(4096, 63, generator=g)
    dense = torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
    return a, b, dense


@pytest.mark.benchmark(group="tridiag: vectors")
def test_tridiag_vectors_curvext(benchmark, tridiagonals):
    a, b, _ = tridiagonals
    benchmark(curvext.tridiag_eigh, a, b, True)


@pytest.mark.benchmark(group="tridiag: vectors")
def test_tridiag_vectors_torch_eigh(benchmark, tridiagonals):
    benchmark(torch.linalg.eigh, tridiagonals[2])


@pytest.mark.benchmark(group="tridiag: values")
def test_tridiag_values_curvext(benchmark, tridiagonals):
    a, b, _ = tridiagonals
    benchmark(curvext.tridiag_eigh, a, b, False)


@pytest.mark.benchmark(group="tridiag: values")
def test_tridiag_first_components_curvext(benchmark, tridiagonals):
    a, b, _ = tridiagonals
    benchmark(curvext.tridiag_eigh, a, b, "first")


@pytest.mark.benchmark(group="tridiag: values")
def test_tridiag_values_torch_eigvalsh(benchmark, tridiagonals):
    benchmark(torch.linalg.eigvalsh, tridiagonals[2])


@pytest.mark.parametrize("make", [diag_plus_low_rank, cnn_input_hvp], ids=["diag+lowrank", "cnn-hvp"])
@pytest.mark.benchmark(group="lanczos 40 steps")
def test_lanczos_curvext(benchmark, make):
    problem = make(B=64)
    v0 = torch.randn((problem.B,) + problem.shape)
    benchmark.pedantic(lambda: curvext.lanczos(problem.op, v0, k=10, max_steps=40, tol=1e-30), rounds=3)


@pytest.mark.parametrize("make", [diag_plus_low_rank, cnn_input_hvp], ids=["diag+lowrank", "cnn-hvp"])
@pytest.mark.benchmark(group="lanczos 40 steps")
def test_lanczos_linear_operator(benchmark, make):
    lanczos_mod = pytest.importorskip("linear_operator.utils.lanczos")
    problem = make(B=64)
    init = torch.randn(problem.B, problem.n, 1)

    def run():
        q, t = lanczos_mod.lanczos_tridiag(problem.batched_matmul, 40, init.dtype, init.device,
                                           (problem.n, problem.n), batch_shape=torch.Size([problem.B]),
                                           init_vecs=init)
        w, s = torch.linalg.eigh(t)
        return w[..., -10:], q @ s[..., -10:]

    benchmark.pedantic(run, rounds=3)
