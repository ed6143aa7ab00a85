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


def is_piecewise_linear(model: torch.nn.Module) -> bool:
    """True when the model contains ReLU-like or max-pool layers (exact input Hessian ~ 0)."""
    return any(isinstance(m, _PIECEWISE_LINEAR) for m in model.modules())


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
