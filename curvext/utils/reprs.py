"""Short ``repr`` for result dataclasses: tensors as their shape, dtype and device, not their
values (a result of 64 images would otherwise print thousands of numbers)."""
from __future__ import annotations

import dataclasses

import torch


def describe(value) -> str:
    """``Tensor(64, 20) float64 cpu`` for a tensor; ``repr`` for anything else (lists of tensors
    are summarised by their length)."""
    if isinstance(value, torch.Tensor):
        device = "" if value.device.type == "cpu" else f" {value.device}"
        return f"Tensor{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}{device}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return f"[{len(value)} tensors]"
    return repr(value)


class ShortRepr:
    """Mixin for ``@dataclass(frozen=True, repr=False)`` results: ``Name(field=Tensor(B, k) float64, ...)``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={describe(getattr(self, f.name))}" for f in dataclasses.fields(self)
                           if f.repr)
        return f"{type(self).__name__}({fields})"
