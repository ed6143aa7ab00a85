"""Batched power iteration for the dominant eigenpair of B symmetric operators."""
from __future__ import annotations

import torch

from curvext import _ops
from curvext.linalg import _operator, _validate
from curvext.linalg.result import EigResult

POWER_WHICH = frozenset({"LM", "LA", "SA"})


def power_iteration(op: _operator.BatchedOperator, v0: torch.Tensor, *, which: str = "LM",
                    max_iters: int = 100, tol: float = 1e-4) -> EigResult:
    """Dominant eigenpair per sample by power iteration, with a shift for LA / SA.

    Args:
        op: batched symmetric operator ``op(V, index)``, as for :func:`curvext.lanczos`.
        v0: ``(B, *shape)`` non-zero start vectors.
        which: "LM" largest magnitude; "LA" / "SA" the most positive / most negative eigenvalue.
            For LA/SA a first LM run finds the dominant value lambda; where its sign is the wanted
            one it is the answer, otherwise a second run on ``A + |lambda| I`` (LA) or
            ``A - |lambda| I`` (SA), from v0, reaches the wanted end.
        max_iters: operator applications allowed per run and sample.
        tol: converged when ``||A v - theta v|| <= tol |theta|`` (theta the Rayleigh quotient).

    Returns:
        :class:`EigResult` with k = 1: eigenvalues ``(B, 1)``, eigenvectors ``(B, 1, *shape)``,
        residuals ``(B, 1)``, converged ``(B, 1)``, steps ``(B,)`` (applications in all runs).

    Note:
        When the two ends have equal magnitude, LM power iteration does not converge; use
        LA/SA or :func:`curvext.lanczos`.
    """
    _validate.choice("which", which, POWER_WHICH)
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int, got {max_iters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    flat0 = _operator.check_start("v0", v0)
    B = flat0.shape[0]
    shape = v0.shape[1:]
    unit0 = flat0 / flat0.norm(dim=1, keepdim=True)
    steps = torch.zeros(B, dtype=torch.long)
    shift = torch.zeros(B, dtype=v0.dtype, device=v0.device)
    v, theta, res, conv = _run(op, unit0.clone(), shift, shape, max_iters, tol, steps)
    if which != "LM":
        wrong = theta < 0 if which == "LA" else theta > 0
        redo = wrong.nonzero().flatten()
        if redo.numel() > 0:
            sign = 1.0 if which == "LA" else -1.0
            sub_shift = sign * theta[redo].abs()
            sub_steps = torch.zeros(redo.numel(), dtype=torch.long)

            def sub_op(V, index, _redo=redo):
                return op(V, _redo[index])

            sv, st, sr, sc = _run(sub_op, unit0[redo].clone(), sub_shift, shape, max_iters, tol, sub_steps)
            v[redo], theta[redo], res[redo], conv[redo] = sv, st, sr, sc
            steps[redo.cpu()] += sub_steps
    return EigResult(theta.unsqueeze(1), v.reshape((B, 1) + tuple(shape)), res.unsqueeze(1),
                     conv.unsqueeze(1), steps)


def _run(op, v, shift, shape, max_iters, tol, steps):
    """Iterate until every sample converges or max_iters; returns v, theta, residual, converged.

    theta/residual/converged describe the vector v returned (the last one the operator saw).
    """
    B = v.shape[0]
    device = v.device
    theta = torch.full((B,), float("nan"), dtype=v.dtype, device=device)
    res = torch.full((B,), float("nan"), dtype=v.dtype, device=device)
    conv = torch.zeros(B, dtype=torch.bool, device=device)
    active = torch.arange(B, device=device)
    active_host = torch.arange(B)
    for it in range(max_iters):
        cur = v[active]
        w = _operator.apply(op, cur, active, shape, check=(it == 0))
        v_next, t, r, c = _ops.ops.power_step(cur, w, shift[active], tol)
        bad = _operator.nonfinite_rows(w)
        steps[active_host] += 1
        theta[active], res[active], conv[active] = t, r, c
        host = torch.stack([bad, c]).cpu()
        if bool(host[0].any()):
            _operator.raise_nonfinite(active_host[host[0]].tolist())
        # Converged samples keep the vector their theta belongs to; the others move on.
        keep = ~host[1]
        v[active[keep.to(device)]] = v_next[keep.to(device)]
        active_host = active_host[keep]
        active = active[keep.to(device)]
        if active_host.numel() == 0:
            break
    return v, theta, res, conv
