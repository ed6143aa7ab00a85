"""Checks on models and images shared by the curvature entry points; messages name the argument."""
from __future__ import annotations

import copy

import torch

_PIECEWISE_LINEAR = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.MaxPool1d,
                     torch.nn.MaxPool2d, torch.nn.MaxPool3d, torch.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool2d,
                     torch.nn.AdaptiveMaxPool3d, torch.nn.Hardtanh, torch.nn.PReLU)


def require_eval(model: torch.nn.Module, name: str = "model") -> None:
    """Refuse a model with any sub-module in training mode.

    Batched per-sample Hessians need every sample's output to depend on that sample alone;
    BatchNorm in train mode (batch statistics) and dropout break that.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    training = [n or type(model).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"{name} must be in eval mode (call {name}.eval()): batched curvature needs per-sample "
            f"outputs, but these modules are in training mode: {training[:5]}"
        )


_PIECEWISE_LINEAR_NAMES = frozenset(c.__name__ for c in _PIECEWISE_LINEAR)
# The same layers as operators or functions in a graph (also functional calls like F.relu).
_PIECEWISE_LINEAR_OPS = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "prelu", "max_pool1d",
    "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"})


def _op_name(target) -> str:
    """``aten.relu.default`` / ``torch.relu`` / ``F.relu`` / ``"relu"`` (a method) -> ``"relu"``."""
    if isinstance(target, str):
        return target
    text = str(target)
    if text.startswith("aten."):  # an OpOverload: aten.<name>.<overload>
        return text.split(".")[1]
    return getattr(target, "__name__", text)


def _graph_has_piecewise_linear_ops(m: torch.nn.Module) -> bool:
    """Operators of a torch.fx / torch.export graph or a TorchScript graph held by ``m``."""
    if isinstance(m, torch.fx.GraphModule):
        return any(_op_name(n.target) in _PIECEWISE_LINEAR_OPS for n in m.graph.nodes
                   if n.op in ("call_function", "call_method"))
    if isinstance(m, torch.jit.ScriptModule):
        try:
            graph = str(m.inlined_graph)
        except (AttributeError, RuntimeError):  # no forward graph to read
            return False
        return any(f"aten::{op}(" in graph for op in _PIECEWISE_LINEAR_OPS)
    return False


def is_piecewise_linear(model: torch.nn.Module) -> bool:
    """True when the model contains ReLU-like or max-pool layers (exact input Hessian ~ 0): as
    modules of those classes, as TorchScript modules traced or scripted from them (their
    ``original_name``), or as operators or functions anywhere in a TorchScript, ``torch.fx`` or
    ``torch.export`` graph inside the model (also behind wrappers such as
    :class:`curvext.data.normalization.Normalized`). An eager model whose own ``forward`` calls
    ``F.relu`` is found by tracing it symbolically with ``torch.fx``; one that cannot be traced
    (data-dependent control flow) is judged by its modules alone."""
    for m in model.modules():
        if isinstance(m, _PIECEWISE_LINEAR) or getattr(m, "original_name", None) in _PIECEWISE_LINEAR_NAMES:
            return True
        if _graph_has_piecewise_linear_ops(m):
            return True
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        return False  # their graphs were read above
    try:
        traced = torch.fx.symbolic_trace(structural_copy(model))
    except Exception:  # noqa: BLE001  (tracing fails in many ways on dynamic Python code)
        return False
    return _graph_has_piecewise_linear_ops(traced)


def structural_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the modules and their Python attributes that shares every parameter and buffer
    (no tensor memory is copied). Tracing runs the real ``forward`` with proxies, and whatever a
    forward stores on ``self`` (caches, counters) must land on the copy, not the user's model."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def check_batch(x: torch.Tensor, name: str = "x", noun: str = "sample") -> None:
    """``x`` must be a floating ``(B, *shape)`` batch with B >= 1 and at least one dimension per
    sample (images, or plain vectors for analytic models), with finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must be a (B, *shape) batch with at least one dimension per sample, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite; non-finite values in {noun}(s) {bad[:10]}")


def check_images(x: torch.Tensor, name: str = "x", input_range: tuple | None = (0.0, 1.0)) -> None:
    """``x`` must be a floating ``(B, C, H, W)`` batch, B >= 1, finite, inside ``input_range``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    check_batch(x, name, noun="image")
    if input_range is not None:
        lo, hi = input_range
        outside = ((x < lo) | (x > hi)).flatten(1).any(dim=1)
        if bool(outside.any()):
            bad = outside.nonzero().flatten().tolist()
            raise ValueError(
                f"{name} must lie in the model's input range [{lo}, {hi}]; image(s) {bad[:10]} do "
                f"not (min {float(x.min()):.4g}, max {float(x.max()):.4g}). Pass input_range=None "
                "to skip this check."
            )


def output_count(model: torch.nn.Module, shape: tuple, device=None, hint: str = "") -> int:
    """The number of outputs of ``model`` for one blank input of ``shape`` (without the batch
    dimension); a ValueError naming the shape (and ``hint``, the options that set it) when the
    model rejects it, instead of a raw error from inside the model."""
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *shape), device=device))
    except RuntimeError as err:
        raise ValueError(f"the model rejects inputs of shape {tuple(shape)}: {str(err).splitlines()[0][:160]}"
                         + (f"; {hint}" if hint else "")) from None
    if out.dim() != 2:
        raise ValueError(f"the model must return (B, L) logits, got shape {tuple(out.shape)} for one input")
    return int(out.shape[1])
