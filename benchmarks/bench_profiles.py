"""Principal curvatures (k at each end) for B MNIST-sized images: curvext against a per-image loop
of scipy.sparse.linalg.eigsh on the same curvature operator, at equal accuracy.

    python benchmarks/bench_profiles.py [--images 64] [--k 20] [--tol 1e-4] [--mnist DIR] [--dtype float32|float64]

Model: the zoo's smooth LeNet for MNIST with random weights (training is not what is timed).
Images: the first B MNIST test images read straight from the IDX files when --mnist is given
(default $MNIST_DIR, else data/mnist, if present), else uniform noise. Points: DeepFool boundary points,
found once and shared by both sides; pair (label across, original label).

curvext: one batched Lanczos ("BE", 2k values) over all B images, on curvext.curvature.operators.
CurvatureOperator (autograd products through one cached graph for the batch).
scipy: for each image its own one-image CurvatureOperator, wrapped as a LinearOperator, eigsh
with which="BE", k=2k, the same tolerance and a tangent start vector. Accuracy: the largest
difference between the two sets of values relative to each image's largest |curvature|.
Both sides apply the model in --dtype (default float32, the models' own precision; ARPACK
keeps its basis in float64 either way).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch

from curvext import data
from curvext.curvature.operators import CurvatureOperator
from curvext.data import zoo
from curvext.geometry.profiles import curvature_points, principal_curvatures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

DEFAULT_MNIST = Path(os.environ.get("MNIST_DIR", "data/mnist"))  # a folder of the four MNIST IDX files


def setup(images=64, mnist=None, dtype=torch.float32, seed=0, device="cpu"):
    torch.manual_seed(seed)
    model = zoo.build("lenet", "smooth", "mnist").to(dtype=dtype, device=device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    folder = Path(mnist) if mnist else DEFAULT_MNIST
    if folder.is_dir():
        x = data.load_mnist(folder, "test", limit=images).images.to(dtype)
    else:
        x = torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    points, cls, base = curvature_points(model, x.to(device), at="boundary")
    return model, points, cls, base


def image_source(mnist=None) -> str:
    folder = Path(mnist) if mnist else DEFAULT_MNIST
    return "MNIST test images" if folder.is_dir() else "uniform-noise images (no MNIST folder found)"


def run_curvext(model, points, cls, base, k, tol, seed=0):
    prof = principal_curvatures(model, points, k=k, at="input", pair=(cls, base), tol=tol, seed=seed)
    return prof.values, prof.steps


def run_scipy(model, points, cls, base, k, tol, seed=0):
    values, matvecs = [], []
    g = torch.Generator().manual_seed(seed)
    device = points.device
    zero = torch.zeros(1, dtype=torch.long, device=device)
    for s in range(points.shape[0]):
        G = CurvatureOperator(model, points[s:s + 1], cls[s:s + 1], base[s:s + 1])
        shape, n = tuple(points.shape[1:]), points[0].numel()
        count = [0]

        def matvec(v, G=G, shape=shape, count=count):
            count[0] += 1
            V = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape((1,) + shape))
            return G(V.to(device=device, dtype=points.dtype), zero).reshape(-1).double().cpu().numpy()

        op = sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = G.tangent(torch.randn((1,) + shape, generator=g, dtype=torch.float64).to(device=device,
                                                                                    dtype=points.dtype), zero)
        w = sla.eigsh(op, k=2 * k, which="BE", tol=tol, v0=v0.reshape(-1).double().cpu().numpy(),
                      return_eigenvectors=False)
        values.append(np.sort(w))
        matvecs.append(count[0])
    return torch.from_numpy(np.stack(values)), torch.tensor(matvecs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--mnist", default=None, help="folder with the MNIST IDX files")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--repeat", type=int, default=1, help="timed runs after the warm-up (median reported)")
    p.add_argument("--device", default="cpu", help="where the model and both solvers' products run")
    p.add_argument("--out", default=None, help="also write the table here")
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dtype = getattr(torch, args.dtype)
    problem = setup(args.images, args.mnist, dtype, device=args.device)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    # Warm-up: the first pass at each batch size builds oneDNN primitives (~1 s for curvext, whose
    # graph shrinks through several batch sizes as samples converge; once per size in a sweep).
    run_curvext(*problem, args.k, args.tol)
    run_scipy(*(t[:2] if isinstance(t, torch.Tensor) else t for t in problem), args.k, args.tol)
    t_ours, t_ref = [], []
    for _ in range(args.repeat):
        (ours, steps), t = timed(lambda: run_curvext(*problem, args.k, args.tol))
        t_ours.append(t)
        (ref, matvecs), t = timed(lambda: run_scipy(*problem, args.k, args.tol))
        t_ref.append(t)
    t_ours, t_ref = float(np.median(t_ours)), float(np.median(t_ref))
    scale = ref.abs().amax(1, keepdim=True)
    err = float(((ours.double().cpu() - ref) / scale).abs().max())
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    emit([f"B={args.images} {image_source(args.mnist)}, MNIST LeNet (smooth, random init), k={args.k} per end, "
          f"tol={args.tol}, {args.dtype}, {args.device} ({where}), {malloc}, median of {args.repeat} warm run(s)",
          "| solver | s | operator applications per image (mean) |", "|---|---:|---:|",
          f"| curvext batched Lanczos | {t_ours:.2f} | {float(steps.double().mean()):.0f} |",
          f"| scipy eigsh per image | {t_ref:.2f} | {float(matvecs.double().mean()):.0f} |",
          f"speed-up {t_ref / t_ours:.1f}x; max |difference| / max|curvature| = {err:.1e}"], args.out)


if __name__ == "__main__":
    main()
