"""Nested forward mode that stays correct where PyTorch's own second-order rule is wrong.

curvext's second directional derivatives ``v^T H v`` nest ``torch.func.jvp`` (forward over
forward), directly on models without a :mod:`curvext.autodiff.taylor_plan` plan and node by node in that
module's rule for layer norms and softmaxes. In torch 2.14 the forward-mode formula of
``layer_norm`` is right to first order but its own derivative is not, so nested forward mode
returns wrong second derivatives for every model with a LayerNorm (ViTs, ConvNeXts), silently
(pytorch/pytorch#196700, one of the forward-mode bugs collected in #198017; reverse mode is right).
``instance_norm``'s nested rule is wrong the same way.

:func:`layer_norm` and :func:`instance_norm` are the textbook decompositions (mean, biased
variance, ``rsqrt``), whose elementary operations have correct nested rules; :func:`corrected` is
a context in which ``F.layer_norm``, ``torch.layer_norm`` and ``F.instance_norm`` calls (which
``nn.LayerNorm`` and ``nn.InstanceNorm*d`` make) run them instead. Values equal torch's to rounding;
``tests/autodiff/test_forward_mode.py`` checks second
derivatives against reverse-over-reverse Hessians.

The context also runs adaptive average pooling on a contiguous copy of its input: on
channels-last input (a 1x1 convolution's output often is) ``vmap`` has no batching rule for it and
loops over the rows with a warning.

Other operations may have the same kind of bug (#198017 lists several), so
:func:`curvext.curvature.verification.verify_once` compares, once per model, the forward-mode
sums ``sum_j v_j^T H v_j`` that the exact detector uses with reverse-over-reverse products on one
image, in float64, and raises when they disagree instead of returning wrong curvatures.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
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


def _per_channel_affine(out: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``out * weight + bias`` with both per channel (dimension 1 of ``out``), either may be None."""
    per_channel = (1, -1) + (1,) * (out.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(per_channel)
    if bias is not None:
        out = out + bias.reshape(per_channel)
    return out


def instance_norm(input: torch.Tensor, running_mean: torch.Tensor | None = None,
                  running_var: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm`` as elementary operations: each image's channels normalised over their
    own positions (biased variance), or by the running statistics when ``use_input_stats`` is
    False (which are not updated: curvext only evaluates models)."""
    dims = tuple(range(2, input.dim()))
    per_channel = (1, -1) + (1,) * len(dims)
    if use_input_stats:
        centred = input - input.mean(dim=dims, keepdim=True)
        out = centred * torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
    else:
        out = (input - running_mean.reshape(per_channel)) * torch.rsqrt(running_var.reshape(per_channel) + eps)
    return _per_channel_affine(out, weight, bias)


def group_norm(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` as elementary operations (each image's channel groups normalised)."""
    grouped = input.reshape(input.shape[0], num_groups, -1)
    centred = grouped - grouped.mean(dim=2, keepdim=True)
    out = (centred * torch.rsqrt(centred.square().mean(dim=2, keepdim=True) + eps)).reshape(input.shape)
    return _per_channel_affine(out, weight, bias)


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` with running statistics (evaluation) as elementary operations; batch
    statistics are left to torch (they mix the images, which curvext's passes refuse)."""
    if training or running_mean is None or running_var is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    per_channel = (1, -1) + (1,) * (input.dim() - 2)
    out = (input - running_mean.reshape(per_channel)) * torch.rsqrt(running_var.reshape(per_channel) + eps)
    return _per_channel_affine(out, weight, bias)


def _contiguous_input(pool):
    """``pool`` on a contiguous copy of its input: ``vmap`` has no batching rule for what adaptive
    average pooling does to channels-last input (which a 1x1 convolution's output often is), and
    falls back to a per-row loop with a warning."""
    def pooled(input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return pool(input.contiguous(), *args, **kwargs)

    return pooled


_REPLACED = {F.layer_norm: layer_norm, torch.layer_norm: layer_norm, F.instance_norm: instance_norm,
             F.group_norm: group_norm, F.batch_norm: batch_norm,
             **{pool: _contiguous_input(pool) for pool in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                                                          F.adaptive_avg_pool3d)}}


def replaces(fn) -> bool:
    """Whether :func:`corrected` runs ``fn`` (a torch function) as a decomposition."""
    try:
        return fn in _REPLACED
    except TypeError:  # unhashable callables
        return False


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


@contextlib.contextmanager
def corrected():
    """A context (``with forward_mode.corrected(): ...``) for second-order passes: operations
    with a wrong nested forward-mode rule run as their decompositions, and scaled-dot-product
    attention (``nn.MultiheadAttention``, ViTs) on its math backend, whose elementary operations
    have forward-mode and double-backward rules (torch 2.14's fused CPU flash kernel has
    neither)."""
    with sdpa_kernel([SDPBackend.MATH]), _Corrected():
        yield
