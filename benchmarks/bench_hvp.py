"""Input-space Hessian products side by side, as a ratio to one forward pass of the model.

    python benchmarks/bench_hvp.py [--batch 64] [--dataset mnist|digits] [--repeat 5]
    python -m pytest benchmarks/bench_hvp.py --benchmark-only --benchmark-group-by=group

Rows (one product for each of B samples, F = f_2nd - f_top at random inputs of a random-init
smooth LeNet from the zoo): forward pass (the unit); "autograd" (double backward through the
first-order graph cached by curvext.curvature.hvp.InputHessian, graph build excluded and shown apart);
forward-over-reverse (torch.func.jvp of torch.func.grad, no cache); "fd" (two gradient
evaluations at x +- h v); "fd2" (the quadratic form v^T H v from two forward passes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pytest
import torch

from curvext.curvature.hvp import InputHessian, pair_logit_difference
from curvext.data import zoo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc  # noqa: E402

SIZES = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}


def setup(batch=64, dataset="mnist", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = zoo.build("lenet", "smooth", dataset).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch,) + SIZES[dataset], generator=g).to(dtype)
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    a, c = top2[:, 1].contiguous(), top2[:, 0].contiguous()
    V = torch.randn(x.shape, generator=g).to(dtype)
    return model, x, a, c, V


def cases(model, x, a, c, V):
    """name -> zero-argument callable doing one product per sample."""
    index = torch.arange(x.shape[0])
    H_auto = InputHessian(model, x, a, c, method="autograd")
    H_fd = InputHessian(model, x, a, c, method="fd", h=1e-2)
    H_fd2 = InputHessian(model, x, a, c, method="fd2", h=1e-2)

    def F_sum(z):
        return pair_logit_difference(model(z), a, c).sum()

    grad_fn = torch.func.grad(F_sum)

    def forward():
        with torch.no_grad():
            model(x)

    return {
        "forward": forward,
        "autograd graph build": lambda: InputHessian(model, x, a, c, method="autograd"),
        "autograd (cached graph)": lambda: H_auto(V, index),
        "forward-over-reverse": lambda: torch.func.jvp(grad_fn, (x,), (V,))[1],
        "fd": lambda: H_fd(V, index),
        "fd2 (quadratic form)": lambda: H_fd2.quadratic_form(V, index),
    }


def best_time(fn, repeat):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dataset", choices=sorted(SIZES), default="mnist")
    p.add_argument("--repeat", type=int, default=5)
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    problem = setup(args.batch, args.dataset)
    times = {name: best_time(fn, args.repeat) for name, fn in cases(*problem).items()}
    unit = times["forward"]
    print(f"B={args.batch} {args.dataset} LeNet (smooth), fp32, {torch.get_num_threads()} threads, {malloc}; "
          f"one forward = {1e3 * unit:.2f} ms")
    print("| method | ms | x forward |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * t:.2f} | {t / unit:.1f} |")


@pytest.fixture(scope="module")
def all_cases():
    return cases(*setup(64, "mnist"))


@pytest.mark.parametrize("name", ["forward", "autograd graph build", "autograd (cached graph)",
                                  "forward-over-reverse", "fd", "fd2 (quadratic form)"])
@pytest.mark.benchmark(group="input HVP, B=64 MNIST LeNet")
def test_hvp(benchmark, all_cases, name):
    benchmark(all_cases[name])


if __name__ == "__main__":
    main()
