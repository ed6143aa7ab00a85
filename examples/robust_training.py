"""Robust training with a curvature penalty, measured with curvext's own tools.

    python examples/robust_training.py                       # digits (ships with scikit-learn)
    python examples/robust_training.py --dataset mnist --data-dir MNIST_DIR --epochs 4
    make robust-example ARGS="--dataset mnist --data-dir MNIST_DIR"

Trains the zoo's LeNet (ReLU and smooth) with and without ``lam * curvature_penalty(model, x, y)``
(CURE's gradient difference at step h), with the same seeds, data order, optimizer and epochs
as the zoo's own training (Adam, cosine schedule, batch 64), then measures each model on the
first ``--images`` test images:

* clean accuracy (the whole test split);
* DeepFool (minimal l2, unclamped): the median norm of the perturbations that reach the boundary;
* principal curvatures at those boundary points (``curvext.principal_curvatures``, k = 1, the
  most negative and the most positive; docs/method.md §1 sign convention), exact for smooth
  nets and by finite differences at the detector's default scale for ReLU nets, and by finite
  differences at the penalty's own step h for both; and ``||grad F||`` there, the scale the
  curvature operator divides by;
* PGD accuracy (40 steps, random start) at l-inf 0.1 and 0.2 and at l2 1.0;
* training seconds per epoch.

It prints a Markdown table and writes it to ``--out`` when given.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from curvext.adversarial.attacks import pgd
from curvext.data import datasets, zoo
from curvext.detection.config import DEFAULT_SCALE
from curvext.geometry.deepfool import deepfool
from curvext.geometry.profiles import principal_curvatures
from curvext.training import curvature_penalty

ATTACKS = (("linf", 0.1), ("linf", 0.2), ("l2", 1.0))


def load(dataset: str, data_dir, train_limit, seed: int):
    if dataset == "digits":
        return datasets.load_digits("train", seed=seed), datasets.load_digits("test", seed=seed)
    if data_dir is None:
        raise SystemExit("--dataset mnist needs --data-dir (a folder of the four MNIST IDX files)")
    return (datasets.load_mnist(data_dir, "train", limit=train_limit), datasets.load_mnist(data_dir, "test"))


def train(activation, dataset, train_ds, *, epochs, lam, h, kind, seed, lr=3e-3, batch_size=64, log=None):
    """The zoo's training loop (curvext.data.zoo._fit) with the penalty added; returns the model
    in eval mode and the seconds per epoch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = zoo.build("lenet", activation, dataset)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    n = len(train_ds)
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = penalties = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x, y = train_ds.images[idx], train_ds.labels[idx]
            loss = F.cross_entropy(model(x), y)
            if lam > 0:
                penalty = curvature_penalty(model, x, y, kind=kind, h=h)
                loss = loss + lam * penalty
                penalties += float(penalty.detach()) * idx.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        sched.step()
        if log:
            log(f"  {activation} lam={lam:g} epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, "
                f"penalty {penalties / n:.4f}")
    seconds = (time.perf_counter() - start) / epochs
    opt.zero_grad(set_to_none=True)
    return model.eval(), seconds


def median(values: torch.Tensor) -> float:
    v = values[torch.isfinite(values)].double()
    return float(torch.quantile(v, 0.5)) if v.numel() else math.nan


def curvatures(model, points, pair, method, h, seed) -> torch.Tensor:
    """``(n, 3)``: the most negative and most positive principal curvature at each point, and
    ``||grad F||`` there. Where
    Lanczos fails on a finite-difference operator (it can return exactly zero for a Lanczos
    vector, whose breakdown the solver then misses), the batch is split in halves, down to
    single points, which are left NaN."""
    try:
        prof = principal_curvatures(model, points, k=1, at="input", pair=pair, method=method, h=h, seed=seed)
        return torch.cat([prof.values, prof.grad_norm[:, None]], dim=1)
    except FloatingPointError:
        if points.shape[0] == 1:
            return torch.full((1, 3), math.nan, dtype=points.dtype)
        m = points.shape[0] // 2
        return torch.cat([curvatures(model, points[:m], (pair[0][:m], pair[1][:m]), method, h, seed),
                          curvatures(model, points[m:], (pair[0][m:], pair[1][m:]), method, h, seed)])


def measure(model, activation, test_ds, images: int, h: float, seed: int) -> dict:
    """The table's numbers for one trained model."""
    x, y = test_ds.images[:images], test_ds.labels[:images]
    out = {"accuracy": zoo.evaluate_accuracy(model, test_ds.images, test_ds.labels)}
    df = deepfool(model, x, num_classes=10)
    out["deepfool"] = median(torch.where(df.converged, df.norms, torch.nan))
    points = df.perturbed[df.converged]  # boundary points (just across); pair: the label across vs the original
    pair = (df.labels[df.converged], df.original[df.converged])
    exact = ("autograd", None) if activation == "smooth" else ("fd", DEFAULT_SCALE)
    out["unmeasured"] = 0
    for key, (method, scale) in (("exact", exact), ("at_h", ("fd", h))):
        values = curvatures(model, points, pair, method, scale, seed)
        out[f"kmin_{key}"], out[f"kmax_{key}"] = median(values[:, 0]), median(values[:, 1])
        out[f"kabs_{key}"] = median(values[:, :2].abs().amax(dim=1))
        out["grad_norm"] = median(values[:, 2])
        out["unmeasured"] += int(torch.isnan(values[:, 0]).sum())
    for norm, eps in ATTACKS:
        adv = pgd(model, x, y, eps=eps, norm=norm, steps=40, seed=seed)
        out[f"pgd_{norm}_{eps:g}"] = float((adv.adv_labels == y).float().mean())
    return out


def table(rows: list[tuple[str, float, dict, float]], h: float, images: int) -> list[str]:
    head = ("| model | lam | clean acc | median DeepFool l2 | median max abs kappa (exact / fd 0.05) | "
            f"median kappa_min, kappa_max | median max abs kappa (fd h={h:g}) | median grad F norm | "
            + " | ".join(f"PGD {n} {e:g} acc" for n, e in ATTACKS) + " | s/epoch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, lam, m, seconds in rows:
        lines.append(
            f"| {name} | {lam:g} | {m['accuracy']:.3f} | {m['deepfool']:.3f} | {m['kabs_exact']:.3g} | "
            f"{m['kmin_exact']:.3g}, {m['kmax_exact']:.3g} | {m['kabs_at_h']:.3g} | {m['grad_norm']:.3g} | "
            + " | ".join(f"{m[f'pgd_{n}_{e:g}']:.3f}" for n, e in ATTACKS) + f" | {seconds:.1f} |")
    lines.append("")
    unmeasured = sum(m["unmeasured"] for _, _, m, _ in rows)
    lines.append(f"Points left out of the curvature medians (a Lanczos failure on them alone): {unmeasured}.")
    lines.append(f"DeepFool, curvature and PGD on the first {images} test images; curvature at the DeepFool "
                 "boundary points (principal curvatures of F = f_across - f_original, docs/method.md §1), exact "
                 f"for smooth nets and finite differences at h = {DEFAULT_SCALE:g} for ReLU nets, then at the "
                 f"penalty's step h = {h:g} for both.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    p.add_argument("--data-dir", default=None, help="folder of the four MNIST IDX files (--dataset mnist)")
    p.add_argument("--activation", default="relu,smooth", help="relu, smooth or both (comma-separated)")
    p.add_argument("--epochs", type=int, default=None, help="default: 30 (digits) or 4 (mnist)")
    p.add_argument("--train-limit", type=int, default=20000, help="mnist: first N training images (zoo default)")
    p.add_argument("--lam", default="0,4", help="penalty weights, comma-separated (0: no penalty)")
    p.add_argument("--h", type=float, default=None, help="the penalty's step (default 0.5 digits, 1.0 mnist)")
    p.add_argument("--kind", choices=("cure", "eig"), default="cure")
    p.add_argument("--images", type=int, default=None, help="test images attacked (default 450 digits, 500 mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)
    digits = args.dataset == "digits"
    epochs = args.epochs or (30 if digits else 4)
    h = args.h or (0.5 if digits else 1.0)
    images = args.images or (450 if digits else 500)
    lams = [float(v) for v in args.lam.split(",")]
    activations = [a.strip() for a in args.activation.split(",")]
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    train_ds, test_ds = load(args.dataset, args.data_dir, args.train_limit, args.seed)
    rows = []
    for activation in activations:
        for lam in lams:
            model, seconds = train(activation, args.dataset, train_ds, epochs=epochs, lam=lam, h=h, kind=args.kind,
                                   seed=args.seed, log=log)
            rows.append((f"LeNet {activation}", lam, measure(model, activation, test_ds, images, h, args.seed),
                         seconds))
    lines = [f"{args.dataset}, {epochs} epochs, {len(train_ds)} training images, penalty {args.kind} h={h:g}, "
             f"seed {args.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             *table(rows, h, images)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
