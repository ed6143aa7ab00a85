"""``curvext detect`` throughput over an image folder, against the floor of the same work.

    python benchmarks/bench_sweep.py [--device cpu] [--images 8] [--size 224] [--workers 0,2]
        [--batch-sizes 4,8] [--out F.md]

The model is torchvision's ResNet-50 with random weights (a ReLU network: fd2 at a scale h; the
throughput does not depend on the weights), K = 10 competing classes, T = 16 directions; the
folder holds ``--images`` random JPEG files of 256x256 px, resized and centre-cropped to
``--size`` as ImageNet's convention does. Each row is a whole ``detect_dataset`` run (decoding,
scoring, Parquet parts, summary) into a fresh output folder.

The floor is the time of the forward and backward passes the fd2 detector needs per image,
measured in the same run and batched as the detector batches them: 2 T + 2 forward passes (the
logits, the centre and x +- h v for every direction) and 3 K forward-and-backward passes (each
competing class's gradient at x, and at x +- h n for its Hessian-normal product): 34 and 30 here. ``floor / actual``
says how much of the sweep's time is the network itself.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from curvext.detection import DetectorConfig
from curvext.detection.calibration_file import Calibration, write_calibration
from curvext.sweep import detect_dataset
from curvext.utils.cache_keys import model_digest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402


def make_folder(root: Path, n: int) -> Path:
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def floor_seconds_per_image(model, batch: int, size: int, T: int, K: int, device, repeat: int = 3) -> float:
    """Best-of-``repeat`` time per image of the passes the fd2 detector runs for ``batch`` images,
    in the batches it runs them in: one forward pass of 2 T rows per image (x +- h v_j), two of one
    row (the logits, the centre), one forward and input-gradient pass of K rows (the class
    gradients) and one of 2 K rows (gradients at x +- h n)."""
    def rows(n):
        return torch.rand(n, 3, size, size, device=device)

    def forward(n):
        x = rows(n)

        def run():
            with torch.no_grad():
                model(x)
        return run

    def backward(n):
        x = rows(n)

        def run():
            z = x.detach().requires_grad_(True)
            model(z)[:, 0].sum().backward()
        return run

    def best(fn):
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) / batch

    return (best(forward(2 * T * batch)) + 2 * best(forward(batch)) + best(backward(K * batch))
            + best(backward(2 * K * batch)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--workers", default="0,2")
    p.add_argument("--batch-sizes", default="4,8")
    p.add_argument("--out", default=None)
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(args.device)
    for param in model.parameters():
        param.requires_grad_(False)
    T, K = args.directions, args.classes
    forward_rows, backward_rows = 2 * T + 2, 3 * K
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, {malloc}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, device {args.device}; ResNet-50 (random weights), {args.images} "
             f"JPEG files 256x256 -> {args.size}x{args.size}, fd2, K={K}, T={T}; per image the method needs "
             f"{forward_rows} forward and {backward_rows} forward+backward passes", "",
             "| workers | batch | img/s (detect) | img/s (floor: the passes alone) | floor / actual |",
             "|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        folder = make_folder(tmp / "images", args.images)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            config = DetectorConfig(num_directions=T, classes=K, method="fd2", h=0.05, orientation="higher",
                                    batch_size=batch)
            cal = tmp / f"cal-{batch}.json"
            write_calibration(cal, Calibration(config, 0.0, "higher", "max", 0.05, model_digest(model),
                                               {"image": {"image_size": args.size, "resize": 256, "channels": 3},
                                                "normalize": None}))
            floor = floor_seconds_per_image(model, batch, args.size, T, K, args.device)
            for workers in (int(w) for w in args.workers.split(",")):
                t0 = time.perf_counter()
                detect_dataset(model, folder, cal, tmp / f"out-{batch}-{workers}", device=args.device,
                               workers=workers, chunk_size=args.images)
                rate = args.images / (time.perf_counter() - t0)
                lines.append(f"| {workers} | {batch} | {rate:.2f} | {1 / floor:.2f} | {rate * floor:.2f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
