"""Differentiable curvature penalties for training (docs/method.md §10).

``loss = F.cross_entropy(model(x), y) + lam * curvature_penalty(model, x, y)``.

Both kinds measure the curvature of the *loss* in input space, ``l_b(x) = loss(f(x_b), y_b)``
(not of the boundaries ``F_i`` of docs/method.md §1): the per-image loss is
``loss(logits, y, reduction="sum")``, so ``grad_x`` of it holds every image's own gradient.

* ``"cure"`` (Moosavi-Dezfooli et al. 2019): ``mean_b ||grad l(x_b + h z_b) - grad l(x_b)||^2``
  with ``z_b = sign(grad l(x_b)) / ||sign(grad l(x_b))||`` (a unit l2 vector). ``z`` is detached
  (sign has zero derivative almost everywhere, so nothing is lost); both gradients are
  differentiated (double backward). A finite difference of gradients at scale ``h``: also what
  ReLU nets need. It needs only gradients of the batch's summed loss, so it works in any mode:
  in train mode with BatchNorm the image gradients are those of the summed loss, coupled
  through the batch statistics.
* ``"eig"``: ``mean_b |lambda_b|``, ``lambda_b`` the eigenvalue of largest magnitude of the
  input Hessian ``grad^2 l(x_b)`` (its spectral norm), from ``iters`` batched power steps of
  exact Hessian-vector products; the power vectors are detached and only the last product, the
  Rayleigh quotient ``v^T H v``, is differentiated (its derivative in v vanishes at an
  eigenvector). It needs per-image Hessians: the Hessian of the summed loss must be block
  diagonal, which BatchNorm using batch statistics (train mode) breaks; it refuses such a model
  (call it under ``model.eval()`` or use ``"cure"``).

BatchNorm running statistics are not updated by the penalty's forward passes. Dropout in train
mode draws its own masks in each of them (from the global RNG): "cure"'s two passes then differ
by their masks too; "eig" runs one forward pass.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from curvext.training.monitor import trainable_parameters
from curvext.utils.validation import require_positive_int

KINDS = ("cure", "eig")


def batch_coupled_modules(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules of ``model`` that normalise by batch statistics now (train
    mode, or no running statistics): through them every image's output depends on the batch."""
    return [name or type(m).__name__ for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and (m.training or m.running_mean is None or m.running_var is None)]


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module):
    """BatchNorm layers in train mode keep normalising by batch statistics, but their running
    statistics and ``num_batches_tracked`` stay as they are (momentum 0 in the body)."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            tracked = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            saved.append((m, m.momentum, tracked))
            m.momentum = 0.0  # running = (1 - 0) running + 0 batch: unchanged
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(tracked)


def _loss_and_grad(model, x, y, loss, create_graph: bool):
    """``(sum_b l_b, grad_x sum_b l_b)`` at ``x`` (a leaf requiring grad)."""
    value = loss(model(x), y, reduction="sum")
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        raise ValueError("loss(logits, y, reduction='sum') must return a scalar tensor, got "
                         f"{getattr(value, 'shape', type(value).__name__)}")
    (g,) = torch.autograd.grad(value, x, create_graph=create_graph)
    return value, g


def curvature_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "cure",
                      h: float = 0.5, iters: int = 4, loss: Callable = F.cross_entropy, seed: int = 0) -> torch.Tensor:
    """A differentiable scalar curvature penalty of ``model``'s loss at the images ``x``.

    Args:
        model: the classifier being trained (any mode for "cure"; per-image outputs for "eig").
        x: ``(B, ...)`` floating inputs, B >= 1, finite (the same ones the loss is taken at).
        y: targets of ``loss``, first dimension B (class labels ``(B,)`` int64 for cross-entropy).
        kind: "cure" or "eig" (see the module docstring).
        h: "cure"'s finite-difference step: the l2 length of ``h z`` in input units.
        iters: "eig"'s power steps (the last one differentiable), >= 1.
        loss: ``loss(logits, y, reduction="sum")`` -> the batch's summed loss, a scalar.
        seed: seeds "eig"'s random start vectors (the global RNG is not used).

    Returns:
        a 0-dim tensor in x's dtype that gradients flow from into the parameters.
    """
    trainable_parameters(model)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating (B, ...) tensor of inputs, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0)")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"x must be finite; non-finite values in input(s) {bad[:10]}")
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be a tensor of targets with first dimension B = {x.shape[0]}, got "
                         f"{tuple(getattr(y, 'shape', ())) or type(y).__name__}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("curvature_penalty differentiates through input gradients, which "
                           "torch.inference_mode() disables; call it in the training step")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), frozen_running_stats(model):
        if kind == "cure":
            if isinstance(h, bool) or not isinstance(h, (int, float)) or not (math.isfinite(h) and h > 0):
                raise ValueError(f"h must be a positive finite step, got {h!r}")
            return _cure(model, x, y, float(h), loss)
        require_positive_int(iters, "iters")
        coupled = batch_coupled_modules(model)
        if coupled:
            raise ValueError(f"kind='eig' needs per-image input Hessians, but these BatchNorm layers normalise by "
                             f"batch statistics (train mode), coupling the images: {coupled[:5]}. Use kind='cure' "
                             "(a sum penalty, fine in train mode) or compute it with the model in eval mode")
        return _eig(model, x, y, iters, loss, seed)


def _cure(model, x, y, h, loss):
    _, g0 = _loss_and_grad(model, x, y, loss, create_graph=True)
    sign = torch.sign(g0.detach())
    z = sign / sign.flatten(1).norm(dim=1).clamp_min(1.0).view((-1,) + (1,) * (x.dim() - 1))
    # x + h z as a new leaf: the gradient at the shifted point is taken with respect to it.
    shifted = (x.detach() + h * z).requires_grad_(True)
    _, g1 = _loss_and_grad(model, shifted, y, loss, create_graph=True)
    return (g1 - g0).flatten(1).pow(2).sum(dim=1).mean()


def _hessian_vector(g, x, v, create_graph: bool) -> torch.Tensor:
    """``H v`` from the gradient ``g`` built with ``create_graph``; zeros (still attached to the
    parameters through ``g``) where ``g`` does not depend on ``x`` (a loss linear in x)."""
    if g.requires_grad:
        (hv,) = torch.autograd.grad(g, x, grad_outputs=v, retain_graph=True, create_graph=create_graph,
                                    allow_unused=True)
        if hv is not None:
            return hv
        return g * 0 if create_graph else torch.zeros_like(x)
    return torch.zeros_like(x)


def _eig(model, x, y, iters, loss, seed):
    _, g = _loss_and_grad(model, x, y, loss, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    rows = (-1,) + (1,) * (x.dim() - 1)
    for i in range(iters):
        v = v / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny).view(rows)
        last = i == iters - 1
        hv = _hessian_vector(g, x, v, last)
        if last:
            return (hv * v).flatten(1).sum(dim=1).abs().mean()
        v = hv.detach()
    raise AssertionError("unreachable")
