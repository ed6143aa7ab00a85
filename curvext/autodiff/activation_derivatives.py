"""Closed-form values, first and second derivatives of common smooth activations, element by element.

:mod:`curvext.autodiff.taylor_rules` needs ``sigma(z)``, ``sigma'(z)`` and ``sigma''(z)`` at every
element-wise activation. Its generic route differentiates the activation twice by reverse mode,
which evaluates the activation three times and its backward formulas twice. For the activations
below all three follow from one or two cheap evaluations instead; on the MNIST NiN (Softplus) that
was about a fifth of the eager Taylor-mode pass.

Softplus's value is :func:`softplus`: torch's CPU kernel spends most of its time in a scalar
``log1p`` (about 20 sigmoids' worth); here ``log1p`` comes from the vectorised ``log`` with the
classic correction, to a few units in the last place.

Each formula mirrors what torch's own forward, backward and double-backward formulas compute,
including Softplus's switch to the identity above ``threshold`` (slope 1, no curvature there), and
is tested against them in float64 (``tests/autodiff/test_activation_derivatives.py``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.nn import functional as F

#: ``z -> (sigma(z), sigma'(z), sigma''(z))``, element by element.
Derivatives = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _log1p_of_unit_interval(t: torch.Tensor) -> torch.Tensor:
    """``log(1 + t)`` for ``t`` in [0, 1] from ``log`` (vectorised on the CPU, unlike ``log1p``):
    ``log(u) * t / (u - 1)`` with ``u = 1 + t`` cancels the rounding of ``u`` (Goldberg, 1991).
    Values only: the expression's own derivative cancels badly (see :func:`softplus`)."""
    u = 1 + t
    rounded = u - 1
    return torch.where(rounded == 0, t, torch.log(u) * (t / torch.where(rounded == 0, 1, rounded)))


def _softplus_value(z: torch.Tensor, beta: float, threshold: float) -> torch.Tensor:
    if z.dtype in (torch.float16, torch.bfloat16):  # as torch does: compute in float32, round once
        return _softplus_value(z.float(), beta, threshold).to(z.dtype)
    scaled = z * beta
    smooth = (scaled.clamp_min(0) + _log1p_of_unit_interval(torch.exp(-scaled.abs()))) / beta
    return torch.where(scaled > threshold, z, smooth)


def _differentiated(z: torch.Tensor) -> bool:
    """Whether an autograd mode may differentiate through operations on ``z``: reverse mode
    recording it, a ``torch.func`` transform, or a forward-mode dual level."""
    if (torch.is_grad_enabled() and z.requires_grad) or torch._C._are_functorch_transforms_active():
        return True
    # torch.compile cannot trace the dual-tensor query (nor make dual tensors in a compiled region).
    return not torch.compiler.is_compiling() and fwAD.unpack_dual(z).tangent is not None


def softplus(z: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """``F.softplus(z, beta, threshold)``: ``log(1 + exp(beta z)) / beta``, ``z`` itself where
    ``beta z > threshold``. Evaluated without differentiation (the Taylor-mode walk), it is
    ``max(beta z, 0) + log1p(exp(-|beta z|))``, exact in both tails (float16 and bfloat16 in
    float32, as torch does); when anything differentiates through it, it is ``F.softplus``
    itself, whose derivative formulas every autograd mode knows (the expression's own cancel)."""
    if _differentiated(z):
        return F.softplus(z, beta, threshold)
    return _softplus_value(z, beta, threshold)


def _softplus(beta: float, threshold: float) -> Derivatives:
    def derivatives(z):
        scaled = z * beta
        s = torch.sigmoid(scaled)
        slope = torch.where(scaled > threshold, torch.ones_like(s), s)  # the identity above threshold
        bend = torch.where(scaled < threshold, beta * s * (1 - s), torch.zeros_like(s))
        return softplus(z, beta, threshold), slope, bend

    return derivatives


def _tanh(z):
    y = torch.tanh(z)
    slope = 1 - y * y
    return y, slope, -2 * y * slope


def _sigmoid(z):
    y = torch.sigmoid(z)
    slope = y * (1 - y)
    return y, slope, slope * (1 - 2 * y)


def _silu(z):
    s = torch.sigmoid(z)
    return z * s, s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


def closed_form(fn, args: tuple, kwargs: dict) -> Derivatives | None:
    """The closed form for the activation ``fn`` called as ``fn(z, *args[1:], **kwargs)`` (an
    ``nn.Module`` or a torch function), or None when there is none (the caller differentiates
    ``fn`` generically). Subclasses of the modules below are not matched: they may override
    ``forward``."""
    kind = type(fn)
    if kind is nn.Softplus:
        return _softplus(fn.beta, fn.threshold)
    if fn is F.softplus:
        beta = args[1] if len(args) > 1 else kwargs.get("beta", 1.0)
        threshold = args[2] if len(args) > 2 else kwargs.get("threshold", 20.0)
        return _softplus(beta, threshold)
    if kind is nn.Tanh or fn is torch.tanh or fn is F.tanh:
        return _tanh
    if kind is nn.Sigmoid or fn is torch.sigmoid or fn is F.sigmoid:
        return _sigmoid
    if kind is nn.SiLU or fn is F.silu:
        return _silu
    return None
