"""Checks on models and images shared by the curvature entry points; messages name the argument."""
from __future__ import annotations

import torch

_PIECEWISE_LINEAR = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.MaxPool1d,
                     torch.nn.MaxPool2d, torch.nn.MaxPool3d, torch.nn.Hardtanh, torch.nn.PReLU)


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
# The same layers as operators of a TorchScript graph (also catches functional calls like F.relu).
_PIECEWISE_LINEAR_OPS = ("aten::relu", "aten::relu_", "aten::relu6", "aten::leaky_relu", "aten::hardtanh",
                         "aten::prelu", "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d",
                         "aten::max_pool2d_with_indices")


def is_piecewise_linear(model: torch.nn.Module) -> bool:
    """True when the model contains ReLU-like or max-pool layers (exact input Hessian ~ 0): as
    modules of those classes, as TorchScript modules traced or scripted from them (their
    ``original_name``), or as operators anywhere in a TorchScript or ``torch.fx``/``torch.export``
    graph. An eager model
    that calls ``F.relu`` in its own ``forward`` is not seen; pass the method explicitly there."""
    for m in model.modules():
        if isinstance(m, _PIECEWISE_LINEAR) or getattr(m, "original_name", None) in _PIECEWISE_LINEAR_NAMES:
            return True
    if isinstance(model, torch.fx.GraphModule):  # e.g. a torch.export program's module
        targets = {str(n.target) for n in model.graph.nodes if n.op == "call_function"}
        return any(t.startswith(op.replace("::", ".") + ".") or t == op.replace("::", ".")
                   for t in targets for op in _PIECEWISE_LINEAR_OPS)
    if isinstance(model, torch.jit.ScriptModule):
        try:
            graph = str(model.inlined_graph)
        except (AttributeError, RuntimeError):  # no forward graph to read
            return False
        return any(f"{op}(" in graph for op in _PIECEWISE_LINEAR_OPS)
    return False


def check_images(x: torch.Tensor, name: str = "x", input_range: tuple | None = (0.0, 1.0)) -> None:
    """``x`` must be a floating ``(B, C, H, W)`` batch, B >= 1, finite, inside ``input_range``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) batch of images, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite; non-finite values in image(s) {bad[:10]}")
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
