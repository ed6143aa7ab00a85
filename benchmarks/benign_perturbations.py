"""What the calibrated detectors flag besides adversarial images: benign perturbations, and a PGD
that leaves a digit's background exactly as it was.

    python benchmarks/benign_perturbations.py [--data-dir MNIST_DIR] [--model lenet] [--activation relu]
        [--h auto|H[,H...]] [--images 200] [--calibration-images 150] [--eps-l2 2.0] [--out F.md]

Every detector is calibrated at 5% false positives on clean calibration images (the test images
after the evaluated ones), as `curvext evaluate` does. The evaluated images are then perturbed by
Gaussian noise, by noise below the 8-bit quantisation step (an image that rounds back to itself),
by a 2% contrast change, by PGD l2, and by the same PGD restricted to the pixels that are not 0
(the digit's strokes; the background stays exactly 0). The table gives the share each detector
flags. With --data-dir the zoo's MNIST models are used, otherwise the sklearn-digits ones.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from curvext.adversarial import attacks, baselines
from curvext.adversarial.squeezers import squeezer_for
from curvext.data import zoo
from curvext.detection import CurvatureDetector
from curvext.detection.metrics import calibrate_threshold

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluation_setup import add_evaluation_arguments, load_evaluation_images  # noqa: E402
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

SCORES = ("curvext", "max-softmax", "noise-consistency", "feature-squeezing")


def _scores(det, model, x, squeezer) -> dict:
    sign = 1.0 if det.orientation == "higher" else -1.0
    return {"curvext": sign * det.score(x).rho.double().numpy(),
            "max-softmax": baselines.max_softmax_score(model, x).double().numpy(),
            "noise-consistency": baselines.noise_consistency_score(model, x, seed=det.seed).double().numpy(),
            "feature-squeezing": baselines.feature_squeezing_score(model, x, squeezer=squeezer).score.double().numpy()}


def perturbations(model, x, y, eps: float) -> dict:
    """name -> (images, share of them the model misclassifies or None for benign ones)."""
    g = torch.Generator().manual_seed(0)
    out = {"clean": x,
           "Gaussian noise, sigma 0.01": (x + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1),
           "uniform noise below 1/255 (rounds back to the image)":
               (x + (torch.rand(x.shape, generator=g) - 0.5) / 255).clamp(0, 1),
           "contrast 0.98 x + 0.01": 0.98 * x + 0.01}
    adv = attacks.pgd(model, x, y, eps=eps, norm="l2")
    strokes = attacks.pgd(model, x, y, eps=eps, norm="l2", mask=x > 0)
    out[f"PGD l2 {eps:g}"] = (adv.adversarial[adv.success], adv.success_rate)
    out[f"PGD l2 {eps:g} on the strokes only (background untouched)"] = (
        strokes.adversarial[strokes.success], strokes.success_rate)
    return {k: v if isinstance(v, tuple) else (v, None) for k, v in out.items()}


def run_model(model, name, dataset, x, y, cal, scales, eps) -> list[str]:
    squeezer = squeezer_for(dataset, x.shape[1], x.shape[-1])[1]
    lines = []
    for h in scales:
        det = CurvatureDetector(model, num_directions=16, h=None if h == "auto" else h)
        if det.method == "autograd" and h != scales[0]:
            continue  # exact curvature has no scale: one table
        if det.method != "autograd" and h == "auto":
            det.choose_scale(cal)
        det.calibrate(cal)
        cal_scores = _scores(det, model, cal, squeezer)
        thresholds = {s: calibrate_threshold(cal_scores[s], 0.05) for s in SCORES}
        scale = "exact" if det.method == "autograd" else f"h = {det.h:g}" + (" (probe)" if h == "auto" else "")
        lines += [f"\n**{name}**, curvext {det.method} {scale}, perturbed expected {det.orientation}\n",
                  "| images | fooled | " + " | ".join(SCORES) + " |", "|---|---:|" + "---:|" * len(SCORES)]
        for what, (images, fooled) in perturbations(model, x, y, eps).items():
            s = _scores(det, model, images, squeezer)
            cells = [f"{100 * float(np.mean(s[k] >= thresholds[k])):.0f}%" for k in SCORES]
            rate = "" if fooled is None else f"{100 * fooled:.0f}%"
            lines.append(f"| {what} | {rate} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="MNIST IDX files (default: sklearn digits)")
    add_evaluation_arguments(p, images=200)
    p.add_argument("--activation", default="relu", help="relu, smooth or both")
    p.add_argument("--h", default="auto", help="auto (the probe's choice) and/or scales, comma separated")
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dataset, eps, test, cal = load_evaluation_images(args)
    scales = [v if v == "auto" else float(v) for v in args.h.split(",")]
    lines = [f"# Benign perturbations ({dataset}, {args.images} images, calibration on {cal.shape[0]} others, "
             f"5% FPR; torch {torch.__version__}, {malloc})"]
    for activation in ("relu", "smooth") if args.activation == "both" else (args.activation,):
        model = zoo.train(args.model, activation, dataset, args.data_dir).model
        with torch.no_grad():
            keep = model(test.images[: args.images]).argmax(1) == test.labels[: args.images]
        x, y = test.images[: args.images][keep], test.labels[: args.images][keep]
        lines += run_model(model, f"{args.model}-{activation}", dataset, x, y, cal, scales, eps)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
