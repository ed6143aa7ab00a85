"""1x1 convolutions as matrix products inside curvext's reverse-over-reverse pass.

The exact detector gets each class gradient ``g`` and ``H g`` from one reverse-over-reverse pass
(:func:`curvext.curvature.quadratic_forms._hessian_normal_vectorised`). Its second backward pass goes
through torch's convolution double-backward formula, which always computes the gradient with
respect to the convolution's *weight* as well, whether the weight requires it or not: a
convolution as large as the layer's forward pass, thrown away, since curvext differentiates with
respect to the input only. A 1x1 convolution (stride 1, no padding, one group) is a matrix
product over the channels, ``y[n, :, p] = W x[n, :, p] + b``, whose double-backward formulas
compute only what is asked for (the gain on the MNIST NiN, four of whose eight convolutions
are 1x1, is in BENCHMARKS.md).

:func:`pointwise_as_matmul` is a context in which such ``F.conv2d`` calls (which ``nn.Conv2d``
makes) run as :func:`pointwise_conv2d`. Only CPU tensors are rerouted: cuDNN's kernels have not
been measured against the product yet. Values equal the convolution's to float rounding
(``tests/autodiff/test_pointwise_conv.py``).
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

_CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def pointwise_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(input, weight, bias)`` for a 1x1 ``weight (O, C, 1, 1)`` (stride 1, no padding,
    one group) as a matrix product over the channels: ``input (N, C, H, W)`` or ``(C, H, W)``
    gives ``(N, O, H, W)`` or ``(O, H, W)``, in the input's memory layout (channels-last input,
    ``(N, H, W, C)`` in memory, is one matrix product with the channels innermost)."""
    if _is_channels_last(input):
        y = torch.matmul(input.permute(0, 2, 3, 1), weight.flatten(1).T)
        return (y if bias is None else y + bias).permute(0, 3, 1, 2)
    y = torch.matmul(weight.flatten(1), input.flatten(-2)).unflatten(-1, input.shape[-2:])
    return y if bias is None else y + bias.reshape(-1, 1, 1)


def _is_channels_last(t: torch.Tensor) -> bool:
    """Channels last and not also standard; False for what ``vmap`` cannot answer (it can only
    query the standard layout of a batched tensor)."""
    if t.dim() != 4 or t.is_contiguous():
        return False
    try:
        return t.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:
        return False


def _is_one(value) -> bool:
    """Whether a conv2d stride/dilation/padding-like argument is 1 in every dimension."""
    return value == 1 or (isinstance(value, (tuple, list)) and all(v == 1 for v in value))


def _is_zero_padding(value) -> bool:
    return value in (0, "valid", "same") or (isinstance(value, (tuple, list)) and all(v == 0 for v in value))


def _is_pair(value) -> bool:
    """An int, or a tuple/list of one or two ints (what conv2d accepts for stride and the like)."""
    return isinstance(value, int) or (isinstance(value, (tuple, list)) and len(value) in (1, 2))


def _pointwise_call(args: tuple, kwargs: dict) -> dict | None:
    """The ``conv2d`` call's arguments by name when it is a 1x1 convolution of CPU tensors of one
    dtype (input contiguous or channels last), outside autocast, that :func:`pointwise_conv2d`
    computes exactly as torch would; None otherwise (torch then runs it, and raises its own
    errors)."""
    if len(args) > len(_CONV2D_PARAMETERS) or any(k not in _CONV2D_PARAMETERS for k in kwargs):
        return None
    call = dict(_CONV2D_DEFAULTS, **dict(zip(_CONV2D_PARAMETERS, args)), **kwargs)
    input, weight, bias = call.get("input"), call.get("weight"), call["bias"]
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return None
    if weight.dim() != 4 or weight.shape[-2:] != (1, 1) or input.dim() not in (3, 4):
        return None
    if not (input.is_contiguous() or _is_channels_last(input)):
        return None
    if input.device.type != "cpu" or weight.device.type != "cpu" or input.shape[-3] != weight.shape[1]:
        return None
    if weight.dtype != input.dtype or torch.is_autocast_enabled("cpu"):
        return None
    if bias is not None and not (isinstance(bias, torch.Tensor) and bias.dtype == input.dtype
                                 and bias.device == input.device and tuple(bias.shape) == (weight.shape[0],)):
        return None
    if not all(_is_pair(call[k]) for k in ("stride", "dilation")) or not (
            isinstance(call["padding"], str) or _is_pair(call["padding"])):
        return None
    if call["groups"] != 1 or not _is_one(call["stride"]) or not _is_one(call["dilation"]):
        return None
    return call if _is_zero_padding(call["padding"]) else None


class _PointwiseAsMatmul(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            call = _pointwise_call(args, kwargs)
            if call is not None:
                return pointwise_conv2d(call["input"], call["weight"], call["bias"])
        return func(*args, **kwargs)


@contextlib.contextmanager
def pointwise_as_matmul():
    """A context in which 1x1 convolutions of CPU tensors run as :func:`pointwise_conv2d`."""
    with _PointwiseAsMatmul():
        yield
