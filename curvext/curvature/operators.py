"""The curvature operator of a decision boundary: ``G = P H P / ||grad F||``.

For ``F = f_a - f_c`` at x (``a`` a competing class, ``c`` the point's own class khat), with
``g = grad F``, unit normal ``n = g / ||g||`` (pointing out of the point's own region, toward
class a) and tangent projector ``P = I - n n^T``, the eigenvalues of G on the tangent space are
the principal curvatures of the level set of F through x. Sign convention (docs/method.md §1): positive
where the point's own region is locally convex (for a ball of radius R of class c,
``F = |x|^2 - R^2``, every principal curvature is +1/R), negative where the boundary bulges into
the region. The normal direction is an exact zero of G; ``tangent_coords=True`` removes it from
the operator altogether: vectors are then coordinates ``w (d - 1,)`` in an orthonormal basis of
the tangent space (a Householder reflection ``Q`` with ``Q n = e_1``, ``x = Q [0; w]``), so no
Krylov method can meet the normal direction, even after a restart.
"""
from __future__ import annotations

import torch

from curvext.curvature.hvp import InputHessian


class CurvatureOperator:
    """Batched ``G_b = P_b H_b P_b / ||g_b||``, optionally restricted to a subspace.

    Args:
        model, x, a, c, method, h: as for :class:`curvext.curvature.hvp.InputHessian` (``F = f_a - f_c``).
        basis: optional orthonormal ``U`` of shape ``(d, r)`` (shared) or ``(B, d, r)``: the
            operator then acts on coefficients, ``U^T G U``, vectors of shape ``(b, r)``.
        tangent_coords: act on tangent coordinates ``(b, d - 1)`` instead (``T^T G T`` for the
            orthonormal tangent basis ``T`` of :meth:`embed`): the spectrum is exactly the d - 1
            principal curvatures. Not combined with ``basis``.

    Calling ``G(V, index)`` follows :func:`curvext.lanczos`'s ``op(V, index)`` convention.

    Attributes:
        hessian: the underlying :class:`InputHessian`. grad_norm: ``(B,)``. normal: ``(B, *shape)``.
    """

    def __init__(self, model, x, a, c, *, method: str = "autograd", h: float | None = None,
                 basis: torch.Tensor | None = None, tangent_coords: bool = False):
        if method == "fd2":
            raise ValueError("CurvatureOperator needs Hessian-vector products: method 'autograd' or 'fd'")
        self.hessian = InputHessian(model, x, a, c, method=method, h=h)
        g = self.hessian.grad
        self.shape = tuple(x.shape[1:])
        flat = g.flatten(1)
        self.grad_norm = flat.norm(dim=1)
        if bool((self.grad_norm == 0).any()):
            bad = (self.grad_norm == 0).nonzero().flatten().tolist()
            raise ValueError(f"grad F is zero at sample(s) {bad[:10]}: no boundary normal there")
        self.normal = (flat / self.grad_norm.unsqueeze(1)).reshape(g.shape)
        d = flat.shape[1]
        if basis is not None:
            if basis.dim() == 2:
                basis = basis.unsqueeze(0).expand(x.shape[0], *basis.shape)
            if basis.dim() != 3 or basis.shape[0] != x.shape[0] or basis.shape[1] != d:
                raise ValueError(f"basis must be (d, r) or (B, d, r) with d = {d}, got {tuple(basis.shape)}")
            basis = basis.to(dtype=x.dtype, device=x.device)
        if tangent_coords and basis is not None:
            raise ValueError("tangent_coords and basis cannot be combined")
        self.basis = basis
        self.tangent_coords = bool(tangent_coords)
        # Householder vector u = n - e_1 per sample (Q = I - 2 u u^T / |u|^2; u = 0: Q = I).
        u = self.normal.flatten(1).clone()
        u[:, 0] -= 1
        self._u = u
        self._u2 = (u * u).sum(1)

    def _reflect(self, Y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``Q_s y`` for flat rows ``Y (b, d)`` (Q symmetric, orthogonal, ``Q n = e_1``)."""
        u, u2 = self._u[index], self._u2[index]
        coef = torch.where(u2 > 0, 2 * (Y * u).sum(1) / u2.clamp_min(torch.finfo(u2.dtype).tiny),
                           torch.zeros_like(u2))
        return Y - coef.unsqueeze(1) * u

    def embed(self, W: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Tangent coordinates ``W (b, d - 1)`` to tangent vectors ``(b, *shape)``: ``Q [0; w]``."""
        Y = torch.cat([torch.zeros_like(W[:, :1]), W], dim=1)
        return self._reflect(Y, index).reshape((W.shape[0],) + self.shape)

    def coordinates(self, V: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Tangent coordinates ``(b, d - 1)`` of vectors ``V (b, *shape)`` (their normal part is
        dropped): the inverse of :meth:`embed` on the tangent space."""
        return self._reflect(V.flatten(1), index)[:, 1:]

    def tangent(self, V: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``P V``: remove each row's component along its sample's normal."""
        n = self.normal[index].flatten(1)
        flat = V.flatten(1)
        return (flat - (flat * n).sum(1, keepdim=True) * n).reshape(V.shape)

    def __call__(self, V: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.tangent_coords:
            return self.coordinates(self._apply(self.embed(V, index), index), index)
        if self.basis is not None:
            U = self.basis[index]  # (b, d, r)
            full = torch.bmm(U, V.unsqueeze(2)).squeeze(2).reshape((V.shape[0],) + self.shape)
            out = self._apply(full, index)
            return torch.bmm(U.transpose(1, 2), out.flatten(1).unsqueeze(2)).squeeze(2)
        return self._apply(V, index)

    def _apply(self, V, index):
        u = self.tangent(V, index)
        hu = self.hessian(u, index)
        shape = (-1,) + (1,) * (V.dim() - 1)
        return self.tangent(hu, index) / self.grad_norm[index].view(shape)

    def dense(self, chunk: int = 256) -> torch.Tensor:
        """The full matrix ``(B, d, d)`` (``(B, r, r)`` on a subspace, ``(B, d - 1, d - 1)`` in
        tangent coordinates), column by column: d operator applications per sample. For small d
        (references, tests)."""
        B = self.grad_norm.shape[0]
        dim = self.basis.shape[2] if self.basis is not None else self.normal[0].numel() - self.tangent_coords
        dtype, device = self.normal.dtype, self.normal.device
        eye = torch.eye(dim, dtype=dtype, device=device)
        cols = []
        index_all = torch.arange(B, device=device)
        for j0 in range(0, dim, chunk):
            block = eye[j0 : j0 + chunk]  # (t, dim)
            t = block.shape[0]
            idx = index_all.repeat_interleave(t)
            V = block.repeat(B, 1)
            if self.basis is None and not self.tangent_coords:
                V = V.reshape((B * t,) + self.shape)
            out = self(V, idx).reshape(B, t, dim)
            cols.append(out)
        G = torch.cat(cols, dim=1).transpose(1, 2)
        return 0.5 * (G + G.transpose(1, 2))
