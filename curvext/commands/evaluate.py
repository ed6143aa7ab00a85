"""``curvext evaluate``: Algorithm 2 against attacks and baselines for zoo or user models."""
from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from curvext.adversarial.baselines import NOISE_SIGMA
from curvext.adversarial.squeezers import Squeezer, squeezer_for
from curvext.commands.arg_types import (
    non_negative_float,
    non_negative_int,
    output_folder,
    positive_float,
    positive_int,
    scales,
)
from curvext.commands.model_source import (
    activation_list,
    add_data_arguments,
    add_model_arguments,
    is_idx,
    is_torchvision_model,
    load_test_images,
    load_user_model,
    model_list,
    refuse_normalize_without_checkpoint,
)
from curvext.commands.placement import add_device_argument, resolve_device
from curvext.data import zoo
from curvext.detection.config import AUTO_METHOD, RECOVERY_CHOICES, DetectorConfig, resolve_method
from curvext.detection.detector import CurvatureDetector
from curvext.detection.scale_selection import PROBE_SCALES
from curvext.evaluation.protocol import evaluate, write_outputs
from curvext.evaluation.suite import ATTACKS, attack_suite

logger = logging.getLogger(__name__)

MANY_CLASSES, MANY_CLASSES_K = 100, 10  # above MANY_CLASSES outputs, K defaults to the top MANY_CLASSES_K


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--model", type=model_list, default="lenet", metavar="lenet|nin|torchvision:NAME",
                   help="zoo architectures, comma separated (lenet,nin), or a torchvision architecture with "
                        "--weights")
    p.add_argument("--activation", type=activation_list, default="relu", metavar="relu|smooth|both",
                   help="activation of the zoo models: relu, smooth or both (comma separated)")
    add_model_arguments(p)
    p.add_argument("--images", type=positive_int, default=300, help="test images to attack (the first ones)")
    p.add_argument("--calibration-images", type=non_negative_int, default=150,
                   help="clean test images after the attacked ones that every detector is calibrated on (scale h, "
                        "orientation, thresholds), disjoint from the attacked images (default 150); 0 calibrates "
                        "on the attacked images themselves")
    p.add_argument("--attacks", type=attack_list, default=",".join(ATTACKS), metavar="A[,A...]",
                   help=f"attack rows, comma separated, from {', '.join(ATTACKS)} (default: all, the adaptive "
                        "ones included)")
    p.add_argument("--method", default=None, choices=("autograd", "fd", "fd2"),
                   help="curvature measurement (default: autograd for smooth, fd2 for relu models)")
    p.add_argument("--h", type=scales, default="auto", metavar="auto|H[,H...]",
                   help="finite-difference scale (l2, input units) for fd/fd2: 'auto' (default) picks it from "
                        "the calibration images by the orientation probe; several, comma separated, compare scales "
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
    p.add_argument("--recovery", default="max", choices=RECOVERY_CHOICES,
                   help="label-recovery rule of flagged images (default: max, Algorithm 2's; probe: the rule the "
                        "calibration probe suggests); every rule's recovery is reported either way")
    p.add_argument("--probe-norm", default="l2", choices=("l2", "linf"),
                   help="norm of the probe's PGD, which picks h, orientation and recovery rule from the clean "
                        "images; linf keeps the l2 attacks' family (DeepFool, PGD l2, CW) out of those choices")
    p.add_argument("--probe-eps", type=positive_float, default=None,
                   help="largest probe radius in input units (default 0.05 sqrt(d) for l2, 0.2 for linf)")
    p.add_argument("--eps-linf", type=positive_float, default=0.1)
    p.add_argument("--eps-l2", type=positive_float, default=1.0, help="PGD l2 radius, also the adaptive attacks'")
    p.add_argument("--pgd-steps", type=positive_int, default=40)
    p.add_argument("--cw-confidence", type=non_negative_float, default=5.0)
    p.add_argument("--cw-steps", type=positive_int, default=100, help="Adam steps per binary-search round of CW")
    p.add_argument("--adaptive-images", type=positive_int, default=None,
                   help="attack only the first N images with the adaptive attacks (default: all)")
    p.add_argument("--adaptive-weight", type=non_negative_float, default=1.0,
                   help="weight of the detectors' penalty against the margin loss in the adaptive PGD")
    p.add_argument("--adaptive-h", type=positive_float, default=None, metavar="H",
                   help="scale (l2, input units) at which the adaptive PGD differentiates the fd/fd2 detector's "
                        "rho (default: the detector's h); a larger H gives the attacker a smoother surrogate of a "
                        "rough statistic. Exact (autograd) detectors ignore it")
    p.add_argument("--restarts", type=positive_int, default=5, help="R of adaptive-best-of-r")
    p.add_argument("--squeeze", type=squeezer_setting, default="auto", metavar="auto|BITS[,MEDIAN[,S-P-H]]",
                   help="feature squeezing: auto (default) takes Xu et al.'s setting for the dataset (digits: 1 bit "
                        "and a 2x2 median; colour images: 5 bits, 2x2 median, non-local means 13-3-2 or 11-3-4; "
                        "other greyscale images: 5 bits and a 2x2 median); or bits, median size (0: none) and "
                        "non-local means search-patch-strength")
    p.add_argument("--noise-sigma", type=positive_float, default=NOISE_SIGMA,
                   help=f"noise consistency: standard deviation of the Gaussian noise (default {NOISE_SIGMA})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, help="zoo cache folder (default ~/.cache/curvext or $CURVEXT_CACHE)")
    p.add_argument("--out", type=output_folder, default="curvext-out",
                   help="folder for tables, plots and the resumable cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_argument(p)


def attack_list(text: str) -> tuple:
    """``--attacks``: names of ``ATTACKS``, comma separated."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [n for n in names if n not in ATTACKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected attacks from {', '.join(ATTACKS)}, got {text!r}")
    return names


def squeezer_setting(text: str):
    """``--squeeze``: "auto" or ``BITS[,MEDIAN[,SEARCH-PATCH-STRENGTH]]``."""
    if text.strip() == "auto":
        return "auto"
    parts = [v.strip() for v in text.split(",")]
    try:
        bits = int(parts[0])
        median = int(parts[1]) if len(parts) > 1 else 2
        nlm = tuple(float(v) for v in parts[2].split("-")) if len(parts) > 2 else None
        if len(parts) > 3 or (nlm is not None and len(nlm) != 3):
            raise ValueError("too many fields")
        return Squeezer(bits, median, None if nlm is None else (int(nlm[0]), int(nlm[1]), nlm[2]))
    except (ValueError, IndexError) as err:
        raise argparse.ArgumentTypeError(f"expected auto or BITS[,MEDIAN[,SEARCH-PATCH-STRENGTH]] "
                                         f"(e.g. 5,2,13-3-2), got {text!r}: {err}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="detection and recovery against attacks, with baselines")
    add_arguments(p)
    p.set_defaults(func=run)


def _models(args, device):
    if args.checkpoint or is_torchvision_model(args.model[0]):
        yield ("checkpoint" if args.checkpoint else args.model[0].split(":", 1)[1]), load_user_model(args, device), None
        return
    for name in args.model:
        for activation in args.activation:
            zm = zoo.train(name, activation, args.dataset, args.data_dir if is_idx(args.dataset) else None,
                           seed=args.seed, cache=args.cache)
            yield f"{name}-{activation}", zm.model, zm.test_accuracy


def _split(args, device):
    """(evaluated images, labels, calibration images or None): the first --images test images, and
    the next --calibration-images ones."""
    want = args.images + args.calibration_images
    test = load_test_images(args, want, seed=args.seed)
    images, labels = test.images[: args.images].to(device), test.labels[: args.images].to(device)
    if args.calibration_images == 0:
        return images, labels, None
    calibration = test.images[args.images :].to(device)
    if calibration.shape[0] < args.calibration_images:
        print(f"curvext evaluate: only {calibration.shape[0]} test images left after the {args.images} attacked ones "
              f"for calibration (--calibration-images {args.calibration_images})", file=sys.stderr)
    if calibration.shape[0] < 2:
        print("curvext evaluate: calibrating on the attacked images themselves", file=sys.stderr)
        return images, labels, None
    return images, labels, calibration


def run(args) -> int:

    device = resolve_device(args.device)
    refuse_normalize_without_checkpoint(args, "evaluate")

    if args.dataset != "digits" and not args.data_dir:
        raise ValueError(f"--dataset {args.dataset} needs --data-dir (a folder of "
                         f"{'images' if args.dataset == 'folder' else 'IDX files'})")
    if args.dataset == "folder" and not (args.checkpoint or is_torchvision_model(args.model[0])):
        raise ValueError("--dataset folder needs --checkpoint or --model torchvision:NAME (the zoo trains on digits "
                         "and IDX datasets only)")
    images, labels, calibration = _split(args, device)
    squeezer, note = args.squeeze, " (--squeeze)"
    if squeezer == "auto":
        preset, squeezer = squeezer_for(args.dataset, images.shape[1], images.shape[-1])
        note = f" (the {preset} setting{'' if preset == 'greyscale' else ' of Xu et al.'})"
    attacks = attack_suite(eps_linf=args.eps_linf, eps_l2=args.eps_l2, cw_confidence=args.cw_confidence,
                           pgd_steps=args.pgd_steps, cw_steps=args.cw_steps, seed=args.seed, include=args.attacks,
                           adaptive_weight=args.adaptive_weight, restarts=args.restarts,
                           adaptive_images=args.adaptive_images, adaptive_h=args.adaptive_h)
    summary = []
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
        method = resolve_method(model, DetectorConfig(method=args.method or AUTO_METHOD)).method
        auto = args.h == "auto"
        if args.adaptive_h is not None and method == "autograd" and any(n.startswith("adaptive-pgd") for n in attacks):
            print(f"{label}: exact (autograd) detector; the adaptive attacks differentiate its exact rho and "
                  "ignore --adaptive-h", file=sys.stderr)
        for h in [None] if method == "autograd" or auto else args.h:
            t0 = time.perf_counter()
            detector = CurvatureDetector(model, num_directions=args.directions, classes=classes, method=method,
                                         h=h, orientation=args.orientation, recovery=args.recovery,
                                         probe_norm=args.probe_norm, probe_eps=args.probe_eps, seed=args.seed,
                                         compile=args.compile and method == "autograd")
            settings = dict(model=label, dataset=args.dataset, eps_linf=args.eps_linf, eps_l2=args.eps_l2,
                            cw=args.cw_confidence, attack_seed=args.seed, pgd_steps=args.pgd_steps,
                            cw_steps=args.cw_steps)
            report = evaluate(model, images, labels, detector=detector, attacks=attacks, out_dir=args.out,
                              settings=settings, scales=PROBE_SCALES if auto and method != "autograd" else None,
                              progress=not args.no_progress, calibration_images=calibration, squeezer=squeezer,
                              noise_sigma=args.noise_sigma, squeezer_note=note)
            suffix = f"-h{h:g}" if h is not None and len(args.h) > 1 else ""
            paths = write_outputs(report, args.out, prefix=f"eval-{args.dataset}-{label}{suffix}")
            acc = "" if accuracy is None else f", test accuracy {100 * accuracy:.1f}%"
            scale = "" if method == "autograd" else f", h={detector.h:g}"
            print(f"\n## {label} on {args.dataset}{acc}: method {method}{scale}, T={args.directions}, "
                  f"{report.n_clean} correctly classified images, {time.perf_counter() - t0:.0f} s")
            print(report.header() + "\n")
            if report.scale_choice is not None:
                print(f"h chosen from the calibration images by the probe ({report.scale_choice.n_probe} probe "
                      f"images): {report.scale_choice.summary()}\n")
                print(report.scale_choice.table() + "\n")
            print(report.summary())
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
