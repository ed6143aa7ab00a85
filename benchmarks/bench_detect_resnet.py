"""Algorithm 2 throughput on torchvision ResNet-50 (the issue's ImageNet-scale case).

    python benchmarks/bench_detect_resnet.py [--device cuda] [--images 64] [--size 224]
        [--classes 10] [--directions 16] [--batch-size 16] [--weights FILE.pth] [--out F.md]

Images per second of ``CurvatureDetector.score`` at 224x224 with the K = 10 highest-scoring
competing classes. ResNet-50 is a ReLU network, so its exact input Hessian is zero almost
everywhere and the detector measures curvature at a scale h (``fd2``: forward passes only;
``fd``: also gradients). Weights: random (the throughput does not depend on them) unless
``--weights`` names a state dict; nothing is downloaded. Inputs are uniform random images in
[0, 1]; ``--size`` and ``--images`` make a quick CPU smoke run possible.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torchvision

from curvext.detection.detector import CurvatureDetector

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402


def build_model(weights: str | None, device: str) -> torch.nn.Module:
    model = torchvision.models.resnet50(weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def images_per_second(detector: CurvatureDetector, x: torch.Tensor, device: str) -> float:
    detector.score(x[: detector.batch_size])  # warm-up (cuDNN autotuning, allocator)
    synchronize(device)
    t0 = time.perf_counter()
    detector.score(x)
    synchronize(device)
    return x.shape[0] / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--methods", default="fd2,fd")
    p.add_argument("--weights", default=None)
    p.add_argument("--out", default=None)
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    model = build_model(args.weights, args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, args.size, args.size, generator=g).to(args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores, {malloc}"
    lines = [f"machine: {platform.machine()}, {where}, torch {torch.__version__}; ResNet-50 "
             f"({'weights ' + args.weights if args.weights else 'random weights'}), {args.images} images "
             f"{args.size}x{args.size}, K={args.classes}, T={args.directions}, batch {args.batch_size}",
             "", "| method | img/s |", "|---|---:|"]
    for method in args.methods.split(","):
        det = CurvatureDetector(model, num_directions=args.directions, classes=args.classes, method=method,
                                batch_size=args.batch_size)
        lines.append(f"| {method} (h={det.h}) | {images_per_second(det, x, args.device):.1f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
