"""Batched Lanczos with full reorthogonalisation over a batched symmetric operator.

Every sample of the batch is an independent problem with its own tridiagonal matrix, stopping
point and convergence test; samples that have finished are no longer passed to the operator.
The arithmetic of a step runs in the fused ``curvext::lanczos_step`` op (no host
synchronisation inside it); between steps the driver synchronises once to drop finished
samples.
"""
from __future__ import annotations

import torch

from curvext import _ops
from curvext._ops import LanczosFlag, TridiagMode
from curvext.linalg import _operator, _validate
from curvext.linalg._selection import WHICH, select, worst_wanted
from curvext.linalg.result import EigResult


def default_max_steps(k: int, n: int) -> int:
    """Steps allowed per sample when the caller sets none: ``min(n, max(4k + 20, 60))``.

    Without restarts, Lanczos needs a few steps per wanted value: with 3k + 20, 40 wanted
    values of a small CNN's curvature at tol 1e-4 stopped short (relative error 8e-3); they
    converge in about 150 steps."""
    return min(n, max(4 * k + 20, 60))


def lanczos(op: _operator.BatchedOperator, v0: torch.Tensor, *, k: int, which: str = "LA",
            max_steps: int | None = None, tol: float = 1e-4, vectors: bool = True, seed: int = 0,
            breakdown_tol: float | None = None, min_steps_after_restart: int | None = None) -> EigResult:
    """k extremal eigenpairs of B symmetric operators by Lanczos.

    Args:
        op: ``op(V, index) -> (b, *shape)``: ``V (b, *shape)`` holds one vector for each sample
            listed in ``index`` (int64, ``(b,)``, into the batch); returns ``A_s V[i]`` for each.
            Must be symmetric. Finished samples are not passed again.
        v0: ``(B, *shape)`` start vectors (any non-zero vectors; random ones are best).
        k: eigenpairs wanted per sample, ``1 <= k <= n`` (n = prod(shape)).
        which: "LA" largest algebraic, "SA" smallest algebraic, "BE" both ends (ceil(k/2) largest,
            floor(k/2) smallest), "LM" largest magnitude.
        max_steps: operator applications allowed per sample (default
            :func:`default_max_steps`), at most n.
        tol: a Ritz pair is converged when ``|beta_m s_{m,i}| <= tol * max|theta|``; a sample
            stops when all its k wanted pairs are. The test runs after step m when m >= k and
            m is a multiple of max(1, m // 10), so a sample overruns its convergence point by at
            most ~10% of its steps while the test's cost stays small.
        vectors: also assemble the Ritz vectors.
        seed: seeds the fresh directions drawn after a breakdown (deterministic).
        breakdown_tol: beta_j counts as zero when the reorthogonalised residual keeps at most
            this fraction of ``||A q_j||`` (default ``100 * eps``).
        min_steps_after_restart: after a breakdown (the Krylov space of the sample is invariant,
            e.g. v0 inside an eigenspace) the sample continues from a fresh direction orthogonal
            to its basis, and may not stop before this many further steps (default
            ``max(2k, 10)``), so that the rest of the space is searched before trusting the answer.

    Returns:
        :class:`EigResult`: eigenvalues ``(B, k)`` ascending, eigenvectors ``(B, k, *shape)`` (or
        None), residual estimates, converged flags, steps ``(B,)``. Where a sample's space was
        exhausted with fewer than k eigenvalues, the missing ones are NaN.

    Note:
        A single start vector sees one copy of a repeated eigenvalue; the other copies appear
        only through rounding. Use several start vectors (samples) to resolve multiplicities.
    """
    _validate.choice("which", which, WHICH)
    flat0 = _operator.check_start("v0", v0)
    B, n = flat0.shape
    shape = v0.shape[1:]
    if not isinstance(k, int) or k < 1 or k > n:
        raise ValueError(f"k must be an int in [1, n = {n}] (n = elements per sample), got {k!r}")
    steps_cap = default_max_steps(k, n) if max_steps is None else max_steps
    if not isinstance(steps_cap, int) or steps_cap < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    steps_cap = min(steps_cap, n)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    eps = torch.finfo(v0.dtype).eps
    bt = 100 * eps if breakdown_tol is None else float(breakdown_tol)
    min_after = max(2 * k, 10) if min_steps_after_restart is None else int(min_steps_after_restart)

    device, dtype = v0.device, v0.dtype
    # Row j+1 of a sample's basis is written by its step j; rows past its last step are zeroed
    # when it stops (zero-filling the whole (B, M+1, n) buffer up front costs ~a step's time).
    basis = torch.empty(B, steps_cap + 1, n, device=device, dtype=dtype)
    basis[:, 0] = flat0 / flat0.norm(dim=1, keepdim=True)
    alpha = torch.zeros(B, steps_cap, device=device, dtype=dtype)
    beta = torch.zeros(B, steps_cap, device=device, dtype=dtype)
    steps = torch.full((B,), steps_cap, dtype=torch.long)  # lowered when a sample stops early
    block_start = torch.zeros(B, dtype=torch.long)  # first step of the current Krylov block
    identity_rest = torch.zeros(B, dtype=torch.bool)  # A = c I on the complement of the basis
    active = torch.arange(B, device=device)
    active_host = torch.arange(B)

    for j in range(steps_cap):
        current = basis[:, j] if active_host.numel() == B else basis[active, j]
        w = _operator.apply(op, current, active, shape, check=(j == 0))
        flags = _ops.ops.lanczos_step(basis, w, alpha, beta, active, j, bt, seed)
        check = j + 1 >= k and ((j + 1) % max(1, (j + 1) // 10) == 0 or j + 1 == steps_cap)
        # One synchronisation per step: everything the driver needs on the host.
        if check:
            done = _converged_now(alpha, beta, active, j, k, which, tol, active_host.numel() == B)
            host = torch.stack([flags, done.to(flags.dtype)]).cpu()
            host_flags, host_done = host[0], host[1].bool()
        else:
            host_flags, host_done = flags.cpu(), None
        if not bool(host_flags.any()) and (host_done is None or not bool(host_done.any())):
            continue  # the common step: nothing to decide
        if host_done is None:
            host_done = torch.zeros_like(host_flags, dtype=torch.bool)
        restarted = host_flags == LanczosFlag.BREAKDOWN
        if bool((host_flags == LanczosFlag.NONFINITE).any()):
            _operator.raise_nonfinite(active_host[host_flags == LanczosFlag.NONFINITE].tolist())
        # A fresh direction that breaks down at once is an eigenvector of A restricted to the
        # complement of the basis, so A is a multiple of the identity there: nothing left to find.
        immediate = restarted & (block_start[active_host] == j) & (j > 0)
        identity_rest[active_host[immediate]] = True
        block_start[active_host[restarted]] = j + 1
        long_enough = (j + 1 - block_start[active_host]) >= min(min_after, n)
        finished = (host_flags == LanczosFlag.EXHAUSTED) | immediate | (host_done & long_enough & ~restarted)
        if bool(finished.any()):
            stopped = active_host[finished]
            steps[stopped] = j + 1
            if j + 2 <= steps_cap:
                basis[stopped.to(device), j + 2 :] = 0
            keep = ~finished
            active_host = active_host[keep]
            active = active[keep.to(device)]
        if active_host.numel() == 0:
            break
    return _assemble(basis, alpha, beta, steps, shape, k, which, tol, vectors, identity_rest, seed)


def _converged_now(alpha, beta, active, j, k, which, tol, everyone: bool) -> torch.Tensor:
    """``(b,)`` bool on device: all k wanted Ritz pairs of T_{j+1} meet the residual test.

    Every active sample has the same size m = j + 1 here, so the wanted columns are slices
    (:func:`worst_wanted`); ``everyone``: all B samples are active (no gather). This runs every
    few steps, so it is written with as few tensor operations as possible."""
    m = j + 1
    if m < k:
        return torch.zeros(active.shape[0], dtype=torch.bool, device=alpha.device)
    if everyone:
        a, b, beta_m = alpha[:, :m], beta[:, : m - 1], beta[:, j]
    else:
        a, b, beta_m = alpha[active, :m], beta[active, : m - 1], beta[active, j]
    # First components of the eigenvectors of the reversed matrix = last components here.
    theta, last = _ops.ops.tridiag_eigh(a.flip(1), b.flip(1), TridiagMode.FIRST)
    worst = worst_wanted(last.abs(), theta, k, which)
    scale = torch.maximum(theta[:, 0].abs(), theta[:, -1].abs())  # theta ascending
    return beta_m.abs() * worst <= tol * scale


def _padded_tridiagonal(alpha, beta, steps):
    """T of every sample padded to the longest run with a decoupled diagonal above its spectrum.

    The pad value exceeds the Gershgorin bound of the sample's own T, so the sample's real
    eigenvalues are the first ``steps[s]`` of the ascending spectrum, with eigenvectors
    supported on its first ``steps[s]`` coordinates.
    """
    m = int(steps.max())
    dev = alpha.device
    sizes = steps.to(dev)
    cols = torch.arange(m, device=dev).view(1, m)
    inside = cols < sizes.view(-1, 1)
    a = alpha[:, :m]
    b = beta[:, : max(m - 1, 0)]
    b_inside = cols[:, : max(m - 1, 0)] < (sizes.view(-1, 1) - 1)
    b = torch.where(b_inside, b, torch.zeros_like(b))
    a_real = torch.where(inside, a, torch.zeros_like(a))
    bound = a_real.abs().amax(dim=1) + 2 * (b.abs().amax(dim=1) if m > 1 else 0)
    pad = (2 * bound + 1).view(-1, 1)
    a = torch.where(inside, a, pad.expand_as(a))
    return a.contiguous(), b.contiguous(), sizes


def _complement_copies(basis, alpha, beta, steps, identity_rest, k, vectors, seed):
    """Samples whose last restart direction was an eigenvector (A = c I on the complement of
    their basis) have c with multiplicity n - steps + 1, but Lanczos holds one copy. Append up to
    k - 1 more as decoupled diagonal entries, with orthonormal complement vectors as their basis
    rows. Returns the extended (basis, alpha, beta, sizes)."""
    B, _, n = basis.shape
    extra = torch.where(identity_rest, torch.clamp(n - steps, max=k - 1), torch.zeros_like(steps)).clamp(min=0)
    if int(extra.max()) == 0:
        return basis, alpha, beta, steps
    M, E = int(steps.max()), int(extra.max())
    dev = alpha.device
    alpha_x = torch.zeros(B, M + E, dtype=alpha.dtype, device=dev)
    beta_x = torch.zeros(B, M + E, dtype=beta.dtype, device=dev)
    alpha_x[:, :M], beta_x[:, :M] = alpha[:, :M], beta[:, :M]
    basis_x = torch.zeros(B, M + E, n, dtype=basis.dtype, device=dev) if vectors else basis
    if vectors:
        basis_x[:, :M] = basis[:, :M]
    g = torch.Generator().manual_seed(seed + 7919)
    for s in identity_rest.nonzero().flatten().tolist():
        m, e = int(steps[s]), int(extra[s])
        if e == 0:
            continue
        beta_x[s, m - 1] = 0.0  # the last block [c] is decoupled
        alpha_x[s, m : m + e] = alpha[s, m - 1]
        if vectors:
            Q = basis[s, :m]
            R = torch.randn(e, n, generator=g, dtype=torch.float64).to(basis)
            for _ in range(2):
                R = R - (R @ Q.T) @ Q
            basis_x[s, m : m + e] = torch.linalg.qr(R.T)[0].T
    return basis_x, alpha_x, beta_x, steps + extra


def _assemble(basis, alpha, beta, steps, shape, k, which, tol, vectors, identity_rest, seed) -> EigResult:
    operator_steps = steps.clone()
    basis, alpha, beta, steps = _complement_copies(basis, alpha, beta, steps, identity_rest, k, vectors, seed)
    a, b, sizes = _padded_tridiagonal(alpha, beta, steps)
    B, m = a.shape
    theta, S = _ops.ops.tridiag_eigh(a, b, TridiagMode.VECTORS)
    idx, valid = select(theta, sizes, k, which)
    values = theta.gather(1, idx)
    last_row = (sizes - 1).view(B, 1, 1).expand(B, 1, m)
    last = S.gather(1, last_row).squeeze(1)  # (B, m): last component of each eigenvector
    beta_last = beta.gather(1, (sizes - 1).view(B, 1)).abs()
    residuals = beta_last * last.gather(1, idx).abs()
    cols = torch.arange(m, device=a.device).view(1, m)
    scale = torch.where(cols < sizes.view(-1, 1), theta.abs(), torch.zeros_like(theta)).amax(dim=1, keepdim=True)
    converged = (residuals <= tol * scale) & valid
    nan = torch.full_like(values, float("nan"))
    values = torch.where(valid, values, nan)
    residuals = torch.where(valid, residuals, nan)
    eigenvectors = None
    if vectors:
        coeffs = S.gather(2, idx.view(B, 1, k).expand(B, m, k))  # (B, m, k)
        coeffs = coeffs * valid.view(B, 1, k).to(coeffs.dtype)
        y = _ops.ops.ritz_vectors(basis, coeffs.contiguous())
        eigenvectors = y.reshape((B, k) + tuple(shape))
    return EigResult(values, eigenvectors, residuals, converged, operator_steps)
