"""Algorithm 2's statistic as a differentiable function of the images, for adaptive attacks.

:func:`differentiable_curvature` computes the same numbers as
:func:`curvext.detection.scoring.score_images` (Hutchinson estimator) for given unit directions
``V``, but keeps the autograd graph from the images to ``rho``, so that an attack can take
``d rho / d x`` (docs/method.md §7, §9). The per-class sums are those of
:func:`curvext.curvature.quadratic_forms.class_curvature_sums` in their summed form

    sum_j (P v_j)^T H (P v_j) / ||g|| = (sum_j v_j^T H v_j + (H n)^T (s n - 2 w)) / ||g||,

``w = sum_j c_j v_j``, ``s = sum_j c_j^2``, ``c_j = n^T v_j`` (sign convention of docs/method.md
§1: ``F_i = f_i - f_khat``, normal toward class i). The competing classes and the predicted label
are discrete and carry no gradient. Every part is built with ``create_graph=True``:

* ``"autograd"``: ``v^T H v`` by forward-over-forward mode (differentiable by an outer reverse
  pass), ``H n`` as the pullback of the class gradient applied to ``n``; ``d rho / d x`` then
  needs third derivatives of the model (smooth nets).
* ``"fd"`` / ``"fd2"``: the same finite differences at scale ``h`` as the detector, with the
  evaluation points ``x +- h v`` and ``x +- h n`` themselves functions of ``x``.

The graph holds about ``(2 T + 3 K)`` model passes per image (``K`` competing classes, ``T``
directions): attack in batches of a few dozen images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp

from curvext.curvature.quadratic_forms import (
    METHODS,
    _projected_sums,
    _second_directional_derivatives,
    competing_classes,
)


@dataclass(frozen=True)
class DifferentiableCurvature:
    """rho: ``(B,)`` Algorithm 2's statistic, in the graph of the images. sums: ``(B, K)`` each
    competing class's curvature summed over the T directions, in the graph. predicted: ``(B,)``
    int64; competitors: ``(B, K)`` int64 by decreasing logit (no gradient)."""

    rho: torch.Tensor
    sums: torch.Tensor
    predicted: torch.Tensor
    competitors: torch.Tensor


def _form_sums(model, x: torch.Tensor, V: torch.Tensor, method: str, h: float, max_rows: int) -> torch.Tensor:
    """``(B, L)``: each logit's ``sum_j v_j^T H v_j``, differentiable in ``x``."""
    B, T = x.shape[0], V.shape[0]
    shape = x.shape[1:]
    chunk = max(1, max_rows // max(B, 1))
    base = model(x) if method == "fd2" else None
    total = 0.0
    for j0 in range(0, T, chunk):
        v = V[j0 : j0 + chunk]
        if method == "autograd":
            total = total + _second_directional_derivatives(model, x, v).sum(dim=1)
            continue
        t = v.shape[0]
        xs = x.unsqueeze(1).expand(B, t, *shape).reshape(B * t, *shape)
        vs = v.unsqueeze(0).expand(B, t, *shape).reshape(B * t, *shape)
        if method == "fd2":
            center = base.unsqueeze(1).expand(B, t, base.shape[1]).reshape(B * t, -1)
            q = (model(xs + h * vs) + model(xs - h * vs) - 2 * center) / (h * h)
        else:  # fd
            q = (jvp(model, (xs + h * vs,), (vs,))[1] - jvp(model, (xs - h * vs,), (vs,))[1]) / (2 * h)
        total = total + q.reshape(B, t, -1).sum(dim=1)
    return total


def _margin_gradients(model, points: torch.Tensor, cls_flat: torch.Tensor, pred_flat: torch.Tensor,
                      graph: bool = True) -> torch.Tensor:
    """``(R, d)``: gradient of ``f_cls - f_pred`` at each row of ``points``, in the graph
    (``graph``) or detached."""
    if not graph:
        points = points.detach().requires_grad_(True)
    logits = model(points)
    rows = torch.arange(points.shape[0], device=points.device)
    F = logits[rows, cls_flat] - logits[rows, pred_flat]
    (g,) = torch.autograd.grad(F.sum(), points, create_graph=graph)
    return g.reshape(points.shape[0], -1)


def _gradient_and_hessian_normal(model, x, cls, predicted, method: str, h: float, graph: bool = True):
    """``(grad, hn)`` as in :func:`curvext.curvature.quadratic_forms.hessian_normal_products`,
    ``(B*K, d)`` each, differentiable in ``x`` (``graph``) or detached."""
    B, K = cls.shape
    cls_flat, pred_flat = cls.reshape(-1), predicted.repeat_interleave(K)
    xr = x.repeat_interleave(K, dim=0)
    grad = _margin_gradients(model, xr, cls_flat, pred_flat, graph)
    n = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
    if method == "autograd":  # the pullback of g applied to n: H n (H symmetric), in the graph
        (hn,) = torch.autograd.grad(grad, xr, grad_outputs=n, create_graph=True)
        return grad, hn.reshape(B * K, -1)
    step = (h * n).reshape(xr.shape)
    both = torch.cat([xr + step, xr - step])
    g2 = _margin_gradients(model, both, cls_flat.repeat(2), pred_flat.repeat(2), graph)
    return grad, (g2[: B * K] - g2[B * K :]) / (2 * h)


def differentiable_curvature(model: torch.nn.Module, x: torch.Tensor, V: torch.Tensor, method: str, h: float,
                             classes: int | None = None, max_rows: int = 4096,
                             piecewise_linear: bool = False) -> DifferentiableCurvature:
    """Algorithm 2's rho and per-class sums of ``x (B, C, H, W)`` along the unit directions
    ``V (T, C, H, W)``, differentiable with respect to ``x``.

    ``method`` ("autograd", "fd", "fd2") and ``h`` as in
    :func:`curvext.curvature.quadratic_forms.class_curvature_sums`; ``classes``: the K
    highest-scoring competing classes (None: all ``L - 1``). With the detector's directions
    (``CurvatureDetector.directions``) and settings, ``rho`` equals ``score(x).rho``. Runs with
    gradients enabled whatever the caller's mode; ``x`` need not require grad.

    ``piecewise_linear=True`` (fd/fd2 on a ReLU/max-pool model): the class gradients, and with them
    ``n`` and the finite-difference ``H n``, are piecewise constant in ``x``, so their derivative
    is zero almost everywhere; they enter without a graph, which gives the same values and the
    same gradient at a fraction of the cost (then only fd2's forward differences carry it).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "autograd" and not h > 0:
        raise ValueError(f"h must be > 0 for method {method!r}, got {h!r}")
    if V.dim() != x.dim() or tuple(V.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"V must be (T, {', '.join(map(str, x.shape[1:]))}) like x's images, got {tuple(V.shape)}")
    with torch.enable_grad():
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        with torch.no_grad():
            predicted, cls = competing_classes(model(x), classes)
        q_logits = _form_sums(model, x, V, method, h, max_rows)
        graph = not (piecewise_linear and method != "autograd")
        grad, hn = _gradient_and_hessian_normal(model, x, cls, predicted, method, h, graph)
        sums = _projected_sums(q_logits, cls, predicted, V, grad, hn)
        rho = sums.sum(dim=1) / ((cls.shape[1] + 1) * V.shape[0])
    return DifferentiableCurvature(rho, sums, predicted, cls)
