"""Result containers of the eigensolvers, and how they report a run that did not converge."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from curvext.utils.reprs import ShortRepr


@dataclass(frozen=True, repr=False)
class EigResult(ShortRepr):
    """Selected eigenpairs of B independent symmetric operators.

    Attributes:
        eigenvalues: ``(B, k)``, ascending within each row. Entries that could not be computed
            (the Krylov space of a sample was exhausted with fewer than k values) are NaN.
        eigenvectors: ``(B, k, *shape)`` unit vectors (``shape`` = one sample's shape), or None
            when not requested.
        residuals: ``(B, k)`` residual norms ``||A y - theta y||`` (Lanczos: the estimate
            ``|beta_m s_{m,i}|``, plus a bound on what restarts dropped from locked pairs).
        converged: ``(B, k)`` bool, residual <= tol * max|theta| of the sample.
        steps: ``(B,)`` int64, operator applications spent on each sample.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor | None
    residuals: torch.Tensor
    converged: torch.Tensor
    steps: torch.Tensor


class ConvergenceWarning(UserWarning):
    """Some samples used up their operator applications (``max_steps``) before all their wanted
    eigenpairs converged. The result is returned as it stands; its per-pair ``converged`` and
    ``residuals`` say which pairs to trust."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when the solver was asked to be strict.

    Attributes:
        result: the partial :class:`EigResult` (every sample, converged or not), as
            ``scipy.sparse.linalg.ArpackNoConvergence`` carries the partial eigenpairs.
        samples: the indices of the samples that did not converge.
    """

    def __init__(self, message: str, result: EigResult, samples: list[int]):
        super().__init__(message)
        self.result = result
        self.samples = samples
