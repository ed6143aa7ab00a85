"""Autograd formulas of the compiled ops (registered with ``torch.library.register_autograd``).

* ``tridiag_eigh``: eigenvalues are differentiable. For a simple eigenvalue ``lambda_j`` with unit
  eigenvector ``v_j`` of ``T = diag(alpha) + offdiag(beta)``, ``d lambda_j / d alpha_i = v_ij^2``
  and ``d lambda_j / d beta_i = 2 v_ij v_(i+1)j`` (first-order perturbation theory). The
  eigenvectors (or first components) carry no derivative: using them in a loss raises.
* ``ritz_vectors``: a batched matrix product, ``Y_b = C_b^T Q_b``, differentiated as one.
* ``power_step``, ``arrowhead_tridiag``: steps inside the solvers, not meant to be
  differentiated; a backward through them raises and names the op.
``lanczos_step`` updates its arguments in place and is refused by the drivers when their inputs
require gradients (see :func:`refuse_gradients`).
"""
from __future__ import annotations

import torch

from curvext._ops import TridiagMode, ops


def refuse_gradients(function: str, **tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the argument when a tensor requires grad under grad mode: the
    solver's result would silently carry no gradient."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{name} requires grad, but {function} is not differentiable (its result would "
                             f"carry no gradient): pass {name}.detach(), or run it under torch.no_grad()")


def _tridiag_setup(ctx, inputs, output):
    alpha, beta, mode = inputs
    ctx.mode = mode
    ctx.save_for_backward(alpha, beta, output[1])


def _tridiag_backward(ctx, grad_values, grad_vectors):
    alpha, beta, vectors = ctx.saved_tensors
    if grad_vectors is not None and bool((grad_vectors != 0).any()):
        raise RuntimeError("curvext.tridiag_eigh: derivatives of the eigenvectors (or first components) are not "
                           "implemented; only the eigenvalues are differentiable")
    if ctx.mode != TridiagMode.VECTORS:
        with torch.no_grad():
            vectors = ops.tridiag_eigh(alpha.detach(), beta.detach(), int(TridiagMode.VECTORS))[1]
    g = grad_values.unsqueeze(1)  # (B, 1, m): one weight per eigenvalue (column of vectors)
    grad_alpha = (g * vectors * vectors).sum(dim=2)
    grad_beta = 2 * (g * vectors[:, :-1] * vectors[:, 1:]).sum(dim=2)
    return grad_alpha, grad_beta, None


def _ritz_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _ritz_backward(ctx, grad_out):
    basis, coeffs = ctx.saved_tensors  # basis (B, M, n), coeffs (B, m, k), m <= M: out = coeffs^T basis[:, :m]
    m = coeffs.shape[1]
    grad_basis = grad_coeffs = None
    if ctx.needs_input_grad[0]:
        grad_basis = torch.zeros_like(basis)
        grad_basis[:, :m] = torch.bmm(coeffs, grad_out)
    if ctx.needs_input_grad[1]:
        grad_coeffs = torch.bmm(basis[:, :m], grad_out.transpose(1, 2))
    return grad_basis, grad_coeffs


def _refusing(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"curvext::{op} is a step inside curvext's eigensolvers and has no derivative")

    return backward


torch.library.register_autograd("curvext::tridiag_eigh", _tridiag_backward, setup_context=_tridiag_setup)
torch.library.register_autograd("curvext::ritz_vectors", _ritz_backward, setup_context=_ritz_setup)
for _op in ("power_step", "arrowhead_tridiag"):
    torch.library.register_autograd(f"curvext::{_op}", _refusing(_op), setup_context=lambda ctx, inputs, output: None)
