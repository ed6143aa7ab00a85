"""Batched thick-restart Lanczos with full reorthogonalisation over a batched symmetric operator.

Every sample of the batch is an independent problem with its own tridiagonal matrix, basis row,
restarts, stopping point and convergence test; samples that have finished are no longer passed
to the operator. The arithmetic of a step runs in the fused ``curvext::lanczos_step`` op (no host
synchronisation inside it); between steps the driver synchronises once to drop finished samples.
A sample whose basis of ``basis_size`` vectors is full restarts from its best Ritz vectors
(:mod:`curvext.linalg._restart`), so a run's memory is ``B x (basis_size + 1) x n`` whatever
its number of steps.
"""
from __future__ import annotations

import warnings

import torch

from curvext import _ops
from curvext._ops import LanczosFlag
from curvext.linalg import _operator, _ritz, _validate
from curvext.linalg._restart import thick_restart
from curvext.linalg._selection import WHICH
from curvext.linalg.result import ConvergenceError, ConvergenceWarning, EigResult

#: Upper bound of the default ``max_steps`` for large operators.
MAX_STEPS_CAP = 10_000


def default_basis_size(k: int, n: int) -> int:
    """Basis vectors stored per sample when the caller sets none: ``min(n, max(4k + 20, 60))``.

    Without restarts Lanczos needs a few steps per wanted value: with 3k + 20, 40 wanted values
    of a small CNN's curvature at tol 1e-4 stopped short (relative error 8e-3); they converge in
    about 150 steps. A run that converges within this many steps never restarts."""
    return min(n, max(4 * k + 20, 60))


def default_max_steps(n: int) -> int:
    """Operator applications allowed per sample when the caller sets none: ``10 n`` (scipy's
    eigsh allows 10 n restarts), at most :data:`MAX_STEPS_CAP`."""
    return min(10 * n, MAX_STEPS_CAP)


def _allocate_basis(B: int, rows: int, n: int, device, dtype) -> torch.Tensor:
    """The run's basis ``(B, rows, n)``: the only storage that grows with n and the basis size."""
    return torch.empty(B, rows, n, device=device, dtype=dtype)


def lanczos(op: _operator.BatchedOperator, v0: torch.Tensor, *, k: int, which: str = "LA",
            max_steps: int | None = None, basis_size: int | None = None, tol: float = 1e-4,
            vectors: bool = True, seed: int = 0, breakdown_tol: float | None = None,
            min_steps_after_restart: int | None = None, strict: bool = False) -> EigResult:
    """k extremal eigenpairs of B symmetric operators by thick-restart Lanczos.

    Args:
        op: ``op(V, index) -> (b, *shape)``: ``V (b, *shape)`` holds one vector for each sample
            listed in ``index`` (int64, ``(b,)``, into the batch); returns ``A_s V[i]`` for each.
            Must be symmetric. Finished samples are not passed again.
        v0: ``(B, *shape)`` start vectors (any non-zero vectors; random ones are best).
        k: eigenpairs wanted per sample, ``1 <= k <= n`` (n = prod(shape)).
        which: "LA" largest algebraic, "SA" smallest algebraic, "BE" both ends (ceil(k/2) largest,
            floor(k/2) smallest), "LM" largest magnitude.
        max_steps: operator applications allowed per sample (default :func:`default_max_steps`).
            A sample that reaches it unconverged is reported (``strict``).
        basis_size: Lanczos vectors stored per sample (default :func:`default_basis_size`, at
            most ``max_steps``; memory ``B x (basis_size + 1) x n``). When a sample's basis is
            full it restarts from its k wanted Ritz vectors, the converged ones locked, and the
            next ones at the same end(s) (Wu & Simon's thick restart): about half the basis.
            Must exceed k unless it covers ``min(n, max_steps)`` (a run without restarts).
        tol: a Ritz pair is converged when its residual ``|beta_m s_{m,i}|`` (plus what locking
            dropped, see :class:`EigResult`) is at most ``tol * max|theta|``, max|theta| the
            largest Ritz value magnitude the sample has seen; a sample stops when all its k
            wanted pairs are. The test runs after step m when m >= k and m is a multiple of
            max(1, m // 10), and whenever the sample's basis is full, so a sample overruns its
            convergence point by at most ~10% of its steps while the test's cost stays small.
        vectors: also assemble the Ritz vectors.
        seed: seeds the fresh directions drawn after a breakdown (deterministic).
        breakdown_tol: beta_j counts as zero when the reorthogonalised residual keeps at most
            this fraction of ``||A q_j||`` (default ``100 * eps``).
        min_steps_after_restart: after a breakdown (the Krylov space of the sample is invariant,
            e.g. v0 inside an eigenspace) the sample continues from a fresh direction orthogonal
            to its basis, and may not stop before this many further steps (default
            ``max(2k, 10)``), so that the rest of the space is searched before trusting the answer.
        strict: raise :class:`ConvergenceError` (carrying the partial result) instead of warning.

    Returns:
        :class:`EigResult`: eigenvalues ``(B, k)`` ascending, eigenvectors ``(B, k, *shape)`` (or
        None), residual bounds, converged flags, steps ``(B,)``. Where a sample's space was
        exhausted with fewer than k eigenvalues, the missing ones are NaN.

    Warns:
        ConvergenceWarning: some samples reached ``max_steps`` with unconverged wanted pairs;
        it names them (up to 10) and their worst relative residual.

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
    cap = default_max_steps(n) if max_steps is None else max_steps
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    size = default_basis_size(k, n) if basis_size is None else basis_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"basis_size must be a positive int, got {basis_size!r}")
    M = min(size, n, cap)
    if M < min(n, cap) and M <= k:
        raise ValueError(f"basis_size must exceed k = {k} to restart (or cover min(n, max_steps) = "
                         f"{min(n, cap)} for a run without restarts), got {basis_size!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    eps = torch.finfo(v0.dtype).eps
    settings = dict(k=k, which=which, tol=float(tol), seed=seed, n=n, M=M, max_steps=cap,
                    bt=100 * eps if breakdown_tol is None else float(breakdown_tol),
                    min_after=max(2 * k, 10) if min_steps_after_restart is None else int(min_steps_after_restart))
    basis = _allocate_basis(B, M + 1, n, v0.device, v0.dtype)
    basis[:, 0] = flat0 / flat0.norm(dim=1, keepdim=True)
    state = _Run(basis, settings)
    state.iterate(op, shape)
    if vectors:
        _zero_unused_rows(basis, state.sizes)
    values, ritz, residuals, converged, scale = _ritz.assemble(
        basis, state.alpha, state.beta, state.locked_error, state.sizes, state.scale, k, which, tol, vectors,
        state.identity_rest, seed)
    eigenvectors = None if ritz is None else ritz.reshape((B, k) + tuple(shape))
    result = EigResult(values, eigenvectors, residuals, converged, state.steps)
    _report(result, state.capped, scale, cap, tol, strict)
    return result


class _Run:
    """The per-sample state of one solve and its loop (host bookkeeping on the CPU)."""

    def __init__(self, basis, s):
        B, _, _ = basis.shape
        dev, dtype = basis.device, basis.dtype
        self.basis, self.s, self.B, self.dev = basis, s, B, dev
        M = s["M"]
        self.alpha = torch.zeros(B, M, device=dev, dtype=dtype)
        self.beta = torch.zeros(B, M, device=dev, dtype=dtype)
        self.locked_error = torch.zeros(B, device=dev, dtype=dtype)  # ||E|| of the locks (see _ritz)
        self.scale = torch.zeros(B, device=dev, dtype=dtype)  # running max|theta|
        self.sizes = torch.zeros(B, dtype=torch.long)  # size of T = row the next step starts from
        self.rows_dev = None  # sizes on the device once restarts made them differ
        self.steps = torch.zeros(B, dtype=torch.long)
        self.block_start = torch.zeros(B, dtype=torch.long)  # first step of the current Krylov block
        self.identity_rest = torch.zeros(B, dtype=torch.bool)  # A = c I on the complement of the basis
        self.capped = torch.zeros(B, dtype=torch.bool)
        self.active = torch.arange(B, device=dev)
        self.active_host = torch.arange(B)

    def iterate(self, op, shape):
        s, basis = self.s, self.basis
        M, cap, k = s["M"], s["max_steps"], s["k"]
        for j in range(cap):
            m = j + 1  # operator applications of every active sample after this step
            everyone = self.active_host.numel() == self.B
            act_sizes = self.sizes[self.active_host]
            low, high = int(act_sizes.min()), int(act_sizes.max())
            rows = None
            if low == high:
                current = basis[:, low] if everyone else basis[self.active, low]
            else:
                rows = self.rows_dev[self.active]
                current = basis[self.active, rows]
            w = _operator.apply(op, current, self.active, shape, check=(j == 0))
            flags = _ops.ops.lanczos_step(basis, w, self.alpha, self.beta, self.active, high, s["bt"], s["seed"], rows)
            self.sizes[self.active_host] += 1
            if self.rows_dev is not None:
                self.rows_dev += 1
            full = self.sizes[self.active_host] == M
            check = (m >= k and m % max(1, m // 10) == 0) or m == cap or bool(full.any())
            # One synchronisation per step: everything the driver needs on the host.
            eig = None
            if check:
                done, eig = self._test(full, everyone)
                host = torch.stack([flags, done.to(flags.dtype)]).cpu()
                host_flags, host_done = host[0], host[1].bool()
            else:
                host_flags, host_done = flags.cpu(), torch.zeros(flags.shape[0], dtype=torch.bool)
            if bool(host_flags.any()) or bool(host_done.any()) or bool(full.any()):
                self._decide(j, host_flags, host_done, full, eig)
            if self.active_host.numel() == 0:
                return
        self.capped[self.active_host] = True
        self._stop(torch.ones(self.active_host.numel(), dtype=torch.bool), cap)

    def _test(self, full, everyone):
        """``done (b,)`` on device for the active samples, and (theta, S, bound) of the full ones."""
        s = self.s
        act = self.active_host
        done = torch.zeros(act.numel(), dtype=torch.bool, device=self.dev)
        eig = None
        if bool(full.any()):
            at = full.nonzero().flatten()
            d, eig = _ritz.converged_general(self.alpha, self.beta, self.locked_error, self.active[at.to(self.dev)],
                                             self.sizes[act[at]], s["k"], s["which"], s["tol"], self.scale)
            done[at.to(self.dev)] = d
        rest = ~full
        if bool(rest.any()):
            at = rest.nonzero().flatten()
            sizes = self.sizes[act[at]]
            rows = self.active if bool(rest.all()) else self.active[at.to(self.dev)]
            if int(sizes.min()) == int(sizes.max()):
                d = _ritz.converged_uniform(self.alpha, self.beta, self.locked_error, rows, int(sizes[0]), s["k"],
                                            s["which"], s["tol"], self.scale, everyone and bool(rest.all()))
            else:
                d, _ = _ritz.converged_general(self.alpha, self.beta, self.locked_error, rows, sizes, s["k"],
                                               s["which"], s["tol"], self.scale)
            if bool(rest.all()):
                done = d
            else:
                done[at.to(self.dev)] = d
        return done, eig

    def _decide(self, j, host_flags, host_done, full, eig):
        """Breakdowns, finished samples and restarts after step j."""
        s = self.s
        act = self.active_host
        m = j + 1
        if bool((host_flags == LanczosFlag.NONFINITE).any()):
            _operator.raise_nonfinite(act[host_flags == LanczosFlag.NONFINITE].tolist())
        restarted = host_flags == LanczosFlag.BREAKDOWN
        # A fresh direction that breaks down at once is an eigenvector of A restricted to the
        # complement of the (invariant) basis, so A is a multiple of the identity there.
        immediate = restarted & (self.block_start[act] == j) & (j > 0)
        self.identity_rest[act[immediate]] = True
        self.block_start[act[restarted]] = m
        long_enough = (m - self.block_start[act]) >= min(s["min_after"], s["n"])
        finished = (host_flags == LanczosFlag.EXHAUSTED) | immediate | (host_done & long_enough & ~restarted)
        if s["M"] >= s["n"]:
            finished |= full  # the basis spans the whole space: nothing to restart from
        restart = full & ~finished & (m < s["max_steps"])
        if bool(restart.any()):
            among_full = restart[full]
            pick = among_full.nonzero().flatten().to(self.dev)
            theta, S, bound = (t[pick] for t in eig)
            rows = self.active[restart.nonzero().flatten().to(self.dev)]
            kept = thick_restart(self.basis, self.alpha, self.beta, self.locked_error, rows, theta, S, bound,
                                 self.scale, s["k"], s["which"], s["tol"])
            self.sizes[act[restart]] = kept
            self.rows_dev = self.sizes.to(self.dev, copy=True)
        if bool(finished.any()):
            self._stop(finished, m)

    def _stop(self, finished, m):
        """Samples ``finished`` (bool over the active ones) stop after m steps."""
        self.steps[self.active_host[finished]] = m
        keep = ~finished
        self.active_host = self.active_host[keep]
        self.active = self.active[keep.to(self.dev)]


def _zero_unused_rows(basis, sizes) -> None:
    """The Ritz vectors are a GEMM over the longest run's rows: rows past a sample's last vector
    (never written, or left from before a restart) are zeroed up to there, no further (an
    unrestarted run's unused rows stay untouched; zero-filling the whole buffer up front would
    cost ~a step's time)."""
    longest = int(sizes.max())
    for size in torch.unique(sizes).tolist():
        if size + 1 < longest:
            basis[(sizes == size).nonzero().flatten().to(basis.device), size + 1 : longest] = 0


def _report(result: EigResult, capped, scale, max_steps, tol, strict) -> None:
    """Warn (or raise, ``strict``) about samples that reached max_steps unconverged."""
    unconverged = capped & ~result.converged.all(dim=1).cpu()
    if not bool(unconverged.any()):
        return
    bad = unconverged.nonzero().flatten().tolist()
    relative = torch.nan_to_num(result.residuals / scale.view(-1, 1), nan=float("inf"))
    relative = torch.where(result.converged, torch.zeros_like(relative), relative).amax(dim=1).cpu()
    named = ", ".join(f"{i} ({float(relative[i]):.1e})" for i in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    message = (f"curvext.lanczos: {len(bad)} of {len(capped)} samples did not converge within max_steps = "
               f"{max_steps} operator applications: sample (worst relative residual) {named}{more}; tol = "
               f"{tol:g}, residuals relative to the sample's max|theta|. Raise max_steps (or basis_size), or "
               "check the operator is symmetric.")
    if strict:
        raise ConvergenceError(message, result, bad)
    warnings.warn(message, ConvergenceWarning, stacklevel=3)
