"""The shared curved subspace of a classifier's boundaries and how vulnerable it is (docs/method.md §5)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from curvext.curvature.operators import CurvatureOperator
from curvext.geometry.deepfool import deepfool
from curvext.geometry.profiles import curvature_points, principal_curvatures
from curvext.linalg import lanczos
from curvext.utils import model_checks
from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)

RECIPES = ("stack", "mean_hessian")


def shared_subspace(model, x: torch.Tensor, *, dim: int, recipe: str = "stack", per_point: int | None = None,
                    at: str = "boundary", method: str = "autograd", h: float | None = None,
                    tol: float = 1e-4, basis_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """An orthonormal basis ``(d, dim)`` of the directions where boundaries are most curved.

    Args:
        model, x: classifier and N images ``(N, C, H, W)``.
        dim: subspace dimension.
        recipe: "stack": the ``per_point`` principal directions of largest |curvature| at each of
            the N points, stacked and reduced by SVD to the leading ``dim`` left singular vectors;
            "mean_hessian": the top-``dim`` eigenvectors (largest |eigenvalue|, Lanczos) of the
            curvature operator averaged over the N points.
        per_point: directions per point for "stack" (default ``dim``).
        at, method, h, tol, basis_size, seed: where and how curvature is measured (see
            principal_curvatures; basis_size bounds the Lanczos vectors stored per problem).
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    model_checks.require_eval(model, "model")
    model_checks.check_images(x, "x", input_range=None)
    d = x[0].numel()
    if not isinstance(dim, int) or dim < 1 or dim >= d:
        raise ValueError(f"dim must be an int in [1, d - 1 = {d - 1}], got {dim!r}")
    if recipe == "stack":
        k = per_point or dim
        prof = principal_curvatures(model, x, k=max(1, (k + 1) // 2), at=at, method=method, h=h, vectors=True,
                                    tol=tol, basis_size=basis_size, seed=seed)
        if bool(torch.isnan(prof.values).all()):
            raise ValueError("no principal curvature could be measured at any point (DeepFool changed no image's "
                             "label): no directions to build the subspace from")
        # NaN marks values Lanczos could not supply (space exhausted) and points without a
        # boundary: rank them last, add nothing
        vecs = torch.nan_to_num(prof.vectors.reshape(x.shape[0], -1, d), nan=0.0)  # (N, 2k', d)
        order = torch.nan_to_num(prof.values.abs(), nan=-1.0).argsort(dim=1, descending=True)[:, :k]
        chosen = vecs.gather(1, order.unsqueeze(2).expand(-1, -1, d))  # (N, k, d)
        U, _, _ = torch.linalg.svd(chosen.reshape(-1, d).T.double(), full_matrices=False)
        return U[:, :dim].to(x.dtype)
    points, cls, base = curvature_points(model, x, at=at)
    reached = cls != base  # DeepFool changed the label: a boundary to measure
    if not bool(reached.all()):
        logger.warning("no boundary to measure at sample(s) %s (DeepFool did not change their label): the mean "
                       "curvature operator averages the other points", (~reached).nonzero().flatten().tolist()[:20])
        if not bool(reached.any()):
            raise ValueError("DeepFool changed no image's label: no boundary point to build the subspace from")
        points, cls, base = points[reached], cls[reached], base[reached]
    G = CurvatureOperator(model, points, cls, base, method=method, h=h)
    N = points.shape[0]
    shape = tuple(points.shape[1:])
    all_rows = torch.arange(N, device=x.device)

    def mean_op(V, index):  # one problem: the average of the N operators
        out = G(V.expand((N,) + shape), all_rows)
        return out.mean(dim=0, keepdim=True)

    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn((1,) + shape, generator=g, dtype=torch.float64).to(points)
    res = lanczos(mean_op, v0, k=dim, which="LM", tol=tol, basis_size=basis_size, seed=seed)
    return res.eigenvectors.reshape(dim, d).T.contiguous()


@dataclass(frozen=True, repr=False)
class Vulnerability(ShortRepr):
    """Fooling rates ``(len(norms),)`` of random noise inside the subspace and inside random
    subspaces of the same dimension, at the same l2 norms; ``deepfool_share`` ``(N,)`` the share
    ``||U^T r|| / ||r||`` of each DeepFool perturbation in the subspace; ``chance`` ``sqrt(dim/d)``."""

    norms: torch.Tensor
    fooling_subspace: torch.Tensor
    fooling_random: torch.Tensor
    deepfool_share: torch.Tensor
    chance: float


def subspace_vulnerability(model, x: torch.Tensor, basis: torch.Tensor, *, norms, trials: int = 4,
                           seed: int = 0) -> Vulnerability:
    """How much more the classifier is fooled by noise inside ``basis (d, dim)`` than by noise of
    the same norm in random ``dim``-dimensional subspaces (``trials`` draws per image and norm)."""
    model_checks.require_eval(model, "model")
    model_checks.check_images(x, "x", input_range=None)
    if not isinstance(basis, torch.Tensor) or basis.dim() != 2 or basis.shape[0] != x[0].numel():
        raise ValueError(f"basis must be (d, dim) with d = {x[0].numel()}, got "
                         f"{tuple(getattr(basis, 'shape', ()))}")
    d, dim = basis.shape
    eye = torch.eye(dim, dtype=torch.float64, device=basis.device)
    if not torch.allclose(basis.double().T @ basis.double(), eye, atol=1e-4):
        raise ValueError("basis must have orthonormal columns (basis.T @ basis = I)")
    norms = torch.as_tensor(norms, dtype=torch.float64).flatten()
    if norms.numel() == 0 or not bool((norms > 0).all() & torch.isfinite(norms).all()):
        raise ValueError(f"norms must be finite positive l2 norms, got {norms.tolist()}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        labels = model(x).argmax(1)
    N = x.shape[0]
    B = basis.to(x.dtype)

    def fooling(bases, eps):  # bases: (N*trials, d, dim)
        c = torch.randn(N * trials, dim, 1, generator=g, dtype=torch.float64).to(x)
        r = torch.bmm(bases, c).squeeze(2)
        r = eps * r / r.norm(dim=1, keepdim=True)
        xr = x.repeat(trials, *[1] * (x.dim() - 1)) + r.reshape((N * trials,) + tuple(x.shape[1:]))
        with torch.no_grad():
            return float((model(xr).argmax(1) != labels.repeat(trials)).double().mean())

    inside, random = [], []
    for eps in norms.tolist():
        inside.append(fooling(B.unsqueeze(0).expand(N * trials, d, dim), eps))
        Q = torch.linalg.qr(torch.randn(N * trials, d, dim, generator=g, dtype=torch.float64))[0].to(x)
        random.append(fooling(Q, eps))
    df = deepfool(model, x)
    r = df.perturbation.flatten(1)
    share = (r @ B).norm(dim=1) / r.norm(dim=1).clamp_min(1e-30)
    return Vulnerability(norms, torch.tensor(inside), torch.tensor(random), share, (dim / d) ** 0.5)
