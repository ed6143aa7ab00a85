"""Compiled-core speed as ratios against references measured in the same run.

    python benchmarks/compare_core.py [--device cpu|cuda] [--quick] [--out FILE.md]

Rows: tridiag_eigh (B=4096, m=64, fp32) against batched torch.linalg.eigh / eigvalsh and a loop
of scipy.linalg.eigh_tridiagonal; lanczos (B=64, n=3072, k=10) against linear_operator's
lanczos_tridiag + torch.linalg.eigh at equal steps, and against a per-sample loop of
scipy.sparse.linalg.eigsh at equal accuracy; the share of Lanczos / power-iteration time spent
outside the operator (bookkeeping) relative to one operator application.

Equal accuracy: every eigsh row prints, next to each solver's time, its largest eigenvalue error
against a float64 eigsh reference (tol 1e-10) of the first samples, relative to max|lambda|, and
how many of its pairs pass ARPACK's test ``||A y - theta y|| <= tol |theta|``. curvext's own test
(``<= tol * max|theta|``) is looser for values small against max|theta|, so each problem gets two
curvext rows: the same tol, and the tol that makes curvext's test imply ARPACK's for the wanted
values (``tol * min|lambda_i| / max|lambda|``); a row whose solvers do not pass the same test is
marked.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

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


def lanczos_equal_steps(problem, k, steps, device, reference, radius):
    """Rows of (ours, reference) at equal steps: the reference may stop early when its
    reorthogonalisation test fails, so ours then runs exactly as many steps. Neither converges in
    that many steps; their accuracies (eigenvalue errors of the first samples) are printed."""
    from linear_operator.utils.lanczos import lanczos_tridiag

    v0 = torch.randn((problem.B,) + problem.shape, device=device)
    ran = {}

    def reference_run():
        init = v0.reshape(problem.B, -1, 1)
        q, t = lanczos_tridiag(problem.batched_matmul, steps, v0.dtype, v0.device, (problem.n, problem.n),
                               batch_shape=torch.Size([problem.B]), init_vecs=init)
        w, s = torch.linalg.eigh(t)  # q (B, n, m), t (B, m, m)
        ran["steps"], ran["values"] = t.shape[-1], w[..., -k:]
        return w[..., -k:], q @ s[..., -k:]

    t_ref = best_time(reference_run, repeat=1, device=device)
    m = ran["steps"]

    def ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", curvext.ConvergenceWarning)  # a fixed step count, by design
            ran["ours"] = curvext.lanczos(problem.op, v0, k=k, which="LA", max_steps=m, tol=1e-30, vectors=True)

    t_ours = best_time(ours, repeat=1, device=device)
    samples = len(reference)

    def error(values):
        return f"err {float((np.abs(values[:samples].double().cpu().numpy() - reference) / radius[:, None]).max()):.0e}"

    return [(f"lanczos {problem.name} B={problem.B} k={k}, {m} steps", t_ours, error(ran["ours"].eigenvalues),
             "linear_operator lanczos_tridiag + eigh", t_ref, error(ran["values"]))]


def reference_spectrum(problem, k, samples, device):
    """float64 eigsh (tol 1e-10) of the first samples of the float32 operator: the k largest
    values ``(samples, k)`` ascending, and each sample's max|lambda| ``(samples,)``."""
    values, radius = [], []
    for s in range(samples):
        lin = sample_operator(problem, s, device, np.float64)
        values.append(np.sort(scipy.sparse.linalg.eigsh(lin, k=k, which="LA", tol=1e-10)[0]))
        radius.append(abs(scipy.sparse.linalg.eigsh(lin, k=1, which="LM", tol=1e-10)[0][0]))
    return np.array(values), np.array(radius)


def sample_operator(problem, s, device, dtype):
    def matvec(v):
        x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).reshape(-1).to(device)
        return problem.matvec(s, x).cpu().numpy().astype(dtype)

    return scipy.sparse.linalg.LinearOperator((problem.n, problem.n), dtype=dtype, matvec=matvec)


def accuracy(problem, values, vectors, reference, radius, tol, device):
    """(max |theta - lambda| / max|lambda|, the worst ||A y - theta y|| / (tol |theta|): ARPACK's
    test passes at <= 1) over the first ``len(reference)`` samples; values ``(s, k)``, vectors
    ``(s, k, n)`` (numpy or torch)."""
    values, vectors = np.asarray(values, dtype=np.float64), np.asarray(vectors, dtype=np.float64)
    err = float((np.abs(values - reference) / radius[:, None]).max())
    worst = 0.0
    for s in range(len(reference)):
        lin = sample_operator(problem, s, device, np.float64)
        for theta, y in zip(values[s], vectors[s]):
            worst = max(worst, float(np.linalg.norm(lin.matvec(y) - theta * y) / (tol * abs(theta))))
    return err, worst


def describe(acc):
    return f"err {acc[0]:.0e}, ARPACK ratio {acc[1]:.2f}"


def lanczos_vs_eigsh(problem, k, tol, device, reference, radius):
    """Rows (case, curvext s, curvext accuracy, reference, reference s, reference accuracy)."""
    v0 = torch.randn((problem.B,) + problem.shape, device=device)
    samples = len(reference)
    found = {}

    def loop():
        for s in range(samples):
            lin = sample_operator(problem, s, device, np.float32)
            w, y = scipy.sparse.linalg.eigsh(lin, k=k, which="LA", tol=tol, v0=v0[s].reshape(-1).cpu().numpy())
            order = np.argsort(w)
            found[s] = (w[order], y[:, order].T)

    t_loop = best_time(loop, repeat=1) * problem.B / samples  # extrapolated to the whole batch
    ref_acc = accuracy(problem, [found[s][0] for s in range(samples)], [found[s][1] for s in range(samples)],
                       reference, radius, tol, device)
    strict = tol * float((np.abs(reference).min(axis=1) / radius).min())
    rows = []
    for label, ours_tol in ((f"tol={tol:g} (test relative to max|theta|)", tol),
                            (f"tol={strict:.1e} (implies ARPACK's test at {tol:g})", strict)):
        out = {}

        def ours():
            out["res"] = curvext.lanczos(problem.op, v0, k=k, which="LA", tol=ours_tol)

        t_ours = best_time(ours, repeat=1, device=device)
        res = out["res"]
        vectors = res.eigenvectors[:samples].reshape(samples, k, -1).cpu()
        acc = accuracy(problem, res.eigenvalues[:samples].cpu(), vectors, reference, radius, tol, device)
        # Within 1.5x: the ARPACK estimate that eigsh stops on and the true residual differ that much.
        mark = " (**less accurate**)" if acc[1] > 1.5 >= ref_acc[1] else ""
        rows.append((f"lanczos {problem.name} B={problem.B} k={k} {label}", t_ours, describe(acc) + mark,
                     f"scipy eigsh tol={tol:g}, per-sample loop (extrapolated)", t_loop, describe(ref_acc)))
    return rows


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
    solvers = [("lanczos", lambda: curvext.lanczos(timed, v0, k=k, max_steps=40, tol=1e-30)),
               ("lanczos, restarted (basis_size=20, 80 steps)",
                lambda: curvext.lanczos(timed, v0, k=k, max_steps=80, basis_size=20, tol=1e-30)),
               ("power_iteration", lambda: curvext.power_iteration(timed, v0, max_iters=40, tol=1e-30))]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", curvext.ConvergenceWarning)  # tol 1e-30: fixed step counts, by design
        for name, run in solvers:
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
    rows = [(name, ours, "-", ref_name, ref, "-") for name, ours, ref_name, ref in rows]
    B = 16 if args.quick else 64
    for problem in (diag_plus_low_rank(B=B, device=device), cnn_input_hvp(B=B, device=device)):
        reference, radius = reference_spectrum(problem, 10, 2 if args.quick else 4, device)
        rows += lanczos_equal_steps(problem, 10, 40, device, reference, radius)
        if device == "cpu":
            rows += lanczos_vs_eigsh(problem, 10, 1e-4, device, reference, radius)
    share = bookkeeping_share(cnn_input_hvp(B=B, device=device), 10, device)
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, scipy {scipy.__version__}, "
        f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "") + f", {malloc}",
        "",
        "accuracy: largest eigenvalue error against float64 eigsh (tol 1e-10) of the first samples, relative to "
        "max|lambda|; ARPACK ratio: the worst ||A y - theta y|| / (tol |theta|) (ARPACK's test passes at <= 1)",
        "",
        "| case | curvext (s) | curvext accuracy | reference | reference (s) | reference accuracy | speed-up |",
        "|---|---:|---|---|---:|---|---:|",
    ]
    for name, ours, ours_acc, ref_name, ref, ref_acc in rows:
        lines.append(f"| {name} | {ours:.4f} | {ours_acc} | {ref_name} | {ref:.4f} | {ref_acc} | {ref / ours:.1f}x |")
    lines.append("")
    lines.append(f"| solver bookkeeping per step / one small-CNN HVP (B={B}, 3x32x32) | share (median of 5) | range |")
    lines.append("|---|---:|---:|")
    for name, (median, low, high) in share.items():
        lines.append(f"| {name} | {100 * median:.1f}% | {100 * low:.1f}-{100 * high:.1f}% |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
