"""Curvature benchmarks: principal curvatures vs a per-image eigsh loop; HVP methods side by side.

    python benchmarks/compare_curvature.py [--data-dir ../shared/data/mnist] [--images 64] [--out F.md]

1. Principal curvatures (k = 20 at each end) of B MNIST-sized images (digits upsampled when no
   MNIST folder is given) on the zoo's smooth LeNet, at the images themselves: curvext's batched
   Lanczos on the curvature operator against a loop of scipy.sparse.linalg.eigsh over the same
   operator one image at a time (which="BE", same tolerance), with the agreement of the values.
2. One Hessian-vector product per image for the whole batch by each method, as a multiple of one
   forward pass: double backward on a cached graph (curvext "autograd"), forward-over-reverse
   (torch.func.jvp of the gradient), central differences of gradients ("fd"), and the fd2
   quadratic form (forward passes only).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy
import scipy.sparse.linalg
import torch

from curvext import data, zoo
from curvext.geometry.profiles import principal_curvatures
from curvext.hvp import InputHessian
from curvext.operators import CurvatureOperator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import emit  # noqa: E402


def timed(fn, repeat=3):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def load(args):
    if args.data_dir:
        ds = data.load_mnist(args.data_dir, "test", limit=args.images)
        return ds.images, zoo.train("lenet", "smooth", "mnist", args.data_dir).model
    ds = data.load_digits("test").subset(args.images)
    return ds.images, zoo.train("lenet", "smooth", "digits").model


def eigsh_loop(model, x, k, tol):
    """Per-image loop: the same operator, one image at a time, scipy's ARPACK."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        with torch.no_grad():
            top = model(xb).topk(2, 1).indices
        G = CurvatureOperator(model, xb, top[:, 1], top[:, 0])
        d = xb.numel()
        idx = torch.zeros(1, dtype=torch.long)

        def mv(v, G=G, idx=idx, shape=xb.shape):
            V = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(shape)
            return G(V, idx).reshape(-1).double().numpy()

        lin = scipy.sparse.linalg.LinearOperator((d, d), matvec=mv, dtype=np.float64)
        v0 = G.tangent(torch.randn(xb.shape), idx).reshape(-1).double().numpy()
        out.append(np.sort(scipy.sparse.linalg.eigsh(lin, k=2 * k, which="BE", tol=tol, v0=v0)[0]))
    return np.stack(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--loop-images", type=int, default=8, help="images timed in the eigsh loop (extrapolated)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    x, model = load(args)
    B = x.shape[0]
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, scipy "
             f"{scipy.__version__}; {B} images {tuple(x.shape[1:])}, smooth LeNet", ""]

    t0 = time.perf_counter()
    prof = principal_curvatures(model, x, k=args.k, at="input", tol=args.tol)
    t_ours = time.perf_counter() - t0
    n = args.loop_images
    t0 = time.perf_counter()
    ref = eigsh_loop(model, x[:n], args.k, args.tol)
    t_loop = (time.perf_counter() - t0) * B / n
    scale = np.abs(ref).max(axis=1, keepdims=True)
    err = float((np.abs(prof.values[:n].double().numpy() - ref) / scale).max())
    lines += ["| case | curvext (s) | eigsh loop (s, extrapolated) | speed-up | max rel. difference |",
              "|---|---:|---:|---:|---:|",
              f"| principal curvatures k={args.k} per end, {B} images, tol={args.tol:g} | {t_ours:.2f} | "
              f"{t_loop:.2f} | {t_loop / t_ours:.1f}x | {err:.1e} |", ""]

    with torch.no_grad():
        top = model(x).topk(2, 1).indices
    a, c = top[:, 1], top[:, 0]
    idx = torch.arange(B)
    V = torch.randn(x.shape)
    t_fwd = timed(lambda: model(x))
    H_auto = InputHessian(model, x, a, c, method="autograd")
    H_fd = InputHessian(model, x, a, c, method="fd", h=1e-2)
    H_fd2 = InputHessian(model, x, a, c, method="fd2", h=1e-2)

    def grad_fn(z):
        z = z.requires_grad_(True)
        logits = model(z)
        F = logits[idx, a] - logits[idx, c]
        return torch.autograd.grad(F.sum(), z, create_graph=True)[0]

    def forward_over_reverse():
        return torch.func.jvp(lambda z: torch.func.grad(
            lambda y: (lambda lg: (lg[idx, a] - lg[idx, c]).sum())(model(y)))(z), (x,), (V,))[1]

    rows = [("double backward, cached graph (autograd)", timed(lambda: H_auto(V, idx))),
            ("double backward, graph rebuilt each time", timed(lambda: _rebuilt(grad_fn, x, V))),
            ("forward-over-reverse (torch.func)", timed(forward_over_reverse)),
            ("central difference of gradients (fd)", timed(lambda: H_fd(V, idx))),
            ("quadratic form from forwards only (fd2)", timed(lambda: H_fd2.quadratic_form(V, idx)))]
    lines += [f"| HVP method (B={B}, one product per image) | time (ms) | x one forward |", "|---|---:|---:|"]
    lines += [f"| {name} | {1e3 * t:.1f} | {t / t_fwd:.1f} |" for name, t in rows]
    lines.append(f"| one forward pass | {1e3 * t_fwd:.1f} | 1.0 |")
    emit(lines, args.out)


def _rebuilt(grad_fn, x, V):
    z = x.clone().requires_grad_(True)
    g = grad_fn(z)
    return torch.autograd.grad(g, z, V)[0]


if __name__ == "__main__":
    main()
