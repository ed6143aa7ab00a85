"""curvext: decision-boundary curvature of classifiers in input space.

Sign convention everywhere: curvature of F_i = f_i - f_k (k the predicted class), normal
pointing out of the point's own region toward class i (see SPEC §1).
"""
from curvext import _ops  # noqa: F401  (loads the compiled ops; a clear error if not built)
from curvext.linalg import EigResult, lanczos, power_iteration, tridiag_eigh

__version__ = "0.1.0"

__all__ = [
    "EigResult",
    "lanczos",
    "power_iteration",
    "tridiag_eigh",
]
