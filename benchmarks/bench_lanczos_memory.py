"""Peak memory and time of restarted against unrestarted Lanczos at equal accuracy.

    python benchmarks/bench_lanczos_memory.py [--device cpu|cuda] [--quick] [--out FILE.md]

Problems: B = 64 diagonal-plus-low-rank operators (float32, benchmarks/problems.py: cheap, so the
solver's own storage and work dominate) at ImageNet size d = 3x224x224 and at d = 3072; k = 20
from both ends ("BE"), tol 1e-4. Rows: ``basis_size=60`` (thick restarts) and an unrestarted run
whose basis holds every step it needs (``basis_size = max_steps``, found by a first unrestarted
run). Both must converge every pair; the table prints their agreement and, at d = 3072, their
errors against dense float64 eigenvalues of the first samples.

Memory: on the GPU ``torch.cuda.max_memory_allocated`` over the solve; on the CPU the peak
resident set (VmHWM, reset before the solve) of a child process running only that solve, minus
its resident set before the solve (the operator's factors). Only the rows a run writes are
resident, so on the CPU an unrestarted run costs what its samples' own steps need.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from problems import diag_plus_low_rank  # noqa: E402
from reporting import add_malloc_option, configure_malloc, emit  # noqa: E402

import curvext  # noqa: E402

CASES = {"imagenet": (3, 224, 224), "cifar": (3, 32, 32)}


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_resident() -> None:
    """Start VmHWM afresh (Linux >= 4.0), so the operator's setup does not count in the peak."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def solve(n, B, k, basis_size, max_steps, tol, device, seed=0):
    """One solve; returns (result, seconds, peak bytes above the state before it)."""
    problem = diag_plus_low_rank(B=B, n=n, device=device, seed=seed)
    v0 = torch.randn(B, n, generator=torch.Generator().manual_seed(seed)).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_resident()
        before = status_bytes("VmRSS")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvext.ConvergenceWarning)  # reported in the table instead
        res = curvext.lanczos(problem.op, v0, k=k, which="BE", tol=tol, basis_size=basis_size,
                              max_steps=max_steps, vectors=False)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = status_bytes("VmHWM") - before
    return res, time.perf_counter() - t0, peak


def run(n, B, k, basis_size, max_steps, tol, device, malloc_args):
    """A solve in a child process (CPU: its own peak resident set) or in this one (CUDA)."""
    if device == "cuda":
        res, seconds, peak = solve(n, B, k, basis_size, max_steps, tol, device)
        return dict(seconds=seconds, peak=peak, steps=res.steps.tolist(), values=res.eigenvalues.cpu().tolist(),
                    converged=float(res.converged.float().mean()))
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", fh.name, "--n", str(n), "--batch", str(B),
               "--k", str(k), "--basis", str(basis_size), "--max-steps", str(max_steps), "--tol", str(tol)]
        subprocess.run(cmd + malloc_args, check=True)
        with open(fh.name) as out:
            return json.load(out)


def child(args):
    configure_malloc(args)
    res, seconds, peak = solve(args.n, args.batch, args.k, args.basis, args.max_steps, args.tol, "cpu")
    with open(args.child, "w") as fh:
        json.dump(dict(seconds=seconds, peak=peak, steps=res.steps.tolist(), values=res.eigenvalues.tolist(),
                       converged=float(res.converged.float().mean())), fh)


def dense_errors(n, B, k, runs, samples=3):
    """max |theta - lambda| / max|lambda| of each run against float64 eigvalsh of the first samples."""
    problem = diag_plus_low_rank(B=B, n=n)
    eye = torch.eye(n)
    errors = [0.0] * len(runs)
    for s in range(samples):
        A = torch.stack([problem.matvec(s, eye[:, j]) for j in range(n)], 1).double()
        lam = torch.linalg.eigvalsh((A + A.T) / 2)
        want = torch.cat([lam[: k // 2], lam[n - (k + 1) // 2:]])
        for i, r in enumerate(runs):
            got = torch.tensor(r["values"][s], dtype=torch.float64)
            errors[i] = max(errors[i], float((got - want).abs().max() / lam.abs().max()))
    return errors


def compare(name, shape, B, k, basis, tol, device, malloc_args, check_dense):
    n = 1
    for s in shape:
        n *= s
    restarted = run(n, B, k, basis, 10 * n, tol, device, malloc_args)
    # An unrestarted run needs as many vectors as steps: a first run with room for 1.5x the
    # restarted run's steps finds how many (on the CPU only the rows it writes are resident);
    # on the GPU a second run allocates exactly that.
    room = min(n, 3 * max(restarted["steps"]) // 2)
    unrestarted = run(n, B, k, room, room, tol, device, malloc_args)
    if device == "cuda":
        need = max(unrestarted["steps"])
        unrestarted = run(n, B, k, need, need, tol, device, malloc_args)
    vr, vu = torch.tensor(restarted["values"]), torch.tensor(unrestarted["values"])
    agree = float((vr - vu).abs().max() / vu.abs().max())
    errors = dense_errors(n, B, k, [restarted, unrestarted]) if check_dense else [None, None]
    rows = []
    for label, r, err in (("basis_size=60 (restarted)" if basis == 60 else f"basis_size={basis} (restarted)",
                           restarted, errors[0]),
                          ("unrestarted (basis = its steps)", unrestarted, errors[1])):
        dense = "" if err is None else f", dense error {err:.1e}"
        rows.append(f"| {name} d={'x'.join(map(str, shape))} B={B} | {label} | {max(r['steps'])} "
                    f"({min(r['steps'])}-{max(r['steps'])}) | {100 * r['converged']:.0f}%{dense} | "
                    f"{r['peak'] / 2**30:.2f} | {r['seconds']:.2f} |")
    ratio = (f"| | unrestarted / restarted | | values agree to {agree:.1e} of max|theta| | "
             f"{unrestarted['peak'] / max(restarted['peak'], 1):.2f}x | "
             f"{unrestarted['seconds'] / restarted['seconds']:.2f}x |")
    basis_bytes = B * (basis + 1) * n * 4
    rows.append(ratio)
    rows.append(f"| | (the restarted run's basis: B x {basis + 1} x d float32 = {basis_bytes / 2**30:.2f} GiB) "
                "| | | | |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--cases", default="imagenet,cifar", help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--basis", type=int, default=60)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=0, help=argparse.SUPPRESS)
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    malloc = configure_malloc(args)
    malloc_args = ["--default-malloc"] if args.default_malloc else []
    B = 4 if args.quick else args.batch
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "") + f", {malloc}",
        "",
        f"| problem (diag + low rank, float32, k={args.k} BE, tol={args.tol:g}) | run | steps (min-max) | "
        "pairs converged | peak memory (GiB) | time (s) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name in args.cases.split(","):
        shape = (3, 8, 8) if args.quick else CASES[name]
        lines += compare(name, shape, B, args.k, args.basis, args.tol, args.device, malloc_args,
                         check_dense=(name == "cifar"))
    emit(lines, args.out)


if __name__ == "__main__":
    main()
