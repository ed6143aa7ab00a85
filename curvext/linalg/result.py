"""Result containers of the eigensolvers."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EigResult:
    """Selected eigenpairs of B independent symmetric operators.

    Attributes:
        eigenvalues: ``(B, k)``, ascending within each row. Entries that could not be computed
            (the Krylov space of a sample was exhausted with fewer than k values) are NaN.
        eigenvectors: ``(B, k, *shape)`` unit vectors (``shape`` = one sample's shape), or None
            when not requested.
        residuals: ``(B, k)`` residual norms ``||A y - theta y||`` (Lanczos: the estimate
            ``|beta_m s_{m,i}|``).
        converged: ``(B, k)`` bool, residual <= tol * max|theta| of the sample.
        steps: ``(B,)`` int64, operator applications spent on each sample.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    converged: torch.Tensor
    steps: torch.Tensor
