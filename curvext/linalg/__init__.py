"""Batched eigensolvers over any batched symmetric operator ``op(V, index)``."""
from curvext.linalg.result import EigResult
from curvext.linalg.tridiag import tridiag_eigh
from curvext.linalg.lanczos import lanczos
from curvext.linalg.power import power_iteration

__all__ = ["EigResult", "lanczos", "power_iteration", "tridiag_eigh"]
