"""Compiled-core speed as ratios against references measured in the same run.

    python benchmarks/compare_core.py [--device cpu|cuda] [--quick] [--out FILE.md]

Rows: tridiag_eigh (B=4096, m=64, fp32) against batched torch.linalg.eigh / eigvalsh and a loop
of scipy.linalg.eigh_tridiagonal; lanczos (B=64, n=3072, k=10) against linear_operator's
lanczos_tridiag + torch.linalg.eigh at equal steps and a per-sample loop of
scipy.sparse.linalg.eigsh at equal tolerance; the share of Lanczos / power-iteration time spent
outside the operator (bookkeeping) relative to one operator application.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import scipy
import scipy.linalg
import scipy.sparse.linalg
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from problems import cnn_input_hvp, diag_plus_low_rank  # noqa: E402
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

import curvext  # noqa: E402


def elapsed(fn, device="cpu"):
    """Wall time of one call of ``fn``, with the GPU synchronised before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_time(fn, repeat=3, device="cpu"):
    fn()
    return min(elapsed(fn, device) for _ in range(repeat))


def tridiag_rows(device, quick):
    B, m = (512, 64) if quick else (4096, 64)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, m, generator=g).to(device)
    b = torch.randn(B, m - 1, generator=g).to(device)
    T = torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)
    t = {
        "eigh": best_time(lambda: torch.linalg.eigh(T), device=device),
        "eigvalsh": best_time(lambda: torch.linalg.eigvalsh(T), device=device),
        "ours_vectors": best_time(lambda: curvext.tridiag_eigh(a, b, vectors=True), device=device),
        "ours_first": best_time(lambda: curvext.tridiag_eigh(a, b, vectors="first"), device=device),
        "ours_values": best_time(lambda: curvext.tridiag_eigh(a, b, vectors=False), device=device),
    }
    rows = [
        (f"tridiag_eigh vectors B={B} m={m}", t["ours_vectors"], "torch.linalg.eigh (dense)", t["eigh"]),
        (f"tridiag_eigh first comps B={B} m={m}", t["ours_first"], "torch.linalg.eigvalsh (dense)", t["eigvalsh"]),
        (f"tridiag_eigh values B={B} m={m}", t["ours_values"], "torch.linalg.eigvalsh (dense)", t["eigvalsh"]),
    ]
    if device == "cpu":
        an, bn = a.numpy(), b.numpy()
        sv = best_time(lambda: [scipy.linalg.eigh_tridiagonal(an[i], bn[i]) for i in range(B)], repeat=1)
        sw = best_time(lambda: [scipy.linalg.eigh_tridiagonal(an[i], bn[i], eigvals_only=True) for i in range(B)],
                       repeat=1)
        rows += [
            (f"tridiag_eigh vectors B={B} m={m}", t["ours_vectors"], "scipy eigh_tridiagonal loop", sv),
            (f"tridiag_eigh first comps B={B} m={m}", t["ours_first"], "scipy eigh_tridiagonal loop", sv),
            (f"tridiag_eigh values B={B} m={m}", t["ours_values"], "scipy eigh_tridiagonal loop (values)", sw),
        ]
    return rows


def lanczos_equal_steps(problem, k, steps, device):
    """Times (ours, reference, steps actually run): the reference may stop early when its
    reorthogonalisation test fails, so ours then runs exactly as many steps."""
    from linear_operator.utils.lanczos import lanczos_tridiag

    v0 = torch.randn((problem.B,) + problem.shape, device=device)
    ran = {}

    def reference():
        init = v0.reshape(problem.B, -1, 1)
        q, t = lanczos_tridiag(problem.batched_matmul, steps, v0.dtype, v0.device, (problem.n, problem.n),
                               batch_shape=torch.Size([problem.B]), init_vecs=init)
        w, s = torch.linalg.eigh(t)  # q (B, n, m), t (B, m, m)
        ran["steps"] = t.shape[-1]
        return w[..., -k:], q @ s[..., -k:]

    t_ref = best_time(reference, repeat=1, device=device)
    m = ran["steps"]

    def ours():
        return curvext.lanczos(problem.op, v0, k=k, which="LA", max_steps=m, tol=1e-30, vectors=True)

    return best_time(ours, repeat=1, device=device), t_ref, m


def lanczos_vs_eigsh(problem, k, tol, device, samples):
    v0 = torch.randn((problem.B,) + problem.shape, device=device)
    t_ours = best_time(lambda: curvext.lanczos(problem.op, v0, k=k, which="LA", tol=tol), repeat=1, device=device)

    def loop():
        out = []
        for s in range(samples):
            lin = scipy.sparse.linalg.LinearOperator(
                (problem.n, problem.n), dtype=np.float32,
                matvec=lambda v, s=s: problem.matvec(
                    s, torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(-1).to(device)
                ).cpu().numpy())
            out.append(scipy.sparse.linalg.eigsh(lin, k=k, which="LA", tol=tol, v0=v0[s].reshape(-1).cpu().numpy())[0])
        return out

    t_loop = best_time(loop, repeat=1) * problem.B / samples  # extrapolated to the whole batch
    return t_ours, t_loop


def bookkeeping_share(problem, k, device, repeat=5):
    """(solver time - operator time) per step, as a share of one operator application.

    Returns ``{solver: (median, lowest, highest)}`` over ``repeat`` timed solves (after one
    warm-up), so one noisy solve on a shared machine does not decide the number."""
    calls = []

    def timed(V, index):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = problem.op(V, index)
        if device == "cuda":
            torch.cuda.synchronize()
        calls.append(time.perf_counter() - t0)
        return out

    v0 = torch.randn((problem.B,) + problem.shape, device=device)
    out = {}
    for name, run in [("lanczos", lambda: curvext.lanczos(timed, v0, k=k, max_steps=40, tol=1e-30)),
                      ("power_iteration", lambda: curvext.power_iteration(timed, v0, max_iters=40, tol=1e-30))]:
        run()
        shares = []
        for _ in range(repeat):
            calls.clear()
            total = elapsed(run, device)
            op_time = sum(calls)
            shares.append((total - op_time) / op_time)  # per step over per application: steps cancel
        out[name] = (float(np.median(shares)), min(shares), max(shares))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    malloc = configure_malloc(args)
    device = args.device
    torch.manual_seed(0)
    rows = tridiag_rows(device, args.quick)
    B = 16 if args.quick else 64
    for problem in (diag_plus_low_rank(B=B, device=device), cnn_input_hvp(B=B, device=device)):
        steps = 40
        ours, ref, ran = lanczos_equal_steps(problem, 10, steps, device)
        rows.append((f"lanczos {problem.name} B={B} k=10, {ran} steps", ours,
                     "linear_operator lanczos_tridiag + eigh", ref))
        if device == "cpu":
            ours, loop = lanczos_vs_eigsh(problem, 10, 1e-4, device, samples=2 if args.quick else 4)
            rows.append((f"lanczos {problem.name} B={B} k=10 tol=1e-4", ours,
                         "scipy eigsh per-sample loop (extrapolated)", loop))
    share = bookkeeping_share(cnn_input_hvp(B=B, device=device), 10, device)
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"scipy {scipy.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "") + f", {malloc}",
        "",
        "| case | curvext (s) | reference | reference (s) | speed-up |",
        "|---|---:|---|---:|---:|",
    ]
    for name, ours, ref_name, ref in rows:
        lines.append(f"| {name} | {ours:.4f} | {ref_name} | {ref:.4f} | {ref / ours:.1f}x |")
    lines.append("")
    lines.append(f"| solver bookkeeping per step / one small-CNN HVP (B={B}, 3x32x32) | share (median of 5) | range |")
    lines.append("|---|---:|---:|")
    for name, (median, low, high) in share.items():
        lines.append(f"| {name} | {100 * median:.1f}% | {100 * low:.1f}-{100 * high:.1f}% |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
