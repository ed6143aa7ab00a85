"""Collapsed Taylor mode against vmapped forward-over-forward mode, measured in one run.

    python benchmarks/bench_taylor_mode.py [--data-dir MNIST_DIR] [--images 16]
        [--directions 16] [--classes 9] [--repeat 5] [--device cpu] [--out F.md]

For the zoo's smooth LeNet and NiN: milliseconds per group of images of (1) the sums over the
directions ``sum_j v_j^T H v_j`` of every logit (:func:`curvext.curvature.quadratic_forms.logit_quadratic_form_sums`)
and (2) all of Algorithm 2's per-class curvature sums (:func:`class_curvature_sums`), each with
the model's :mod:`curvext.autodiff.taylor_plan` plan and with ``taylor=False`` (the ``torch.func`` path),
best of ``--repeat``; and the largest relative difference between the two (the same statistic).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from curvext import data
from curvext.autodiff import taylor_plan
from curvext.curvature.quadratic_forms import class_curvature_sums, logit_quadratic_form_sums
from curvext.data import zoo
from curvext.detection.detector import CurvatureDetector

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402


def best_ms(fn, repeat: int) -> float:
    fn()  # warm-up (and the plan's one-off check)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: sklearn's digits)")
    p.add_argument("--images", type=int, default=16, help="one group of images (the detector's default size)")
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dataset = "mnist" if args.data_dir else "digits"
    test = data.load_mnist(args.data_dir, "test", limit=args.images) if args.data_dir else \
        data.load_digits("test").subset(args.images)
    x = test.images.to(args.device)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {malloc}, device {args.device}; {dataset}, {x.shape[0]} images, "
             f"T={args.directions}, K={args.classes}; best of {args.repeat}",
             "", "| model | part | Taylor mode (ms) | forward-over-forward (ms) | speed-up | max rel. diff |",
             "|---|---|---:|---:|---:|---:|"]
    for name in ("lenet", "nin"):
        model = zoo.train(name, "smooth", dataset, args.data_dir).model.to(args.device)
        plan = taylor_plan.plan_for(model)
        if plan is None:
            raise SystemExit(f"{name}: no Taylor-mode plan (see the log)")
        V = CurvatureDetector(model, num_directions=args.directions).directions(x.shape[1:], x.device, x.dtype)
        with torch.no_grad():
            logits = model(x)
        pred = logits.argmax(1)
        others = logits.masked_fill(torch.nn.functional.one_hot(pred, logits.shape[1]).bool(), -float("inf"))
        cls = others.topk(args.classes, 1).indices
        parts = {
            "sums over directions": lambda taylor: logit_quadratic_form_sums(model, x, V, "autograd", 0.0,
                                                                             taylor=taylor),
            "Algorithm 2's class sums": lambda taylor: class_curvature_sums(model, x, cls, pred, V, "autograd",
                                                                             0.0, taylor=taylor),
        }
        for part, run in parts.items():
            fast, slow = best_ms(lambda: run(plan), args.repeat), best_ms(lambda: run(False), args.repeat)
            diff = relative(run(plan), run(False))
            lines.append(f"| {name}-smooth | {part} | {fast:.1f} | {slow:.1f} | {slow / fast:.1f}x | {diff:.1e} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
