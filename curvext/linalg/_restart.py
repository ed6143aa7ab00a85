"""Thick restart of a Lanczos basis (Wu & Simon 2000), for the samples whose basis is full.

From the Ritz decomposition ``T = S diag(theta) S^T`` of a full basis ``Q`` (M vectors and the
residual vector ``q_M``), a sample keeps l Ritz vectors ``Y = Q S_kept``: its k wanted ones and
the next ones in the same direction, the locked ones first. Then
``A Y = Y diag(theta_kept) + q_M s^T`` with ``s = beta_{M-1} S[M-1, kept]``: the projected matrix
of ``[Y, q_M]`` is an arrowhead. ``curvext::arrowhead_tridiag`` rotates it to tridiagonal form
(``W^T diag(theta) W`` tridiagonal, ``W^T s = ||s|| e_{l-1}``), so the new basis
``[Y W, q_M]`` continues as an ordinary Lanczos run from row l, its coupling ``||s||`` in
``beta[l-1]``.

Locking: converged wanted pairs enter with ``s_i = 0``, which leaves them decoupled and untouched
from then on, and makes the run continue exactly on ``A - E`` with ``||E|| = ||s_locked||``
(docs/method.md §4). The sum of these norms is the sample's ``locked_error``, added to every
residual bound; locks are taken, smallest coupling first, only while it stays within
:data:`LOCK_SHARE` of ``tol * max|theta|``, so that locking never keeps a pair from converging.
"""
from __future__ import annotations

import torch

from curvext import _ops

# Temporary storage of the basis rotation, in elements: it runs over column blocks of the basis
# so that the run's memory stays B x (basis_size + 1) x n plus at most this much (16 MiB in
# float32) or a quarter of the basis, whichever is less.
ROTATION_BLOCK = 1 << 22

#: Share of the convergence tolerance that the couplings dropped by locking may use up.
LOCK_SHARE = 0.1


def keep_order(theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """``(b, m)`` column indices of ``theta (b, m)`` (ascending) in the order a restart keeps
    them: the k wanted ones first (those of :func:`curvext.linalg._selection.select`), then the
    next ones from the same end(s). "BE" takes them from the two ends in proportion
    ceil(k/2) : floor(k/2)."""
    b, m = theta.shape
    dev = theta.device
    cols = torch.arange(m, device=dev)
    if which == "LM":
        return torch.argsort(theta.abs(), dim=1, descending=True, stable=True)
    if which == "LA":
        return cols.flip(0).expand(b, m)
    if which == "SA":
        return cols.expand(b, m)
    hi, lo = (k + 1) // 2, k // 2
    top = (m - 1 - cols).double() / hi
    bottom = cols.double() / lo if lo else torch.full((m,), float("inf"), device=dev)
    return torch.argsort(torch.minimum(top, bottom), stable=True).expand(b, m)


def kept_count(nconv: torch.Tensor, k: int, M: int) -> torch.Tensor:
    """How many Ritz vectors a restart keeps: the converged ones and half of the rest of the
    basis (as SLEPc's Krylov-Schur does), at least k + 1 and at most M - 1 (one new vector)."""
    return torch.clamp(nconv + (M - nconv) // 2, min=k + 1).clamp(max=M - 1)


def lock(coupling, converged, locked_error, limit):
    """Which wanted pairs to lock: ``coupling (b, k)`` their |s_i|, ``converged (b, k)``; locks
    are taken smallest first while ``locked_error + ||s_locked|| <= limit (b,)``. Returns the
    ``(b, k)`` bool mask and the new locked_error."""
    b, k = coupling.shape
    candidate = torch.where(converged, coupling, torch.full_like(coupling, float("inf")))
    ordered, order = torch.sort(candidate, dim=1)
    total = torch.sqrt(torch.cumsum(ordered * ordered, dim=1))
    take = (locked_error.view(b, 1) + total <= limit.view(b, 1)) & converged.gather(1, order)
    mask = torch.zeros_like(converged).scatter(1, order, take)
    dropped = torch.sqrt(torch.where(mask, coupling * coupling, torch.zeros_like(coupling)).sum(dim=1))
    return mask, locked_error + dropped


def thick_restart(basis, alpha, beta, locked_error, rows, theta, S, bound, scale, k: int, which: str, tol: float):
    """Restart samples ``rows`` (device index) whose T has the full size M = ``theta.shape[1]``.

    ``theta (b, M), S (b, M, M), bound (b, M)``: their Ritz decomposition and residual bounds
    (:func:`curvext.linalg._ritz.ritz_pairs`); ``scale (B,)`` the running max|theta|. Rewrites
    rows 0..l of their basis, alpha, beta and ``locked_error (B,)`` in place; returns the new
    sizes l ``(b,)`` int64 on the host (their next step starts from row l).
    """
    b, M = theta.shape
    dev = theta.device
    order = keep_order(theta, k, which)
    limit = tol * scale[rows]
    beta_last = beta[rows, M - 1].view(b, 1)
    wanted = order[:, :k]
    coupling = (beta_last * S[:, M - 1, :].gather(1, wanted)).abs()
    locked = torch.zeros(b, M, dtype=torch.bool, device=dev)
    locked[:, :k], locked_error[rows] = lock(coupling, bound.gather(1, wanted) <= limit.view(b, 1),
                                             locked_error[rows], LOCK_SHARE * limit)
    keep = kept_count(locked.sum(dim=1), k, M)
    keep_host = keep.cpu()
    L = int(keep_host.max())
    # Locked first (then the priority order): a zero prefix of the border stays untouched.
    rank = torch.arange(M, device=dev).view(1, M)
    perm = torch.argsort(torch.where(locked, rank - M, rank), dim=1, stable=True)[:, :L]
    cols = order.gather(1, perm)
    inside = torch.arange(L, device=dev).view(1, L) < keep.view(b, 1)
    zero = torch.zeros((), dtype=theta.dtype, device=dev)
    S_kept = torch.where(inside.view(b, 1, L), S.gather(2, cols.view(b, 1, L).expand(b, M, L)), zero)
    border = torch.where(locked.gather(1, perm) | ~inside, zero, beta_last * S_kept[:, M - 1, :])
    diag = torch.where(inside, theta.gather(1, cols), zero)
    a_new, b_new, W = _ops.ops.arrowhead_tridiag(diag.contiguous(), border.contiguous(), keep)
    rotate_basis(basis, rows, S_kept @ W, keep)
    alpha[rows, :L] = a_new
    beta[rows, :L] = b_new
    return keep_host


def rotate_basis(basis: torch.Tensor, rows: torch.Tensor, C: torch.Tensor, keep: torch.Tensor) -> None:
    """Rows 0..L-1 of the samples ``rows`` become ``sum_j C[:, j, i] basis[:, j]`` (j < M =
    ``C.shape[1]``) and row ``keep[s]`` becomes the old row M, in column blocks through
    ``curvext::ritz_vectors``, so that the temporary storage (a block of the old rows, copied
    when the GEMM needs it contiguous, and of the new ones) stays within :data:`ROTATION_BLOCK`
    elements and a quarter of the basis (one column at least)."""
    B, _, n = basis.shape
    b, M, L = C.shape
    everyone = b == B and torch.equal(rows, torch.arange(B, device=rows.device))
    width = max(1, min(ROTATION_BLOCK, basis.numel() // 4) // (b * (2 * M + L)))
    for c0 in range(0, n, width):
        c1 = min(n, c0 + width)
        src = basis[:, :M, c0:c1] if everyone else basis[rows, :M, c0:c1]
        out = _ops.ops.ritz_vectors(src, C)
        if everyone:
            basis[:, :L, c0:c1] = out
        else:
            basis[rows, :L, c0:c1] = out
    basis[rows, keep.to(rows.device)] = basis[rows, M]
