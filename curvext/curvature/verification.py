"""A one-off check of forward-mode second derivatives against reverse mode, per model.

PyTorch's nested forward-mode rules are wrong for some operations (layer norm in torch 2.14,
pytorch/pytorch#196700; more are listed in #198017), while reverse mode is right. curvext corrects
the ones it knows (:mod:`curvext.autodiff.forward_mode`); against the others, :func:`verify_once`
compares the forward-mode sums ``sum_j v_j^T H v_j`` that the exact detector uses with
reverse-over-reverse products on one image of a float64 copy of the model, and raises instead of
letting wrong curvatures through.
"""
from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

from curvext.autodiff import forward_mode
from curvext.autodiff.taylor_plan import module_signature
from curvext.curvature.quadratic_forms import logit_quadratic_form_sums

logger = logging.getLogger(__name__)


#: models verified by :func:`verify_once`, with the module signature they were verified for.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def verify_once(model: nn.Module, x: torch.Tensor, directions: int = 2, logits: int = 3,
                rtol: float = 1e-6) -> None:
    """Check curvext's forward-mode ``sum_j v_j^T H_l v_j`` against reverse-over-reverse
    Hessian-vector products for the ``logits`` highest logits of the image ``x[:1]`` and
    ``directions`` random directions, on a float64 CPU copy of ``model``; once per model (again
    after a module is replaced). Raises RuntimeError when they differ by more than ``rtol`` of
    their size. A model that cannot be copied to float64 on the CPU is not checked (logged)."""
    signature = module_signature(model)
    if _VERIFIED.get(model) != signature:
        _check_against_reverse_mode(model, x, directions, logits, rtol)
        _VERIFIED[model] = signature


def _float64_cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its tensors made directly on the CPU in float64 (a model on a
    GPU is not duplicated there first)."""
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        moved = t.detach().to(device="cpu", dtype=torch.float64 if t.is_floating_point() else t.dtype)
        memo[id(t)] = nn.Parameter(moved, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else moved
    return copy.deepcopy(model, memo).to(device="cpu", dtype=torch.float64)


def _check_against_reverse_mode(model: nn.Module, x: torch.Tensor, directions: int, logits: int,
                                rtol: float) -> None:
    """The comparison of :func:`verify_once`, every time it is called."""
    try:
        reference = _float64_cpu_copy(model)
        image = x[:1].detach().to(device="cpu", dtype=torch.float64)
        with torch.no_grad():
            output = reference(image)[0]
        top = output.topk(min(logits, output.shape[0])).indices
    except Exception as err:  # noqa: BLE001  (CUDA-only operations, non-copyable modules, ...)
        logger.warning("forward mode not verified for %s: %s", type(model).__name__, err)
        return
    g = torch.Generator().manual_seed(0)
    V = torch.randn((directions,) + image.shape[1:], generator=g, dtype=torch.float64)
    try:
        forward = logit_quadratic_form_sums(reference, image, V, "autograd", 0.0)[0, top]
        backward = torch.zeros_like(forward)
        point = image.clone().requires_grad_(True)
        # Reverse mode is right either way; attention needs a backend with double-backward rules.
        with torch.enable_grad(), forward_mode.corrected():
            for i, logit in enumerate(top.tolist()):
                (gradient,) = torch.autograd.grad(reference(point)[0, logit], point, create_graph=True)
                for v in V:
                    (hv,) = torch.autograd.grad(gradient, point, grad_outputs=v.unsqueeze(0), retain_graph=True)
                    backward[i] += (hv * v).sum().detach()
    except (RuntimeError, NotImplementedError) as err:  # no second derivative at all: the passes say so
        logger.info("forward mode not verified for %s: %s", type(model).__name__, str(err).splitlines()[0][:200])
        return
    scale = float(torch.maximum(forward.abs(), backward.abs()).max())
    difference = float((forward - backward).abs().max())
    if difference > rtol * scale:
        raise RuntimeError(
            f"method='autograd': on {type(model).__name__}, PyTorch's nested forward mode disagrees with reverse "
            f"mode (sum of v^T H v, relative difference {difference / scale:.1e} on a float64 copy): an operation "
            f"in the model has a wrong second-order forward rule, as layer_norm has in torch 2.14 "
            f"(pytorch/pytorch#196700). Use method='fd' or 'fd2', or replace that operation")
