"""Batched input-space Hessian-vector products of ``F_b = f_{a_b} - f_{c_b}`` at ``x_b``.

The model must be a per-sample function (eval mode: no batch statistics, no dropout), so the
Hessian of ``sum_b F_b`` is block diagonal and one backward pass gives all B products at once.

Methods:

* ``"autograd"``: exact ``H v`` by double backward through a first-order graph of ``grad F``
  built once and reused (one backward per product). When the samples still asking for products
  fall to half of those in the graph, the graph is rebuilt for them alone, so finished samples
  stop costing work. For smooth nets: a ReLU / max-pool net's exact input Hessian is zero almost
  everywhere.
* ``"fd"``: ``H v ~ ||v|| (grad F(x + h v/||v||) - grad F(x - h v/||v||)) / 2h``, the curvature
  at scale ``h`` (input units, l2): what ReLU nets need. Compare h with the norms of the
  perturbations you care about.
* ``"fd2"``: quadratic forms only, ``v^T H v ~ ||v||^2 (F(x+hu) + F(x-hu) - 2F(x)) / h^2`` with
  ``u = v/||v||``, from forward passes alone (:meth:`InputHessian.quadratic_form`).
"""
from __future__ import annotations

import torch

from curvext.utils import model_checks

HVP_METHODS = ("autograd", "fd", "fd2")
DEFAULT_H = 0.1


def pair_logit_difference(logits: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``F = logits[b, a_b] - logits[b, c_b]`` as ``(B,)``."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, a] - logits[rows, c]


class InputHessian:
    """Hessian of ``F_b = f_{a_b}(x) - f_{c_b}(x)`` at each ``x_b``, as a batched operator.

    Args:
        model: ``(B, *shape) -> (B, L)`` logits, in eval mode.
        x: ``(B, *shape)`` points (any floating dtype the model accepts).
        a, c: ``(B,)`` int64 classes; ``F = f_a - f_c``.
        method: "autograd", "fd" or "fd2" (see the module docstring).
        h: finite-difference scale for fd/fd2 (default 0.1).

    Attributes:
        F: ``(B,)`` values of F at x. grad: ``(B, *shape)`` its gradient.

    Calling ``H(V, index)`` with ``V (b, *shape)`` and ``index (b,)`` returns ``H_index V`` (the
    ``op(V, index)`` convention of :func:`curvext.lanczos`).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, a: torch.Tensor, c: torch.Tensor, *,
                 method: str = "autograd", h: float | None = None):
        if method not in HVP_METHODS:
            raise ValueError(f"method must be one of {HVP_METHODS}, got {method!r}")
        model_checks.require_eval(model, "model")
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.is_floating_point():
            raise ValueError(f"x must be a non-empty floating (B, ...) tensor, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"x must be finite; non-finite values in sample(s) {bad[:10]}")
        B = x.shape[0]
        for name, t in (("a", a), ("c", c)):
            if not isinstance(t, torch.Tensor) or t.shape != (B,) or t.dtype != torch.long:
                raise ValueError(f"{name} must be a (B,) = ({B},) int64 tensor of classes, got "
                                 f"{getattr(t, 'dtype', '')} {tuple(getattr(t, 'shape', ()))}")
        if h is not None and not h > 0:
            raise ValueError(f"h must be > 0, got {h!r}")
        self.model, self.method = model, method
        self.h = DEFAULT_H if h is None else float(h)
        self.x = x.detach()
        self.a, self.c = a.to(x.device), c.to(x.device)
        self._graph_rows = None
        self._build_graph(torch.arange(B, device=x.device))
        self.F, self.grad = self._F_full, self._grad_full

    # -- first-order graph ----------------------------------------------------------------

    def _build_graph(self, samples: torch.Tensor) -> None:
        xs = self.x[samples].clone().requires_grad_(True)
        F = pair_logit_difference(self.model(xs), self.a[samples], self.c[samples])
        keep = self.method == "autograd"
        (grad,) = torch.autograd.grad(F.sum(), xs, create_graph=keep)
        if self._graph_rows is None:
            self._F_full, self._grad_full = F.detach(), grad.detach()
        if keep:
            self._xs, self._g = xs, grad
            self._graph_rows = samples
            self._row_of = torch.full((self.x.shape[0],), -1, dtype=torch.long, device=self.x.device)
            self._row_of[samples] = torch.arange(samples.shape[0], device=self.x.device)
        else:
            self._graph_rows = samples

    def _check(self, V: torch.Tensor, index: torch.Tensor) -> None:
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.long:
            raise ValueError(f"index must be a (b,) int64 tensor of sample indices, got "
                             f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.x.shape[0]):
            raise ValueError(f"index must lie in [0, B = {self.x.shape[0]}), got values in "
                             f"[{int(index.min())}, {int(index.max())}]")
        if not isinstance(V, torch.Tensor) or V.shape[1:] != self.x.shape[1:] or V.shape[0] != index.shape[0]:
            raise ValueError(f"V must be (b, *shape) = ({index.shape[0]}, {tuple(self.x.shape[1:])}), "
                             f"got {tuple(getattr(V, 'shape', ()))}")
        if V.dtype != self.x.dtype or V.device != self.x.device:
            raise ValueError(f"V must match x's dtype and device ({self.x.dtype}, {self.x.device}), "
                             f"got ({V.dtype}, {V.device})")

    def __call__(self, V: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self._check(V, index)
        if self.method == "fd2":
            raise ValueError("method 'fd2' gives quadratic forms only (quadratic_form); use "
                             "'autograd' or 'fd' for Hessian-vector products")
        out = self._hvp_autograd(V, index) if self.method == "autograd" else self._hvp_fd(V, index)
        finite = torch.isfinite(out).flatten(1).all(1)
        if not bool(finite.all()):
            bad = index[~finite].tolist()
            raise FloatingPointError(f"non-finite Hessian-vector product for sample(s) {bad[:10]}")
        return out

    def _hvp_autograd(self, V, index):
        # One backward gives one product per sample: a sample listed several times takes rounds.
        uniq, inverse, counts = torch.unique(index, return_inverse=True, return_counts=True)
        if uniq.shape[0] < index.shape[0]:
            out = torch.empty_like(V)
            order = torch.argsort(inverse, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.empty_like(index)
            rank[order] = torch.arange(index.shape[0], device=index.device) - starts.repeat_interleave(counts)
            for r in range(int(counts.max())):
                sel = (rank == r).nonzero().flatten()
                out[sel] = self._hvp_autograd_unique(V[sel], index[sel])
            return out
        return self._hvp_autograd_unique(V, index)

    def _hvp_autograd_unique(self, V, index):
        if index.shape[0] <= self._graph_rows.shape[0] // 2:
            self._build_graph(index.clone())
        rows = self._row_of[index]
        if bool((rows < 0).any()):  # a sample outside the current graph: rebuild for the union
            self._build_graph(torch.unique(torch.cat([self._graph_rows, index])))
            rows = self._row_of[index]
        full = torch.zeros_like(self._xs)
        full[rows] = V.to(full.dtype)
        (hv,) = torch.autograd.grad(self._g, self._xs, grad_outputs=full, retain_graph=True)
        return hv[rows].to(V.dtype)

    def _gradients(self, points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        pts = points.detach().requires_grad_(True)
        F = pair_logit_difference(self.model(pts), self.a[index], self.c[index])
        (g,) = torch.autograd.grad(F.sum(), pts)
        return g

    def _hvp_fd(self, V, index):
        shape = (-1,) + (1,) * (V.dim() - 1)
        norms = V.flatten(1).norm(dim=1)
        u = V / norms.clamp_min(torch.finfo(V.dtype).tiny).view(shape)
        x = self.x[index]
        idx2 = torch.cat([index, index])
        g = self._gradients(torch.cat([x + self.h * u, x - self.h * u]), idx2)
        b = V.shape[0]
        return (g[:b] - g[b:]) * (norms / (2 * self.h)).view(shape)

    def quadratic_form(self, V: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``v^T H v`` per row, ``(b,)``: by fd2 (forward passes only) for method "fd2", else
        from the Hessian-vector product."""
        self._check(V, index)
        if self.method != "fd2":
            return (V * self(V, index)).flatten(1).sum(1)
        shape = (-1,) + (1,) * (V.dim() - 1)
        norms = V.flatten(1).norm(dim=1)
        u = V / norms.clamp_min(torch.finfo(V.dtype).tiny).view(shape)
        x = self.x[index]
        b = V.shape[0]
        with torch.no_grad():
            F = pair_logit_difference(self.model(torch.cat([x + self.h * u, x - self.h * u])),
                                      torch.cat([self.a[index]] * 2), torch.cat([self.c[index]] * 2))
        return (F[:b] + F[b:] - 2 * self.F[index]) / self.h**2 * norms**2
