"""Curvature inside training loops (docs/method.md §10): :class:`CurvatureMonitor` watches a
model's input-space curvature while it trains; :func:`curvature_penalty` is a differentiable
curvature regularizer (CURE's finite difference of gradients, or the input Hessian's spectral
norm). The Lightning callback lives in :mod:`curvext.training.lightning` (``pip install
'curvext[lightning]'``) and is imported only from there."""
from curvext.training.monitor import MEASURES, CurvatureMonitor
from curvext.training.penalty import KINDS, curvature_penalty

__all__ = ["CurvatureMonitor", "curvature_penalty", "MEASURES", "KINDS"]
