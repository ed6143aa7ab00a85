"""Ritz pairs of the Lanczos drivers' projected tridiagonal matrices, their residual bounds and
the convergence test.

Every sample s has its own tridiagonal ``T_s`` of size ``sizes[s]``: diagonal ``alpha[s, :m]``,
off-diagonal ``beta[s, :m-1]``, and ``beta[s, m-1]`` coupling it to the next basis vector. A thick
restart that locks converged pairs sets their couplings ``s_i`` to zero: the run then continues
exactly on ``A - E`` for a symmetric E with ``||E|| <= locked_error[s]`` (the sum of the norms of
the couplings it dropped). The residual of a Ritz pair ``(theta_i, Q s_i)`` for A is therefore at
most ``|beta_{m-1} S[m-1, i]| + locked_error`` (zero before any lock).
"""
from __future__ import annotations

import torch

from curvext import _ops
from curvext._ops import TridiagMode
from curvext.linalg._selection import select, worst_wanted


def padded_tridiagonal(alpha, beta, sizes: torch.Tensor):
    """T of every sample padded to the longest with a decoupled diagonal above its spectrum.

    ``sizes`` ``(b,)`` int64 on the host. The pad value is twice the Gershgorin bound of the
    sample's own T (1 for a zero T), so its real eigenvalues are the first ``sizes[s]`` of the
    ascending spectrum, with eigenvectors supported on its first ``sizes[s]`` coordinates; and
    the padded matrix keeps the scale of T (bisection is accurate to ~eps times the padded norm:
    a pad of order 1 cost T's of norm 1e-4 in float32 a relative error of ~1e-4). Returns
    ``(a (b, m), b (b, m-1), sizes on alpha's device)``.
    """
    m = int(sizes.max())
    dev = alpha.device
    sizes = sizes.to(dev)
    cols = torch.arange(m, device=dev).view(1, m)
    inside = cols < sizes.view(-1, 1)
    a = alpha[:, :m]
    b = beta[:, : max(m - 1, 0)]
    b_inside = cols[:, : max(m - 1, 0)] < (sizes.view(-1, 1) - 1)
    b = torch.where(b_inside, b, torch.zeros_like(b))
    a_real = torch.where(inside, a, torch.zeros_like(a))
    bound = a_real.abs().amax(dim=1) + 2 * (b.abs().amax(dim=1) if m > 1 else 0)
    pad = torch.where(bound > 0, 2 * bound, torch.ones_like(bound)).view(-1, 1)
    a = torch.where(inside, a, pad.expand_as(a))
    return a.contiguous(), b.contiguous(), sizes


def residual_bounds(last, beta_last, locked_error) -> torch.Tensor:
    """``(b, m)`` residual bound of every Ritz pair (module docstring) from the eigenvectors' last
    components ``last (b, m)``, ``beta_last (b,)`` and ``locked_error (b,)``."""
    return beta_last.abs().view(-1, 1) * last.abs() + locked_error.view(-1, 1)


def spectrum_scale(theta, sizes) -> torch.Tensor:
    """``(b,)`` max |theta| over each row's real (unpadded) values."""
    cols = torch.arange(theta.shape[1], device=theta.device).view(1, -1)
    return torch.where(cols < sizes.view(-1, 1), theta.abs(), torch.zeros_like(theta)).amax(dim=1)


def converged_uniform(alpha, beta, locked_error, rows, m, k, which, tol, scale, everyone: bool) -> torch.Tensor:
    """``(b,)`` bool on device: all k wanted Ritz pairs of the size-m T of samples ``rows`` meet
    the residual test. ``scale (B,)`` the running max|theta|, updated in place. Slices
    (:func:`worst_wanted`) and only the eigenvectors' last components: this runs every few
    steps, so it is written with as few tensor operations as possible."""
    if m < k:
        return torch.zeros(rows.shape[0], dtype=torch.bool, device=alpha.device)
    if everyone:
        a, b, beta_m, err = alpha[:, :m], beta[:, : m - 1], beta[:, m - 1], locked_error
    else:
        a, b, beta_m, err = alpha[rows, :m], beta[rows, : m - 1], beta[rows, m - 1], locked_error[rows]
    # First components of the eigenvectors of the reversed matrix = last components here.
    theta, last = _ops.ops.tridiag_eigh(a.flip(1), b.flip(1), TridiagMode.FIRST)
    worst = worst_wanted(last.abs(), theta, k, which)
    now = torch.maximum(theta[:, 0].abs(), theta[:, -1].abs())  # theta ascending
    if everyone:
        scale.copy_(torch.maximum(scale, now))
        sc = scale
    else:
        sc = torch.maximum(scale[rows], now)
        scale[rows] = sc
    return beta_m.abs() * worst + err <= tol * sc


def ritz_pairs(alpha, beta, locked_error, rows, sizes, k, which):
    """Eigen-decomposition of the (padded) T of samples ``rows`` (device index) with sizes
    ``sizes`` (host int64). Returns ``theta (b, m)`` ascending, ``S (b, m, m)``, residual
    ``bound (b, m)``, the wanted columns ``idx (b, k)``, ``valid (b, k)`` and ``sizes`` on device."""
    a, b, sizes_dev = padded_tridiagonal(alpha[rows], beta[rows], sizes)
    theta, S = _ops.ops.tridiag_eigh(a, b, TridiagMode.VECTORS)
    m = theta.shape[1]
    last = S.gather(1, (sizes_dev - 1).view(-1, 1, 1).expand(-1, 1, m)).squeeze(1)
    beta_last = beta[rows].gather(1, (sizes_dev - 1).view(-1, 1)).squeeze(1)
    bound = residual_bounds(last, beta_last, locked_error[rows])
    idx, valid = select(theta, sizes_dev, k, which)
    return theta, S, bound, idx, valid, sizes_dev


def converged_general(alpha, beta, locked_error, rows, sizes, k, which, tol, scale):
    """:func:`converged_uniform` for samples of different sizes, with the whole
    eigen-decomposition (also returned, for a restart: theta, S, bound)."""
    theta, S, bound, idx, valid, sizes_dev = ritz_pairs(alpha, beta, locked_error, rows, sizes, k, which)
    sc = torch.maximum(scale[rows], spectrum_scale(theta, sizes_dev))
    scale[rows] = sc
    worst = torch.where(valid, bound.gather(1, idx), torch.full_like(sc, float("inf")).view(-1, 1)).amax(dim=1)
    return worst <= tol * sc, (theta, S, bound)


def complement_copies(basis, alpha, beta, sizes, identity_rest, k, vectors, seed):
    """Samples whose last fresh direction was an eigenvector (A = c I on the complement of their
    basis) have c with multiplicity n - size + 1, but Lanczos holds one copy. Append up to k - 1
    more as decoupled diagonal entries, with orthonormal complement vectors as their basis rows.
    Returns the extended (basis, alpha, beta, sizes)."""
    B, _, n = basis.shape
    extra = torch.where(identity_rest, torch.clamp(n - sizes, max=k - 1), torch.zeros_like(sizes)).clamp(min=0)
    if int(extra.max()) == 0:
        return basis, alpha, beta, sizes
    M, E = int(sizes.max()), int(extra.max())
    dev = alpha.device

    def widened(t):
        out = torch.zeros(B, M + E, dtype=t.dtype, device=dev)
        out[:, :M] = t[:, :M]
        return out

    alpha_x, beta_x = widened(alpha), widened(beta)
    basis_x = torch.zeros(B, M + E, n, dtype=basis.dtype, device=dev) if vectors else basis
    if vectors:
        basis_x[:, :M] = basis[:, :M]
    g = torch.Generator().manual_seed(seed + 7919)
    for s in identity_rest.nonzero().flatten().tolist():
        m, e = int(sizes[s]), int(extra[s])
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
    return basis_x, alpha_x, beta_x, sizes + extra


def assemble(basis, alpha, beta, locked_error, sizes, scale, k, which, tol, vectors, identity_rest, seed):
    """The k wanted Ritz pairs of every sample at the end of a run (``sizes`` on the host).

    Returns ``(values, vectors (B, k, n) or None, residuals, converged, scale)``: values and
    residuals NaN where a sample has fewer than k values; ``scale (B,)`` the max|theta| that the
    convergence test is relative to."""
    basis, alpha, beta, sizes = complement_copies(basis, alpha, beta, sizes, identity_rest, k, vectors, seed)
    B = alpha.shape[0]
    rows = torch.arange(B, device=alpha.device)
    theta, S, bound, idx, valid, sizes_dev = ritz_pairs(alpha, beta, locked_error, rows, sizes, k, which)
    scale = torch.maximum(scale, spectrum_scale(theta, sizes_dev))
    residuals = bound.gather(1, idx)
    converged = (residuals <= tol * scale.view(B, 1)) & valid
    nan = torch.full_like(residuals, float("nan"))
    values = torch.where(valid, theta.gather(1, idx), nan)
    residuals = torch.where(valid, residuals, nan)
    ritz = None
    if vectors:
        m = S.shape[1]
        coeffs = S.gather(2, idx.view(B, 1, k).expand(B, m, k)) * valid.view(B, 1, k).to(S.dtype)
        ritz = _ops.ops.ritz_vectors(basis, coeffs.contiguous())
    return values, ritz, residuals, converged, scale
