"""``curvext demo``: the built-in default run, with nothing downloaded.

Trains (or loads from the cache) a small ReLU LeNet on scikit-learn's digits, attacks 300 test
images with DeepFool, PGD (l-inf, l2) and Carlini-Wagner (kappa = 5), detects and recovers with
Algorithm 2 (finite-difference curvature at h = 0.1), prints the comparison with max-softmax and
feature squeezing, and writes tables and plots to ./curvext-out.
"""
from __future__ import annotations

import argparse

from curvext.commands import evaluate as _evaluate
from curvext.commands.arg_types import positive_int
from curvext.commands.placement import add_device_argument


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="built-in end-to-end run on sklearn digits (no downloads)")
    p.add_argument("--out", default="curvext-out", help="folder for tables, plots and cache")
    p.add_argument("--images", type=positive_int, default=300)
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    parser = argparse.ArgumentParser()
    _evaluate.add_arguments(parser)
    eval_args = parser.parse_args(["--dataset", "digits", "--model", "lenet", "--activation", "relu",
                                   "--images", str(args.images), "--out", args.out,
                                   "--device", args.device]
                                  + (["--no-progress"] if args.no_progress else []))
    return _evaluate.run(eval_args)
