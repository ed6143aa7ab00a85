"""Keys for the resumable caches of long runs (``curvext evaluate``, ``curvext profile``).

A cached result may be reused only when everything that produced it is the same: the model's
architecture *and weights*, the input images and the settings. Two checkpoints with the same
architecture (or a model retrained in place) must never share cache entries, so models are keyed
by a digest of their parameters and buffers, not by a name.
"""
from __future__ import annotations

import hashlib
import json
import re

import torch


def _update_with_tensor(h, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    # Bytes of any dtype (bfloat16 has no numpy type); reshape(-1) also covers 0-d tensors.
    h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(x: torch.Tensor) -> str:
    """12 hex digits identifying a tensor's dtype, shape and values (on any device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    h = hashlib.sha256()
    _update_with_tensor(h, x)
    return h.hexdigest()[:12]


def model_digest(model: torch.nn.Module) -> str:
    """12 hex digits identifying a model: its class, its module structure (``repr``), the code
    of every graph it holds (TorchScript, ``torch.fx``/``torch.export``: two exported programs with
    the same weights but other activations differ only there; device literals masked) and every
    parameter, buffer (non-persistent ones too) and tensor attribute (an exported program's
    lifted constants): names, dtypes, shapes, values. Hashes every weight once."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, m in model.named_modules():
        code = _graph_code(m)
        if code:
            h.update(f"{name}:{code}".encode())
        # Plain tensor attributes: the constants a torch.export program lifts out of its forward.
        tensors += [(f"{name}.{k}" if name else k, v) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
    for name, t in sorted(tensors, key=lambda item: item[0]):
        h.update(name.encode())
        _update_with_tensor(h, t)
    return h.hexdigest()[:12]


_DEVICE_LITERAL = re.compile(r"device\s*=\s*(device\([^)]*\)|'[^']*'|\"[^\"]*\")")


def _graph_code(m: torch.nn.Module) -> str:
    """The code of a TorchScript or ``torch.fx`` module's own forward, else ``""``, with device
    literals masked: a program moved to another device (``cuda:1`` on another torchrun rank) is
    the same model."""
    if isinstance(m, (torch.fx.GraphModule, torch.jit.ScriptModule)):
        try:
            return _DEVICE_LITERAL.sub("device=?", str(m.code))
        except (AttributeError, RuntimeError):  # a ScriptModule without a forward of its own
            return ""
    return ""


def settings_key(settings: dict) -> str:
    """12 hex digits identifying JSON-able ``settings`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
