"""Short ``repr`` for result dataclasses: tensors as their shape, dtype and device, not their
values (a result of 64 images would otherwise print thousands of numbers)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch


def describe(value) -> str:
    """``Tensor(64, 20) float64`` for a tensor (with its device when not the CPU), ``ndarray(64,)
    float64`` for an array, a dict with its values so described; lists of tensors, or of more
    than 4 items, summarised by their length; ``repr`` for anything else."""
    if isinstance(value, torch.Tensor):
        device = "" if value.device.type == "cpu" else f" {value.device}"
        return f"Tensor{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}{device}"
    if isinstance(value, np.ndarray):
        return f"ndarray{value.shape} {value.dtype}"
    if isinstance(value, dict) and any(isinstance(v, (torch.Tensor, np.ndarray)) for v in value.values()):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return f"[{len(value)} tensors]"
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} {type(value[0]).__name__}]"
    return repr(value)


class ShortRepr:
    """Mixin for ``@dataclass(frozen=True, repr=False)`` results: ``Name(field=Tensor(B, k) float64, ...)``."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={describe(getattr(self, f.name))}" for f in dataclasses.fields(self)
                           if f.repr)
        return f"{type(self).__name__}({fields})"
