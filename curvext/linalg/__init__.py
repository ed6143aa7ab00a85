"""Batched eigensolvers over any batched symmetric operator ``op(V, index)``."""
from curvext.linalg.lanczos import lanczos
from curvext.linalg.power import power_iteration
from curvext.linalg.result import ConvergenceError, ConvergenceWarning, EigResult
from curvext.linalg.tridiag import tridiag_eigh

__all__ = ["ConvergenceError", "ConvergenceWarning", "EigResult", "lanczos", "power_iteration", "tridiag_eigh"]
