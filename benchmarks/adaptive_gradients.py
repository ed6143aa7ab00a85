"""Can a gradient attacker follow curvext's rho? A check for gradient masking of the adaptive PGD.

    python benchmarks/adaptive_gradients.py [--data-dir MNIST_DIR] [--model lenet] [--activation relu]
        [--h auto|H] [--attacker-h detector,H[,H...]] [--images 64] [--eps-l2 2.0] [--out F.md]

The detector (fd2, T = 16, its scale h chosen by the probe from the calibration images, the test
images after the evaluated ones) scores PGD l2 adversarial images of the evaluated ones. With
s = oriented rho (higher = flagged), the attacker takes the gradient g of its own differentiable s
(:func:`curvext.curvature.differentiable.differentiable_curvature` at its scale ``--attacker-h``,
fresh random directions) and steps x - t g/|g|. The table gives the median change of the
*detector's* s along -g and +g, of the attacker's own s along -g (same directions), and along a
random direction of the same length; and the median cosine between the gradients of two direction
draws (1: the EOT noise is small). A gradient that the attacker can follow lowers both its own and
the detector's s along -g, more than a random step, for steps of the size PGD takes
(2.5 eps / steps: 0.125 for eps 2 and 40 steps).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from curvext.adversarial import attacks
from curvext.curvature.differentiable import differentiable_curvature
from curvext.data import zoo
from curvext.detection import CurvatureDetector
from curvext.detection.scoring import random_directions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluation_setup import add_evaluation_arguments, load_evaluation_images  # noqa: E402
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

STEPS = (0.01, 0.05, 0.2)


def _unit(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (g.dim() - 1))


def _median(v: torch.Tensor) -> str:
    return f"{v.double().median().item():+.3f}"


def gradient_table(model, det: CurvatureDetector, adv: torch.Tensor, attacker_scales, seed: int = 4242) -> list[str]:
    """Markdown rows: one per attacker scale and step length t (module docstring)."""
    sign = 1.0 if det.orientation == "higher" else -1.0

    def s_detector(z):
        return sign * det.score(z.clamp(0, 1)).rho.double()

    def s_attacker(z, h, V, grad=False):
        z = z.detach().requires_grad_(grad)
        s = sign * differentiable_curvature(model, z, V, "fd2", h, det.classes, piecewise_linear=True).rho
        return (s.detach(), torch.autograd.grad(s.sum(), z)[0]) if grad else s.detach()

    s0 = s_detector(adv)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for h in attacker_scales:
        draws = [random_directions(adv.shape[1:], det.num_directions, seed + k, adv.device, adv.dtype) for k in (0, 1)]
        own0, g = s_attacker(adv, h, draws[0], grad=True)
        g2 = s_attacker(adv, h, draws[1], grad=True)[1]
        cosine = torch.nn.functional.cosine_similarity(g.flatten(1), g2.flatten(1)).median().item()
        g = _unit(g)
        for t in STEPS:
            r = _unit(torch.randn(adv.shape, generator=gen, dtype=adv.dtype))
            down, up = (adv - t * g).clamp(0, 1), (adv + t * g).clamp(0, 1)
            own = " (the detector's)" if h == det.h else ""
            rows.append(f"| {h:g}{own} | {cosine:.2f} | {t:g} | "
                        f"{_median(s_detector(down) - s0)} | {_median(s_detector(up) - s0)} | "
                        f"{_median(s_attacker(down, h, draws[0]) - own0)} | {_median(s_detector(adv + t * r) - s0)} |")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"),
                   help="MNIST IDX files (default: $MNIST_DIR; without either, sklearn digits)")
    add_evaluation_arguments(p, images=64)
    p.add_argument("--activation", default="relu")
    p.add_argument("--h", default="auto", help="the detector's scale: auto (the probe's choice) or a number")
    p.add_argument("--attacker-h", default="detector,0.01,0.05",
                   help="the attacker's scales, comma separated ('detector': the detector's h)")
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dataset, eps, test, cal = load_evaluation_images(args)
    model = zoo.train(args.model, args.activation, dataset, args.data_dir).model
    det = CurvatureDetector(model, num_directions=16, method="fd2", h=None if args.h == "auto" else float(args.h))
    if args.h == "auto":
        det.choose_scale(cal)
    det.calibrate(cal)
    x, y = test.images[: args.images], test.labels[: args.images]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    res = attacks.pgd(model, x[keep], y[keep], eps=eps, norm="l2")
    adv = res.adversarial[res.success]
    scales = [det.h if v.strip() == "detector" else float(v) for v in args.attacker_h.split(",")]
    lines = [f"# Gradients of rho for the attacker ({args.model}-{args.activation}, {dataset}; "
             f"torch {torch.__version__}, {malloc})", "",
             f"Detector: fd2, h = {det.h:g}, perturbed expected {det.orientation}; {adv.shape[0]} PGD l2 "
             f"eps {eps:g} adversarial images. Median change of s (higher = flagged) after a step of "
             "length t:", "",
             "| attacker h | cosine of two draws | t | detector, along -g | detector, along +g | "
             "attacker's own s, along -g | detector, random direction |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    emit(lines + gradient_table(model, det, adv, scales), args.out)


if __name__ == "__main__":
    main()
