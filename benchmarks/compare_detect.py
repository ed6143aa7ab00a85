"""Algorithm 2 throughput: curvext's CurvatureDetector against a straightforward reference.

    python benchmarks/compare_detect.py [--data-dir MNIST_DIR] [--images 64] [--repeat 3] [--out F.md]

The reference is Algorithm 2 as printed, per image and per competing class, with one autograd
Hessian-vector product per direction (same T, same classes, same directions). Both compute the
same exact statistic, so their rho must agree to 1e-4 relative; images/s are measured in the
same run. With --data-dir, the zoo's MNIST models are used (trained and cached on first use),
otherwise the sklearn-digits ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from curvext import data
from curvext.curvature.quadratic_forms import class_curvatures
from curvext.data import zoo
from curvext.detection import CurvatureDetector, DetectorConfig
from curvext.detection.deflated import deflated_class_curvatures
from curvext.detection.scoring import random_directions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402


def reference_rho(model, x, V, K):
    """rho by the literal algorithm: loops over images, classes and directions."""
    rhos = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].detach().clone().requires_grad_(True)
        logits = model(xb)[0]
        kh = int(logits.argmax())
        order = [int(c) for c in logits.detach().argsort(descending=True) if int(c) != kh][:K]
        total = 0.0
        for i in order:
            F = model(xb)[0]
            (g,) = torch.autograd.grad(F[i] - F[kh], xb, create_graph=True)
            gn = g.norm()
            n = (g / gn).detach()
            for v in V:
                v = v.reshape(xb.shape)
                u = v - (n * v).sum() * n
                (hu,) = torch.autograd.grad(g, xb, grad_outputs=u, retain_graph=True)
                total += float(((u * hu).sum() / gn).detach())
        rhos.append(total / ((len(order) + 1) * V.shape[0]))
    return torch.tensor(rhos, dtype=torch.float64)


def best_time(fn, repeat: int):
    """``(seconds, result)``: the fastest of ``repeat`` calls (this machine's timings vary by 25%)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def float64_difference(model, x, directions, classes) -> float:
    """Largest relative difference of rho between curvext and the literal reference, both in
    float64 on ``x``: separates a different statistic from float32 rounding."""
    import copy

    ours = float64_rho(model, x, directions, classes)
    V = CurvatureDetector(model, num_directions=directions, method="autograd").directions(x.shape[1:], x.device,
                                                                                         torch.float64)
    return relative_error(reference_rho(copy.deepcopy(model).double(), x.double(), V, classes), ours)


def float64_rho(model, x, directions, classes) -> torch.Tensor:
    """curvext's rho with the model and images in float64 (equal to the literal reference's to
    ~1e-15, column "same in float64"): the yardstick for both sides' float32 rounding."""
    import copy

    det = CurvatureDetector(copy.deepcopy(model).double(), num_directions=directions, classes=classes,
                            method="autograd")
    return det.score(x.double()).rho


def relative_error(values, truth) -> float:
    return float(((values.double() - truth).abs() / truth.abs().clamp_min(1e-300)).max())


def deflation_rows(label, model, x, seeds=6) -> list[str]:
    """Variance of per-class curvature sums (scaled to tr(G)/d) against operator applications per
    (image, class): plain Hutchinson with T directions vs deflated (Lanczos top-k + T' = 8). The
    last column is how many Hutchinson applications the same variance would take (variance is
    proportional to 1/T; extrapolated from T = 128) per application the estimator spent."""
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    own = torch.nn.functional.one_hot(pred, logits.shape[1]).bool()
    cls = logits.masked_fill(own, -float("inf")).topk(3, 1).indices
    rows, reference = [], None
    for T in (8, 32, 128):
        est = []
        for seed in range(seeds):
            V = random_directions(x.shape[1:], T, seed, x.device, x.dtype)
            est.append(class_curvatures(model, x, cls, pred, V, "autograd", 0.0).mean(dim=2))
        var = float(torch.stack(est).var(dim=0).mean())
        reference = T * var
        rows.append((f"Hutchinson, T={T}", T, var))
    for k in (4, 8):
        est, apps = [], []
        for seed in range(seeds):
            config = DetectorConfig(num_directions=8, method="autograd", estimator="deflated", deflation_k=k,
                                    seed=seed)
            V = random_directions(x.shape[1:], 8, seed, x.device, x.dtype)
            sums, steps = deflated_class_curvatures(model, x, cls, pred, V, config)
            est.append(sums / 8)
            apps.append(steps.double().mean())
        variance = float(torch.stack(est).var(dim=0).mean())
        rows.append((f"deflated, k={k}, T'=8", float(torch.stack(apps).mean()), variance))
    return [f"| {label} | {name} | {apps:.0f} | {var:.2e} | {reference / var / apps:.1f}x |"
            for name, apps, var in rows]


def deflation_table(x, dataset, data_dir, x_digits) -> str:
    header = ["| model (16 images x 3 classes, 6 seeds) | estimator | applications per (image, class) | "
              "variance of tr(G)/d | Hutchinson applications for equal variance, per application |",
              "|---|---|---:|---:|---:|"]
    rows = []
    cases = [("lenet", dataset, data_dir, x)]
    if dataset == "mnist":
        cases += [("nin", dataset, data_dir, x), ("lenet", "digits", None, x_digits)]
    for name, ds, dd, xs in cases:
        rows += deflation_rows(f"{name}-smooth {ds}", zoo.train(name, "smooth", ds, dd).model, xs)
    return "\n".join(header + rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--out", default=None)
    p.add_argument("--repeat", type=int, default=3, help="time each side this many times, keep the fastest")
    p.add_argument("--compile", action="store_true",
                   help="also time CurvatureDetector(compile=True) on the smooth models (compilation: 20-40 s "
                        "per model, reported, not counted in img/s)")
    add_malloc_option(p)
    args = p.parse_args(argv)
    malloc = configure_malloc(args)
    dataset = "mnist" if args.data_dir else "digits"
    if args.data_dir:
        test = data.load_mnist(args.data_dir, "test", limit=args.images)
    else:
        test = data.load_digits("test").subset(args.images)
    x = test.images
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {malloc}; {dataset}, {x.shape[0]} images, T={args.directions}, "
             f"K={args.classes}; best of {args.repeat} runs per side",
             "", "| model | method | curvext img/s | reference img/s | speed-up | max rel. diff of rho "
                 "(float32) | float32 rho's max rel. error against float64: curvext / reference | "
                 "same in float64, 4 images |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("lenet", "nin"):
        for activation in ("smooth", "relu"):
            model = zoo.train(name, activation, dataset, args.data_dir).model
            det = CurvatureDetector(model, num_directions=args.directions, classes=args.classes, method="autograd")
            V = det.directions(x.shape[1:], x.device, x.dtype)
            det.score(x[:4])  # warm-up
            t_ours, ours = best_time(lambda: det.score(x).rho.double(), args.repeat)
            if activation == "smooth":
                t_ref, ref = best_time(lambda: reference_rho(model, x, V, args.classes), args.repeat)
                rel = float(((ours - ref).abs() / ref.abs().clamp_min(1e-12)).max())
                rel64 = float64_difference(model, x[:4], args.directions, args.classes)
                truth = float64_rho(model, x, args.directions, args.classes)
                lines.append(f"| {name}-{activation} | autograd | {x.shape[0] / t_ours:.1f} | "
                             f"{x.shape[0] / t_ref:.1f} | {t_ref / t_ours:.1f}x | {rel:.1e} | "
                             f"{relative_error(ours, truth):.1e} / {relative_error(ref, truth):.1e} | {rel64:.1e} |")
                if args.compile:
                    det_c = CurvatureDetector(model, num_directions=args.directions, classes=args.classes,
                                              method="autograd", compile=True)
                    t0 = time.perf_counter()
                    det_c.score(x[:4])  # compiles once for groups of det_c.batch_size images
                    t_compile = time.perf_counter() - t0
                    t_c, compiled = best_time(lambda: det_c.score(x).rho.double(), args.repeat)
                    rel_c = float(((compiled - ref).abs() / ref.abs().clamp_min(1e-12)).max())
                    lines.append(f"| {name}-{activation} | autograd, compile=True (compilation {t_compile:.0f} s, "
                                 f"not counted) | {x.shape[0] / t_c:.1f} | {x.shape[0] / t_ref:.1f} | "
                                 f"{t_ref / t_c:.1f}x | {rel_c:.1e} | {relative_error(compiled, truth):.1e} / "
                                 f"{relative_error(ref, truth):.1e} | |")
            det_fd = CurvatureDetector(model, num_directions=args.directions, classes=args.classes, method="fd2")
            det_fd.score(x[:4])
            t_fd, _ = best_time(lambda: det_fd.score(x), args.repeat)
            lines.append(f"| {name}-{activation} | fd2 (h={det_fd.h}) | {x.shape[0] / t_fd:.1f} | | | | | |")
    lines += ["", deflation_table(x[:16], dataset, args.data_dir, data.load_digits("test").subset(16).images)]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
