"""Principal-curvature profiles at decision-boundary points (the paper's Fig. 5b)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from curvext.curvature.operators import CurvatureOperator
from curvext.geometry.deepfool import deepfool
from curvext.linalg import lanczos
from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class CurvatureProfile(ShortRepr):
    """Principal curvatures of B boundaries (sign convention: docs/method.md §1, see curvext.curvature.operators).

    values: ``(B, m)`` ascending: the k most negative then the k most positive (m = 2k), or the
        whole tangent spectrum (m = d - 1) with ``full=True``.
    vectors: ``(B, m, *shape)`` unit principal directions, or None.
    points: ``(B, *shape)`` where the curvature was measured.
    cls, base: ``(B,)`` the pair, ``F = f_cls - f_base`` (base = the image's own label).
    grad_norm: ``(B,)`` ``||grad F||`` at the points.
    converged: ``(B, m)`` bool (all True for dense spectra). steps: ``(B,)`` operator applications.

    A sample without a boundary to measure (DeepFool did not change its label within its
    iterations, so ``cls == base``) has NaN values, vectors and grad_norm, converged False and
    0 steps; a warning names it.
    """

    values: torch.Tensor
    vectors: torch.Tensor | None
    points: torch.Tensor
    cls: torch.Tensor
    base: torch.Tensor
    grad_norm: torch.Tensor
    converged: torch.Tensor
    steps: torch.Tensor


def curvature_points(model, x, *, at: str = "boundary", pair=None, boundary_fraction: float = 1.0,
                     num_classes: int = 10):
    """Where to measure and which pair: ``(points, cls, base)``.

    at="boundary": DeepFool boundary points ``x + fraction * r``, pair (label across the
    boundary, original label). at="input": x itself, pair given as ``(cls, base)`` tensors or
    the runner-up class against the predicted one.
    """
    if at not in ("boundary", "input"):
        raise ValueError(f"at must be 'boundary' or 'input', got {at!r}")
    if at == "boundary":
        df = deepfool(model, x, num_classes=num_classes)
        return (x + boundary_fraction * df.perturbation).detach(), df.labels, df.original
    if pair is not None:
        cls, base = pair
        return x, cls, base
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    return x, top2[:, 1], top2[:, 0]


def principal_curvatures(model, x: torch.Tensor, *, k: int = 20, at: str = "boundary", method: str = "autograd",
                         h: float | None = None, pair=None, full: bool = False, vectors: bool = False,
                         boundary_fraction: float = 1.0, tol: float = 1e-4, max_steps: int | None = None,
                         basis_size: int | None = None, seed: int = 0) -> CurvatureProfile:
    """The k most positive and k most negative principal curvatures of every image's boundary.

    Args:
        model: classifier in eval mode. x: ``(B, C, H, W)`` images.
        k: curvatures from each end (Lanczos "BE" with 2k values).
        at, pair, boundary_fraction: see :func:`curvature_points`.
        method, h: "autograd" (exact, smooth nets) or "fd" at scale h (ReLU nets).
        full: the whole tangent spectrum from the dense operator (d operator applications per
            image: small d only).
        vectors: also return principal directions.
        tol, max_steps, basis_size, seed: Lanczos settings (:func:`curvext.lanczos`; basis_size
            bounds the vectors stored per image, so memory is ``B x (basis_size + 1) x d``).
    """
    points, cls, base = curvature_points(model, x, at=at, pair=pair, boundary_fraction=boundary_fraction)
    d = points[0].numel()
    if not full and (not isinstance(k, int) or k < 1 or 2 * k > d - 1):
        raise ValueError(f"k must be an int with 1 <= 2k <= d - 1 = {d - 1}, got {k!r}")
    settings = dict(k=k, method=method, h=h, full=full, vectors=vectors, tol=tol, max_steps=max_steps,
                    basis_size=basis_size, seed=seed)
    valid = cls != base
    if bool(valid.all()):
        return _profile(model, points, cls, base, **settings)
    missing = (~valid).nonzero().flatten().tolist()
    logger.warning("no boundary to measure at sample(s) %s (%s): their principal curvatures are NaN", missing[:20],
                   "DeepFool did not change their label" if at == "boundary" else "pair of equal classes")
    keep = valid.nonzero().flatten()
    if keep.numel() == 0:
        return _nan_profile(points, cls, base, 2 * k if not full else d - 1, vectors)
    sub = _profile(model, points[keep], cls[keep], base[keep], **settings)
    return _scatter(sub, keep, points, cls, base)


def _profile(model, points, cls, base, *, k, method, h, full, vectors, tol, max_steps, basis_size,
             seed) -> CurvatureProfile:
    """:func:`principal_curvatures` at given points with ``cls != base`` everywhere."""
    # Tangent coordinates: the operator is d - 1 dimensional, the normal direction's zero is not
    # in it at all (not even after a Lanczos restart from a fresh direction).
    G = CurvatureOperator(model, points, cls, base, method=method, h=h, tangent_coords=True)
    B = points.shape[0]
    d = points[0].numel()
    rows = torch.arange(B, device=points.device)
    if full:
        w, Q = torch.linalg.eigh(G.dense())  # (B, d-1), (B, d-1, d-1) in tangent coordinates
        values, coords = w, (Q.transpose(1, 2) if vectors else None)
        converged = torch.ones_like(values, dtype=torch.bool)
        steps = torch.full((B,), d - 1, dtype=torch.long, device=points.device)
    else:
        g = torch.Generator().manual_seed(seed)
        v0 = torch.randn((B, d - 1), generator=g, dtype=torch.float64).to(points)
        res = lanczos(G, v0, k=2 * k, which="BE", tol=tol, max_steps=max_steps, basis_size=basis_size,
                      vectors=vectors, seed=seed)
        values, coords, converged, steps = res.eigenvalues, res.eigenvectors, res.converged, res.steps
    vecs = None
    if coords is not None:  # (B, m, d-1) -> unit tangent vectors (B, m, *shape)
        m = coords.shape[1]
        vecs = G.embed(coords.reshape(B * m, d - 1), rows.repeat_interleave(m))
        vecs = vecs.reshape((B, m) + tuple(points.shape[1:]))
    return CurvatureProfile(values, vecs, points, cls, base, G.grad_norm, converged, steps)


def _nan_profile(points, cls, base, m: int, vectors: bool) -> CurvatureProfile:
    """A profile of B samples with nothing measured."""
    B = points.shape[0]
    nan = torch.full((B, m), float("nan"), dtype=points.dtype, device=points.device)
    vecs = torch.full((B, m) + tuple(points.shape[1:]), float("nan"), dtype=points.dtype,
                      device=points.device) if vectors else None
    return CurvatureProfile(nan, vecs, points, cls, base, nan[:, 0].clone(), torch.zeros_like(nan, dtype=torch.bool),
                            torch.zeros(B, dtype=torch.long, device=points.device))


def _scatter(sub: CurvatureProfile, keep: torch.Tensor, points, cls, base) -> CurvatureProfile:
    """``sub`` (measured at rows ``keep``) placed into a NaN profile of all B samples."""
    full = _nan_profile(points, cls, base, sub.values.shape[1], sub.vectors is not None)
    full.values[keep] = sub.values
    if sub.vectors is not None:
        full.vectors[keep] = sub.vectors
    full.grad_norm[keep] = sub.grad_norm
    full.converged[keep] = sub.converged
    full.steps[keep] = sub.steps.to(full.steps.device)
    return full
