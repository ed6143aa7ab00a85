"""Nested forward mode that stays correct where PyTorch's own second-order rule is wrong.

curvext's second directional derivatives ``v^T H v`` nest ``torch.func.jvp`` (forward over
forward), directly on models without a :mod:`curvext.taylor_mode` plan and node by node in that
module's rule for layer norms and softmaxes. In torch 2.14 the forward-mode formula of
``layer_norm`` is right to first order but its own derivative is not, so nested forward mode
returns wrong second derivatives for every model with a LayerNorm (ViTs, ConvNeXts), silently
(pytorch/pytorch#196700, one of the forward-mode bugs collected in #198017; reverse mode is right).

:func:`layer_norm` is the textbook decomposition (mean, biased variance, ``rsqrt``), whose
elementary operations have correct nested rules; :func:`corrected` is a context in which
``F.layer_norm`` and ``torch.layer_norm`` calls (``nn.LayerNorm`` makes the former) run it
instead. Values equal torch's to rounding; ``tests/test_forward_mode.py`` checks second
derivatives against reverse-over-reverse Hessians.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode


def layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm`` as elementary operations: normalised over the last
    ``len(normalized_shape)`` dimensions with the biased variance, then scaled and shifted."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    dims = tuple(range(-len(shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


_REPLACED = {F.layer_norm: layer_norm, torch.layer_norm: layer_norm}


class _Corrected(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        replacement = _REPLACED.get(func)
        if replacement is not None:
            if func is torch.layer_norm:  # (input, normalized_shape, weight, bias, eps, cudnn_enable)
                args = args[:5]
                kwargs = {k: v for k, v in kwargs.items() if k != "cudnn_enable"}
            return replacement(*args, **kwargs)
        return func(*args, **kwargs)


def corrected() -> TorchFunctionMode:
    """A context (``with forward_mode.corrected(): ...``) in which the operations with a wrong
    nested forward-mode rule run as their decompositions."""
    return _Corrected()
