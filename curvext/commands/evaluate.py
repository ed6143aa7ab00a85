"""``curvext evaluate``: Algorithm 2 against attacks and baselines for zoo or user models."""
from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from curvext import data
from curvext.commands.arg_types import non_negative_float, positive_float, positive_int, scales
from curvext.commands.model_source import (
    add_data_arguments,
    add_model_arguments,
    load_user_model,
    refuse_normalize_without_checkpoint,
)
from curvext.commands.placement import add_device_argument, resolve_device
from curvext.data import zoo
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scale_selection import PROBE_SCALES
from curvext.evaluation.protocol import attack_suite, evaluate, write_outputs
from curvext.utils.model_checks import is_piecewise_linear

logger = logging.getLogger(__name__)

SMOOTH_DEFAULT_METHOD = "autograd"
RELU_DEFAULT_METHOD = "fd2"
MANY_CLASSES, MANY_CLASSES_K = 100, 10  # above MANY_CLASSES outputs, K defaults to the top MANY_CLASSES_K


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--model", default="lenet", help="zoo architectures, comma separated (lenet,nin)")
    p.add_argument("--activation", default="relu", help="relu, smooth or both (comma separated)")
    add_model_arguments(p)
    p.add_argument("--images", type=positive_int, default=300, help="test images to use")
    p.add_argument("--method", default=None, choices=("autograd", "fd", "fd2"),
                   help="curvature measurement (default: autograd for smooth, fd2 for relu models)")
    p.add_argument("--h", type=scales, default="auto", metavar="auto|H[,H...]",
                   help="finite-difference scale (l2, input units) for fd/fd2: 'auto' (default) picks it from "
                        "the clean images by the orientation probe; several, comma separated, compare scales "
                        "on the same adversarial images (attacked once)")
    p.add_argument("--directions", type=positive_int, default=16, help="random directions T")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the exact (autograd) curvature sums of smooth models: faster over long "
                        "runs, after a one-off compilation per model (see BENCHMARKS.md); fd/fd2 models run as usual")
    p.add_argument("--classes", type=positive_int, default=None,
                   help=f"competing classes K (default: all, or the top {MANY_CLASSES_K} for models with more than "
                        f"{MANY_CLASSES} classes, such as ImageNet's 1000; all of those: any K >= their number)")
    p.add_argument("--orientation", default="probe", choices=("probe", "higher", "lower", "auto"),
                   help="side of rho where perturbed images are expected (probe: PGD probe of clean images)")
    p.add_argument("--probe-norm", default="l2", choices=("l2", "linf"),
                   help="norm of the probe's PGD, which picks h, orientation and recovery rule from the clean "
                        "images; linf keeps the l2 attacks' family (DeepFool, PGD l2, CW) out of those choices")
    p.add_argument("--probe-eps", type=positive_float, default=None,
                   help="largest probe radius in input units (default 0.05 sqrt(d) for l2, 0.2 for linf)")
    p.add_argument("--eps-linf", type=positive_float, default=0.1)
    p.add_argument("--eps-l2", type=positive_float, default=1.0)
    p.add_argument("--cw-confidence", type=non_negative_float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="zoo cache folder (default ~/.cache/curvext or $CURVEXT_CACHE)")
    p.add_argument("--out", default="curvext-out", help="folder for tables, plots and the resumable cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_argument(p)


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="detection and recovery against attacks, with baselines")
    add_arguments(p)
    p.set_defaults(func=run)


def _models(args, device):
    if args.checkpoint:
        yield "checkpoint", load_user_model(args, device), None
        return
    for name in args.model.split(","):
        for activation in ("relu", "smooth") if args.activation == "both" else args.activation.split(","):
            zm = zoo.train(name.strip(), activation.strip(), args.dataset, args.data_dir, seed=args.seed,
                           cache=args.cache)
            yield f"{name.strip()}-{activation.strip()}", zm.model, zm.test_accuracy


def run(args) -> int:

    device = resolve_device(args.device)
    refuse_normalize_without_checkpoint(args, "evaluate")

    if args.dataset in ("mnist", "folder") and not args.data_dir:
        print(f"curvext evaluate: --dataset {args.dataset} needs --data-dir (a folder of "
              f"{'MNIST IDX files' if args.dataset == 'mnist' else 'images'})", file=sys.stderr)
        return 2
    if args.dataset == "folder" and not args.checkpoint:
        print("curvext evaluate: --dataset folder needs --checkpoint (the zoo trains on digits or MNIST only)",
              file=sys.stderr)
        return 2
    if args.dataset == "mnist":
        test = data.load_mnist(args.data_dir, "test", limit=args.images)
    elif args.dataset == "folder":
        test = data.load_image_folder(args.data_dir, size=args.image_size, channels=args.channels, limit=args.images)
    else:
        test = data.load_digits("test", seed=args.seed).subset(args.images)
    attacks = attack_suite(eps_linf=args.eps_linf, eps_l2=args.eps_l2, cw_confidence=args.cw_confidence,
                           seed=args.seed)
    summary = []
    images, labels = test.images.to(device), test.labels.to(device)
    for label, model, accuracy in _models(args, device):
        model = model.to(device)
        with torch.no_grad():
            outputs = model(images[:1]).shape[1]
            if args.dataset == "folder":  # unlabelled images: recovery means getting the clean prediction back
                labels = torch.cat([model(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)])
        classes = args.classes
        if classes is None and outputs > MANY_CLASSES:
            classes = MANY_CLASSES_K
            print(f"{label}: {outputs} classes; curvature summed over the top {classes} competing classes "
                  "(--classes to change)", file=sys.stderr)
        method = args.method or (RELU_DEFAULT_METHOD if is_piecewise_linear(model) else SMOOTH_DEFAULT_METHOD)
        auto = args.h == "auto"
        for h in [None] if method == "autograd" or auto else args.h:
            t0 = time.perf_counter()
            detector = CurvatureDetector(model, num_directions=args.directions, classes=classes, method=method,
                                         h=h, orientation=args.orientation, probe_norm=args.probe_norm,
                                         probe_eps=args.probe_eps, seed=args.seed,
                                         compile=args.compile and method == "autograd")
            settings = dict(model=label, dataset=args.dataset, eps_linf=args.eps_linf, eps_l2=args.eps_l2,
                            cw=args.cw_confidence, attack_seed=args.seed)
            report = evaluate(model, images, labels, detector=detector, attacks=attacks, out_dir=args.out,
                              settings=settings, scales=PROBE_SCALES if auto and method != "autograd" else None,
                              progress=not args.no_progress)
            suffix = f"-h{h:g}" if h is not None and len(args.h) > 1 else ""
            paths = write_outputs(report, args.out, prefix=f"eval-{args.dataset}-{label}{suffix}")
            acc = "" if accuracy is None else f", test accuracy {100 * accuracy:.1f}%"
            scale = "" if method == "autograd" else f", h={detector.h:g}"
            print(f"\n## {label} on {args.dataset}{acc}: method {method}{scale}, T={args.directions}, "
                  f"{report.n_clean} correctly classified images, {time.perf_counter() - t0:.0f} s")
            source = f" (PGD-{args.probe_norm} probe)" if args.orientation == "probe" else ""
            print(f"perturbed expected {report.orientation}, recovery by {report.settings['recovery']} curvature"
                  f"{source}; clean images with rho < 0: {100 * report.clean_sign_share:.1f}%\n")
            if report.scale_choice is not None:
                print(f"h chosen from the clean images by the probe ({report.scale_choice.n_probe} probe images):\n")
                print(report.scale_choice.table() + "\n")
            print(report.table())
            print(f"\nwrote {', '.join(str(p) for p in paths)}")
            summary.append((label, method, detector.h, report))
    if args.h != "auto" and len(args.h) > 1:
        print("\n## curvext by scale (AUC / recovery at the best threshold)\n")
        print(scale_table(summary))
    return 0


def scale_table(summary: list) -> str:
    """Markdown table, one row per (model, method, h), one column per attack: curvext's AUC and
    recovery at the best threshold, and the orientation found."""
    attacks = list(dict.fromkeys(r.attack for *_, rep in summary for r in rep.rows))
    lines = ["| model | method | h | orientation | " + " | ".join(attacks) + " |",
             "|---|---|---:|---|" + "---|" * len(attacks)]
    for label, method, h, rep in summary:
        cells = []
        for a in attacks:
            row = next((r for r in rep.rows if r.attack == a and r.score == "curvext"), None)
            cells.append("" if row is None or row.n_perturbed == 0 else f"{row.auc:.2f} / {100 * row.recovery:.0f}%")
        lines.append(f"| {label} | {method} | {'' if h is None else f'{h:g}'} | {rep.orientation} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)
