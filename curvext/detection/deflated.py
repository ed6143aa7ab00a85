"""Deflated estimator of Algorithm 2's per-class curvature sums.

The Hutchinson sum ``sum_j kappa_i(v_j)`` over T unit directions estimates ``T tr(G_i) / d``.
Boundary curvature is low rank (a few large principal curvatures, most ~0), so most of that
estimator's variance comes from the few large ones. Deflation computes them exactly by Lanczos
(``k`` largest |curvature|, Ritz vectors U) and samples only the rest:

    tr(G) ~ sum_m theta_m + (d / T) sum_j w_j^T G w_j,    w_j = (I - U U^T) v_j,

so the same statistic needs far fewer operator applications for equal variance (see the
benchmark ``benchmarks/compare_detect.py --deflated``).
"""
from __future__ import annotations

import torch

from curvext.curvature.operators import CurvatureOperator
from curvext.detection.config import DetectorConfig
from curvext.linalg import lanczos


def deflated_class_curvatures(model: torch.nn.Module, x: torch.Tensor, cls: torch.Tensor,
                              predicted: torch.Tensor, V: torch.Tensor,
                              config: DetectorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` estimates of ``T tr(G_i) / d`` (Hutchinson's scale) for every image and class,
    and ``(B, K)`` the operator applications each took (Lanczos steps + T).

    ``x (B, *shape)``; ``cls (B, K)`` competing classes, ``predicted (B,)``; ``V (T, *shape)`` unit
    directions; ``config`` supplies method (fd2 counts as fd: Lanczos needs products), h,
    deflation_k, deflation_basis_size and seed.
    """
    B, K = cls.shape
    T = V.shape[0]
    shape = tuple(x.shape[1:])
    d = x[0].numel()
    method = "autograd" if config.method == "autograd" else "fd"
    xr = x.repeat_interleave(K, dim=0)
    G = CurvatureOperator(model, xr, cls.reshape(-1), predicted.repeat_interleave(K),
                          method=method, h=config.h if method == "fd" else None)
    n = B * K
    rows = torch.arange(n, device=x.device)
    k = min(config.deflation_k, d - 1)
    g = torch.Generator().manual_seed(config.seed)
    # One start direction for every row (projected on each row's tangent space): a row's result
    # depends on its image and the seed, not on its position in the batch.
    start = torch.randn(shape, generator=g, dtype=torch.float64).to(x)
    v0 = G.tangent(start.expand((n,) + shape).contiguous(), rows)
    res = lanczos(G, v0, k=k, which="LM", tol=1e-3, basis_size=config.deflation_basis_size, vectors=True,
                  seed=config.seed)
    theta = torch.nan_to_num(res.eigenvalues, nan=0.0)  # (n, k)
    U = torch.nan_to_num(res.eigenvectors, nan=0.0).reshape(n, k, d)
    Vf = V.reshape(T, d).to(x)
    W = _deflate(Vf, U)  # (n, T, d)
    GW = G(W.reshape((n * T,) + shape), rows.repeat_interleave(T)).reshape(n, T, d)
    remainder = (W * GW).sum(dim=2).sum(dim=1)  # sum_j w_j^T G w_j
    sums = (T / d) * theta.sum(dim=1) + remainder
    return sums.reshape(B, K), (res.steps + T).reshape(B, K)


def _deflate(Vf: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``w_{n,j} = v_j - U_n U_n^T v_j`` as ``(n, T, d)`` from ``Vf (T, d)`` and ``U (n, k, d)``."""
    coef = torch.einsum("nkd,td->ntk", U, Vf)
    return Vf.unsqueeze(0) - torch.einsum("ntk,nkd->ntd", coef, U)
