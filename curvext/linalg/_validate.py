"""Argument checks shared by the eigensolver wrappers; messages name the argument."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def finite(name: str, t: torch.Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = bad.reshape(t.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if t.dim() else []
        raise ValueError(f"{name} must be finite; non-finite values in sample(s) {rows[:10]}")


def same_device_dtype(ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")


def batch(name: str, t: torch.Tensor, min_dim: int = 2) -> None:
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have shape (B, ...) with at least {min_dim} dims, got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0)")
    if t[0].numel() == 0:
        raise ValueError(f"{name} has zero elements per sample, shape {tuple(t.shape)}")


def choice(name: str, value, allowed) -> None:
    if value not in allowed:
        options = ", ".join(sorted(repr(a) for a in allowed))
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
