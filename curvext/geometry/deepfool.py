"""Batched l2 DeepFool (Moosavi-Dezfooli et al. 2016): minimal perturbations to the boundary.

Each iteration linearises ``F_k = f_k - f_cur`` (``cur`` the label of the current point) for the
candidate classes k, steps to the nearest linearised boundary, ``r = (|F_k| + 1e-4) g_k / ||g_k||^2``
with ``k = argmin |F_k| / ||g_k||``, and repeats until the label of ``x + (1 + overshoot) r_total``
changes (untargeted) or becomes the target (targeted). Untargeted, ``cur`` is the original label
until the run stops; targeted, a point that crossed into a third class is measured against that
class, so each step aims at the target's boundary with the class in the way. Samples that succeed
stop costing work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from curvext.utils import model_checks
from curvext.utils.reprs import ShortRepr


@dataclass(frozen=True, repr=False)
class DeepFoolResult(ShortRepr):
    """Outcome for B images.

    perturbed: ``(B, *shape)`` (images: ``(B, C, H, W)``) ``x + perturbation``, just across the
        boundary.
    perturbation: ``(B, *shape)`` ``(1 + overshoot) * r_total``.
    original: ``(B,)`` int64, the model's label of x.
    labels: ``(B,)`` int64, the model's label of ``perturbed``.
    iterations: ``(B,)`` int64, linearisation steps each sample took.
    converged: ``(B,)`` bool, the label changed (untargeted) or reached the target.
    """

    perturbed: torch.Tensor
    perturbation: torch.Tensor
    original: torch.Tensor
    labels: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    @property
    def norms(self) -> torch.Tensor:
        """``(B,)`` l2 norms of the perturbations."""
        return self.perturbation.flatten(1).norm(dim=1)


def deepfool(model: torch.nn.Module, x: torch.Tensor, *, overshoot: float = 0.02, max_iter: int = 50,
             num_classes: int | None = 10, target: torch.Tensor | None = None) -> DeepFoolResult:
    """Batched l2 DeepFool.

    Args:
        model: classifier in eval mode, ``(B, *shape) -> (B, L)`` logits.
        x: ``(B, *shape)`` inputs: images ``(B, C, H, W)`` or plain vectors ``(B, d)`` (no range is
            imposed: the minimal perturbation is unclamped).
        overshoot: eta; the final point is ``x + (1 + eta) r_total``.
        max_iter: linearisation steps at most.
        num_classes: untargeted candidates: the ``num_classes`` top-scoring classes of x
            (including its own; all when the model has fewer); None for all.
        target: ``(B,)`` int64 classes for a targeted attack (each must differ from the label);
            the run ends when the label is the target, and ``converged`` says whether it got there.
    """
    model_checks.require_eval(model, "model")
    model_checks.check_batch(x, "x")
    if not overshoot >= 0:
        raise ValueError(f"overshoot must be >= 0, got {overshoot!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    x = x.detach()
    B = x.shape[0]
    with torch.no_grad():
        logits0 = model(x)
    L = logits0.shape[1]
    original = logits0.argmax(dim=1)
    if target is not None:
        if not isinstance(target, torch.Tensor) or target.shape != (B,):
            raise ValueError(f"target must be a (B,) = ({B},) int64 tensor, got "
                             f"{getattr(target, 'shape', type(target).__name__)}")
        target = target.to(device=x.device, dtype=torch.long)
        if bool(((target < 0) | (target >= L)).any()):
            raise ValueError(f"target classes must lie in [0, {L})")
        if bool((target == original).any()):
            bad = (target == original).nonzero().flatten().tolist()
            raise ValueError(f"target equals the model's label for image(s) {bad[:10]}")
        candidates = target.view(B, 1)
    else:
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        C = L if num_classes is None else min(num_classes, L)
        order = logits0.argsort(dim=1, descending=True)[:, :C]
        # candidates exclude the image's own class (which is order[:, 0])
        candidates = order[:, 1:]

    r_total = torch.zeros_like(x)
    iterations = torch.zeros(B, dtype=torch.long, device=x.device)
    converged = torch.zeros(B, dtype=torch.bool, device=x.device)
    active = torch.arange(B, device=x.device)
    for _ in range(max_iter):
        xa = (x[active] + (1 + overshoot) * r_total[active]).requires_grad_(True)
        logits = model(xa)
        label = logits.argmax(dim=1)
        done = label != original[active] if target is None else label == target[active]
        converged[active[done]] = True
        keep = ~done
        if not bool(keep.any()):
            break
        active, xa_logits = active[keep], logits[keep]
        r_step = _linearised_step(xa, xa_logits, keep, label[keep], candidates[active])
        r_total[active] += r_step
        iterations[active] += 1
    perturbation = (1 + overshoot) * r_total
    perturbed = x + perturbation
    with torch.no_grad():
        labels = model(perturbed).argmax(dim=1)
    converged = labels != original if target is None else labels == target
    return DeepFoolResult(perturbed, perturbation, original, labels, iterations, converged)


def _linearised_step(xa, logits, keep, orig, candidates):
    """Step to the nearest linearised boundary ``f_k = f_orig`` (``orig``: the current labels of
    the kept rows) for the rows ``keep`` of ``xa`` (b, ...)."""
    b, C = candidates.shape
    rows = torch.arange(b, device=xa.device)
    f_orig = logits[rows, orig]
    best_dist = torch.full((b,), float("inf"), dtype=xa.dtype, device=xa.device)
    best_step = torch.zeros((b,) + xa.shape[1:], dtype=xa.dtype, device=xa.device)
    for c in range(C):
        Fk = logits[rows, candidates[:, c]] - f_orig  # < 0 inside the original region
        (g,) = torch.autograd.grad(Fk.sum(), xa, retain_graph=c + 1 < C)
        g = g[keep]
        gnorm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        dist = Fk.detach().abs() / gnorm
        better = dist < best_dist
        step = ((Fk.detach().abs() + 1e-4) / gnorm**2).view(-1, *([1] * (g.dim() - 1))) * g
        best_dist = torch.where(better, dist, best_dist)
        best_step = torch.where(better.view(-1, *([1] * (g.dim() - 1))), step, best_step)
    return best_step
