"""Calling a user's batched operator ``op(V, index)`` with checks on what it returns."""
from __future__ import annotations

from collections.abc import Callable

import torch

from curvext.linalg import _validate
from curvext.linalg._derivatives import refuse_gradients

BatchedOperator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_start(name: str, v0: torch.Tensor) -> torch.Tensor:
    """Validate a start batch ``(B, *shape)`` and return it flattened to ``(B, n)``. A start that
    requires grad is refused: the solvers' results carry no gradient."""
    _validate.floating(name, v0)
    refuse_gradients("curvext's eigensolvers", **{name: v0})
    _validate.batch(name, v0)
    _validate.finite(name, v0)
    flat = v0.reshape(v0.shape[0], -1)
    zero = (flat.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"{name} must be non-zero in every sample; zero vector in sample(s) {zero[:10]}")
    return flat


def apply(op: BatchedOperator, flat: torch.Tensor, index: torch.Tensor, shape: torch.Size,
          check: bool) -> torch.Tensor:
    """Return ``op`` applied to the rows ``flat (b, n)`` of samples ``index``, as ``(b, n)``.

    With ``check``, the result's shape, dtype and device are validated (done on the first call
    of a solve; later calls trust the operator to stay consistent). The result is detached: the
    solvers do not differentiate through the operator.
    """
    out = op(flat.reshape((flat.shape[0],) + tuple(shape)), index)
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out = out.detach()
    if check:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"op must return a torch.Tensor, got {type(out).__name__}")
        expected = (flat.shape[0],) + tuple(shape)
        if tuple(out.shape) != expected:
            raise ValueError(f"op(V, index) must return shape {expected} (that of V), got {tuple(out.shape)}")
        if out.dtype != flat.dtype or out.device != flat.device:
            raise TypeError(
                f"op must return {flat.dtype} on {flat.device} like V, got {out.dtype} on {out.device}"
            )
    return out.reshape(flat.shape[0], -1)


def nonfinite_rows(w: torch.Tensor) -> torch.Tensor:
    """``(b,)`` bool, on w's device, True where a product has a NaN or inf (no sync)."""
    return ~torch.isfinite(w).all(dim=1)


def raise_nonfinite(bad_samples: list[int]) -> None:
    raise FloatingPointError(
        f"op(V, index) returned non-finite values for sample(s) {bad_samples[:10]} of the batch"
    )
