"""Input-space curvature of decision boundaries: Hessian-vector products (``hvp``), the curvature
operator ``G = P H P / ||g||`` (``operators``), Algorithm 2's per-class quadratic forms
(``quadratic_forms``, compiled in ``compiled_sums``) and the one-off check of forward mode
against reverse mode (``verification``). See docs/method.md §2-3."""
from curvext.curvature.hvp import InputHessian
from curvext.curvature.operators import CurvatureOperator

__all__ = ["CurvatureOperator", "InputHessian"]
