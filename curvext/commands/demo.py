"""``curvext demo``: the built-in default run, with nothing downloaded.

Trains (or loads from the cache) a small ReLU LeNet on scikit-learn's digits and runs
``curvext evaluate`` on it: 300 test images attacked with DeepFool, PGD (l-inf, l2),
Carlini-Wagner (kappa = 5) and the three adaptive attacks against the detectors (on the first
``DEMO_ADAPTIVE_IMAGES`` of them, to keep the demo quick), detectors calibrated on the next 150
test images; finite-difference curvature at the scale the probe picks, next to max-softmax, the
logit margin, noise consistency and feature squeezing. Tables and plots go to ./curvext-out.
"""
from __future__ import annotations

import argparse

from curvext.commands import evaluate as _evaluate
from curvext.commands.arg_types import output_folder, positive_int
from curvext.commands.placement import add_device_argument

DEMO_ADAPTIVE_IMAGES = 64  # the adaptive rows attack this many images (curvext evaluate: all by default); with
# fewer than 50 successful ones the report would warn that its numbers are unreliable


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="built-in end-to-end run on sklearn digits (no downloads)")
    p.add_argument("--out", type=output_folder, default="curvext-out", help="folder for tables, plots and cache")
    p.add_argument("--images", type=positive_int, default=300)
    p.add_argument("--adaptive-images", type=positive_int, default=DEMO_ADAPTIVE_IMAGES,
                   help=f"images the adaptive attacks attack (default {DEMO_ADAPTIVE_IMAGES}; they cost about "
                        "as much per image as all other rows together)")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    parser = argparse.ArgumentParser()
    _evaluate.add_arguments(parser)
    eval_args = parser.parse_args(["--dataset", "digits", "--model", "lenet", "--activation", "relu",
                                   "--images", str(args.images), "--adaptive-images", str(args.adaptive_images),
                                   "--out", args.out, "--device", args.device]
                                  + (["--no-progress"] if args.no_progress else []))
    return _evaluate.run(eval_args)
