"""Second-order pieces of Algorithm 2 for many classes and directions at once.

For a batch of images ``x (B, C, H, W)``, competing classes ``cls (B, K)`` and unit directions
``V (T, C, H, W)`` shared by every image and class, :func:`class_curvatures` returns the normal
curvatures ``kappa[b, k, j] = (P v_j)^T H_i (P v_j) / ||g_i||`` of ``F_i = f_i - f_khat``
(``i = cls[b, k]``; SPEC §1 sign convention: normal toward class i, out of the image's own
region), with the cost of the *sum* of classes and directions, not their product:

    (P v)^T H (P v) = v^T H v - 2 c (H n)^T v + c^2 n^T H n,   c = n^T v,

where ``v^T H_f v`` for every logit at once comes from one second-order directional derivative
per direction, and ``H_i n_i`` from one Hessian-vector product per class. Algorithm 2 needs only
the sums over the directions, :func:`class_curvature_sums`, which replaces the product by one
mixed second derivative per class and, with ``"autograd"``, takes ``sum_j v_j^T H_f v_j`` from
:mod:`curvext.taylor_mode` (one collapsed second-order row instead of one per direction).
:func:`scored_class_curvature_sums` is the same with the competing classes chosen from the
forward pass of the class gradients (what ``CurvatureDetector`` runs for ``"autograd"``).

Methods (how second derivatives are measured):

* ``"autograd"``: exact, infinitesimal. ``v^T H v`` by forward-over-forward mode
  (``torch.func.jvp`` twice), ``H n`` by forward-over-reverse. For smooth nets; zero for ReLU
  nets. Both are vectorised with ``torch.func.vmap`` over the directions (classes) while the
  images stay unbatched, so each image's forward pass (its activations and their derivatives)
  is computed once and shared by all its directions and classes rather than once per row; this
  is 1.4-1.6x faster than repeating every image per direction. Models that ``vmap`` cannot
  batch (e.g. a custom ``autograd.Function`` without a vmap rule) fall back, with a warning, to
  the per-row passes (repeated images, nested ``jvp`` and double backward).
* ``"fd"``: at scale ``h``: ``v^T H v`` from directional derivatives at ``x +- h v``,
  ``H n`` from gradients at ``x +- h n``.
* ``"fd2"``: at scale ``h``: ``v^T H v = (f(x+hv) + f(x-hv) - 2 f(x)) / h^2`` from forward passes
  only; ``H n`` as in ``"fd"``. The cheapest; works for ReLU nets.
"""
from __future__ import annotations

import logging
import warnings

import torch
from torch.func import jvp, vjp, vmap

from curvext import taylor_mode

with warnings.catch_warnings():
    # torch's own forward-mode decompositions call the deprecated torch.jit.script when first
    # loaded by jvp: a FutureWarning about torch internals that users of curvext cannot act on.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # moved or gone in another torch version: nothing to silence
        pass

logger = logging.getLogger(__name__)

METHODS = ("autograd", "fd", "fd2")


def _vectorised_or_rows(vectorised, rows, what: str):
    """``vectorised()``, or ``rows()`` with a warning when functorch cannot batch the model."""
    try:
        return vectorised()
    except torch.OutOfMemoryError:
        raise  # the per-row passes need as much memory: score fewer images at once
    except RuntimeError as err:
        logger.warning("%s: torch.func.vmap could not batch the model (%s); falling back to "
                       "per-row passes, which repeat each image's forward pass", what,
                       str(err).splitlines()[0][:200])
        return rows()


def _second_directional_derivatives(model, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``(B, t, L)``: d^2/ds^2 f(x_b + s v_j) at s = 0 for every logit, by forward-over-forward
    mode vmapped over the t directions ``V (t, *shape)`` with ``x (B, *shape)`` unbatched."""

    def along(v):
        vb = v.expand_as(x)

        def directional(y):
            return jvp(model, (y,), (vb,))[1]

        return jvp(directional, (x,), (vb,))[1]

    return vmap(along)(V).transpose(0, 1)


@torch.no_grad()  # forward passes and forward-mode AD only: no reverse graph over the weights
def logit_quadratic_forms(model, x: torch.Tensor, V: torch.Tensor, method: str, h: float,
                          max_rows: int = 4096) -> torch.Tensor:
    """``q[b, j, l] = v_j^T (Hessian of logit l at x_b) v_j`` as ``(B, T, L)``.

    ``x`` is ``(B, *shape)``, ``V`` is ``(T, *shape)`` (unit norm per direction for fd methods,
    where ``h`` is the step length). Images and directions are evaluated in chunks of at most
    ``max_rows`` rows per model call.
    """
    B, T = x.shape[0], V.shape[0]
    shape = x.shape[1:]
    chunk = max(1, max_rows // max(B, 1))
    out = []
    base = model(x) if method == "fd2" else None

    def repeated(v):  # row b*t + j holds (x_b, v_j)
        t = v.shape[0]
        return (x.unsqueeze(1).expand(B, t, *shape).reshape(B * t, *shape),
                v.unsqueeze(0).expand(B, t, *shape).reshape(B * t, *shape))

    for j0 in range(0, T, chunk):
        v = V[j0 : j0 + chunk]
        t = v.shape[0]
        if method == "autograd":
            q = _vectorised_or_rows(lambda: _second_directional_derivatives(model, x, v),
                                    lambda: _second_directional_rows(model, *repeated(v)), "quadratic forms")
            out.append(q.reshape(B, t, -1))
            continue
        xs, vs = repeated(v)
        if method == "fd2":
            plus, minus = model(xs + h * vs), model(xs - h * vs)
            center = base.unsqueeze(1).expand(B, t, base.shape[1]).reshape(B * t, -1)
            q = (plus + minus - 2 * center) / (h * h)
        elif method == "fd":
            _, dplus = jvp(model, (xs + h * vs,), (vs,))
            _, dminus = jvp(model, (xs - h * vs,), (vs,))
            q = (dplus - dminus) / (2 * h)
        out.append(q.reshape(B, t, -1))
    return torch.cat(out, dim=1)


@torch.no_grad()
def logit_quadratic_form_sums(model, x: torch.Tensor, V: torch.Tensor, method: str, h: float,
                              max_rows: int = 4096, taylor: "bool | taylor_mode.Plan" = True) -> torch.Tensor:
    """``(B, L)``: ``logit_quadratic_forms(...).sum(dim=1)``, each logit's ``sum_j v_j^T H v_j``.

    With ``"autograd"`` and a model that :mod:`curvext.taylor_mode` can run, the sum over the
    directions is carried as one collapsed second-order row (T + 1 rows per image instead of
    forward-over-forward's 3 T: about 2x on the zoo CNNs); chunks of directions keep
    ``(directions + 1) * B`` rows within ``max_rows``. Other models and methods sum
    :func:`logit_quadratic_forms`. ``taylor``: True looks the model's plan up, False never uses
    one, a :class:`~curvext.taylor_mode.Plan` is used as given (code compiled by ``torch.compile``
    passes it: a lookup in the plan cache would put the cache into the compiler's guards).
    """
    plan = None
    if method == "autograd" and taylor is not False:
        plan = taylor_mode.plan_for(model) if taylor is True else taylor
        if plan is not None and not plan.belongs_to(model):
            raise ValueError("taylor: the plan was built for another model")
        if plan is not None and not plan.usable():
            plan = None
        if plan is not None and not plan.checked and not torch.compiler.is_compiling():
            plan = taylor_mode.checked(plan, x)  # once per plan: the walk's output is the model's
    if plan is None:
        return logit_quadratic_forms(model, x, V, method, h, max_rows).sum(dim=1)
    B, T = x.shape[0], V.shape[0]
    chunk = max(1, max_rows // max(B, 1) - 1)
    total = None
    for j0 in range(0, T, chunk):
        v = V[j0 : j0 + chunk]
        pairs = taylor_mode.Pairs(1, squares=(slice(0, v.shape[0]), 0))
        part = taylor_mode.second_order_sums(plan, x, v.unsqueeze(1), pairs)[0]
        total = part if total is None else total + part
    return total


def _second_directional_rows(model, xs: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """Fallback of :func:`_second_directional_derivatives` on repeated rows ``xs, vs (R, *shape)``."""

    def directional(y):
        return jvp(model, (y,), (vs,))[1]

    return jvp(directional, (xs,), (vs,))[1]


def class_gradients(model, x: torch.Tensor, cls: torch.Tensor, predicted: torch.Tensor,
                    create_graph: bool = False):
    """Gradients of ``F_i = f_i - f_khat`` for each image and each of its K classes.

    Returns ``(xr, grad)``: ``xr (B*K, *shape)`` the repeated inputs (requires grad) and
    ``grad (B*K, *shape)``; row ``b*K + k`` belongs to image b and class ``cls[b, k]``.
    """
    B, K = cls.shape
    xr = x.detach().repeat_interleave(K, dim=0).requires_grad_(True)
    logits = model(xr)
    rows = torch.arange(B * K, device=x.device)
    F = logits[rows, cls.reshape(-1)] - logits[rows, predicted.repeat_interleave(K)]
    (grad,) = torch.autograd.grad(F.sum(), xr, create_graph=create_graph)
    return xr, grad


def hessian_normal_products(model, x, cls, predicted, method: str, h: float):
    """``(grad (B*K, d), hn (B*K, d))``: gradient of F_i and ``H_i n_i`` with n_i = g_i/||g_i||."""
    B, K = cls.shape
    if method == "autograd":
        return _vectorised_or_rows(lambda: _hessian_normal_vectorised(model, x, cls, predicted),
                                   lambda: _hessian_normal_rows(model, x, cls, predicted),
                                   "Hessian-normal products")
    _, grad = class_gradients(model, x, cls, predicted)
    flat = grad.reshape(B * K, -1)
    n = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    step = (h * n).reshape(grad.shape)
    xr = x.repeat_interleave(K, dim=0)
    both = torch.cat([xr + step, xr - step])
    g2 = _gradients_at(model, both, cls.reshape(-1).repeat(2), predicted.repeat_interleave(K).repeat(2))
    gp, gm = g2[: B * K], g2[B * K :]
    return flat, ((gp - gm) / (2 * h)).reshape(B * K, -1)


@torch.no_grad()  # torch.func's own vjp/jvp still run; the weights' graph is not recorded
def _hessian_normal_vectorised(model, x, cls, predicted):
    """Exact ``(grad, hn)`` as in :func:`hessian_normal_products`, vmapped over the K classes
    with ``x`` unbatched: gradients by one vjp per class on a shared forward, then ``H_i n_i`` by
    forward-over-reverse. Runs under no_grad, so weights that require grad cost nothing extra
    (torch.func transforms ignore the outer mode for their own derivatives)."""
    B, K = cls.shape
    x = x.detach()
    logits, pullback = vjp(model, x)
    L = logits.shape[1]
    one_hot = torch.nn.functional.one_hot
    # Cotangent of F_i = f_i - f_khat for each class slot k: (K, B, L).
    cot = (one_hot(cls, L) - one_hot(predicted, L).unsqueeze(1)).to(logits.dtype).transpose(0, 1)
    grad = vmap(pullback)(cot)[0].reshape(K, B, -1)
    n = grad / grad.norm(dim=2, keepdim=True).clamp_min(1e-30)

    def hessian_times_normal(c, nk):
        def gradient(y):
            return vjp(model, y)[1](c)[0]

        return jvp(gradient, (x,), (nk.reshape(x.shape),))[1]

    hn = vmap(hessian_times_normal)(cot, n).reshape(K, B, -1)
    return (grad.transpose(0, 1).reshape(B * K, -1).detach(),
            hn.transpose(0, 1).reshape(B * K, -1).detach())


def _hessian_normal_rows(model, x, cls, predicted):
    """Fallback of :func:`_hessian_normal_vectorised`: double backward on repeated images."""
    B, K = cls.shape
    xr, grad = class_gradients(model, x, cls, predicted, create_graph=True)
    flat = grad.reshape(B * K, -1)
    n = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)).detach()
    (hn,) = torch.autograd.grad(grad, xr, grad_outputs=n.reshape(grad.shape))
    return flat.detach(), hn.reshape(B * K, -1).detach()


def _gradients_at(model, points: torch.Tensor, cls_flat: torch.Tensor, pred_flat: torch.Tensor):
    """Gradient of ``f_cls - f_pred`` at each row of ``points`` (one class per row)."""
    pts = points.detach().requires_grad_(True)
    logits = model(pts)
    rows = torch.arange(pts.shape[0], device=pts.device)
    F = logits[rows, cls_flat] - logits[rows, pred_flat]
    (g,) = torch.autograd.grad(F.sum(), pts)
    return g.reshape(pts.shape[0], -1)


def class_curvatures(model, x: torch.Tensor, cls: torch.Tensor, predicted: torch.Tensor,
                     V: torch.Tensor, method: str, h: float, max_rows: int = 4096) -> torch.Tensor:
    """Normal curvatures ``kappa (B, K, T)`` of F_i along the tangent projections of ``V``.

    Args:
        x: ``(B, *shape)`` images. cls: ``(B, K)`` competing classes (never the predicted one).
        predicted: ``(B,)`` the predicted classes khat. V: ``(T, *shape)`` unit directions.
        method, h: see the module docstring.
    """
    B, K = cls.shape
    T = V.shape[0]
    grad, hn = hessian_normal_products(model, x, cls, predicted, method, h)
    gnorm = grad.norm(dim=1).clamp_min(1e-30)  # (B*K,)
    n = grad / gnorm.unsqueeze(1)
    Vf = V.reshape(T, -1)
    q_logits = logit_quadratic_forms(model, x, V, method, h, max_rows).detach()  # (B, T, L)
    q_pred = q_logits.gather(2, predicted.view(B, 1, 1).expand(B, T, 1))  # (B, T, 1)
    q = q_logits.gather(2, cls.view(B, 1, K).expand(B, T, K)) - q_pred  # (B, T, K)
    q = q.transpose(1, 2)  # (B, K, T)
    c = (n @ Vf.T).reshape(B, K, T)
    hn_v = (hn @ Vf.T).reshape(B, K, T)
    hn_n = (hn * n).sum(dim=1).reshape(B, K, 1)
    kappa = (q - 2 * c * hn_v + c * c * hn_n) / gnorm.reshape(B, K, 1)
    return kappa


def class_curvature_sums(model, x: torch.Tensor, cls: torch.Tensor, predicted: torch.Tensor,
                         V: torch.Tensor, method: str, h: float, max_rows: int = 4096,
                         taylor: "bool | taylor_mode.Plan" = True) -> torch.Tensor:
    """``(B, K)``: ``class_curvatures(...).sum(dim=2)``, the curvature of each class summed over
    the T directions, which is all Algorithm 2 needs. Summing first,

        sum_j (P v_j)^T H (P v_j) = sum_j v_j^T H v_j + n^T H (s n - 2 w),
        w = sum_j c_j v_j,  s = sum_j c_j^2,  c_j = n^T v_j,

    so with ``"autograd"`` the tangent projection costs one *mixed* second derivative per class
    (forward-over-forward with the two tangents n and s n - 2 w, vmapped over the classes) instead
    of a Hessian-vector product (forward-over-reverse), and the sums ``v_j^T H v_j`` come from
    :func:`logit_quadratic_form_sums` (``taylor`` as there). fd/fd2 use :func:`class_curvatures`.
    """
    if method != "autograd":
        return class_curvatures(model, x, cls, predicted, V, method, h, max_rows).sum(dim=2)
    grad = _class_gradients_vectorised(model, x, cls, predicted)  # (B*K, d)
    return _exact_sums(model, x, cls, predicted, V, grad, max_rows, taylor)


def competing_classes(logits: torch.Tensor, classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted (B,), cls (B, K))``: the label and the K = ``classes`` (None: all L - 1)
    highest-scoring other classes, by decreasing logit."""
    L = logits.shape[1]
    K = L - 1 if classes is None else min(classes, L - 1)
    predicted = logits.argmax(dim=1)
    masked = logits.masked_fill(torch.nn.functional.one_hot(predicted, L).bool(), float("-inf"))
    return predicted, masked.topk(K, dim=1).indices


@torch.no_grad()
def scored_class_curvature_sums(model, x: torch.Tensor, V: torch.Tensor, classes: int | None,
                                max_rows: int = 4096, taylor: "bool | taylor_mode.Plan" = True):
    """``(logits (B, L), predicted (B,), cls (B, K), sums (B, K))``: the exact
    :func:`class_curvature_sums` over the competing classes of :func:`competing_classes`, chosen
    from the forward pass that the class gradients run anyway (one forward pass per group fewer
    than choosing the classes first)."""
    x = x.detach()

    def vectorised():
        logits, pullback = vjp(model, x)
        predicted, cls = competing_classes(logits, classes)
        return logits, predicted, cls, _pulled_back_gradients(pullback, logits, cls, predicted)

    def rows():
        logits = model(x)
        predicted, cls = competing_classes(logits, classes)
        with torch.enable_grad():
            grad = class_gradients(model, x, cls, predicted)[1]
        return logits, predicted, cls, grad.reshape(grad.shape[0], -1)

    logits, predicted, cls, grad = _vectorised_or_rows(vectorised, rows, "class gradients")
    return logits, predicted, cls, _exact_sums(model, x, cls, predicted, V, grad, max_rows, taylor)


def _exact_sums(model, x, cls, predicted, V, grad, max_rows, taylor) -> torch.Tensor:
    """:func:`class_curvature_sums` with "autograd", given the class gradients ``grad (B*K, d)``."""
    B, K = cls.shape
    T = V.shape[0]
    gnorm = grad.norm(dim=1).clamp_min(1e-30)
    n = grad / gnorm.unsqueeze(1)
    Vf = V.reshape(T, -1)
    c = n @ Vf.T  # (B*K, T)
    u = (c * c).sum(dim=1, keepdim=True) * n - 2 * (c @ Vf)  # s n - 2 w, (B*K, d)
    rows = torch.arange(B * K, device=x.device)
    mixed = _vectorised_or_rows(lambda: _mixed_second_derivatives(model, x, n, u, K),
                                lambda: _mixed_second_rows(model, x.repeat_interleave(K, dim=0), n, u),
                                "mixed second derivatives")  # (B*K, L)
    pred_rows = predicted.repeat_interleave(K)
    bilinear = mixed[rows, cls.reshape(-1)] - mixed[rows, pred_rows]  # n^T H_i (s n - 2 w)
    q_logits = logit_quadratic_form_sums(model, x, V, "autograd", 0.0, max_rows, taylor)  # (B, L)
    q = q_logits.gather(1, cls) - q_logits.gather(1, predicted.view(B, 1))  # (B, K)
    return (q + bilinear.reshape(B, K)) / gnorm.reshape(B, K)


@torch.no_grad()
def _class_gradients_vectorised(model, x, cls, predicted) -> torch.Tensor:
    """``(B*K, d)`` gradients of F_i = f_i - f_khat, one vjp per class slot on a shared forward
    (row ``b*K + k`` for image b and class ``cls[b, k]``); per-row double passes on failure."""
    B, K = cls.shape

    def vectorised():
        logits, pullback = vjp(model, x.detach())
        return _pulled_back_gradients(pullback, logits, cls, predicted)

    def rows():
        with torch.enable_grad():
            return class_gradients(model, x, cls, predicted)[1].reshape(B * K, -1)

    return _vectorised_or_rows(vectorised, rows, "class gradients")


def _pulled_back_gradients(pullback, logits, cls, predicted) -> torch.Tensor:
    """``(B*K, d)``: the vjp ``pullback`` of the model at x applied to the cotangent of each
    F_i = f_i - f_khat, vmapped over the K class slots."""
    B, K = cls.shape
    L = logits.shape[1]
    one_hot = torch.nn.functional.one_hot
    cot = (one_hot(cls, L) - one_hot(predicted, L).unsqueeze(1)).to(logits.dtype).transpose(0, 1)
    return vmap(pullback)(cot)[0].reshape(K, B, -1).transpose(0, 1).reshape(B * K, -1)


@torch.no_grad()
def _mixed_second_derivatives(model, x, n, u, K: int) -> torch.Tensor:
    """``(B*K, L)``: d^2/(da db) f(x_b + a n_r + b u_r) at 0 for every logit, rows r = b*K + k,
    by forward-over-forward vmapped over the K class slots with ``x (B, *shape)`` unbatched."""
    B = x.shape[0]
    nk = n.reshape(B, K, *x.shape[1:]).transpose(0, 1)
    uk = u.reshape(B, K, *x.shape[1:]).transpose(0, 1)

    def mixed(t_inner, t_outer):
        def directional(y):
            return jvp(model, (y,), (t_inner,))[1]

        return jvp(directional, (x,), (t_outer,))[1]

    return vmap(mixed)(nk, uk).transpose(0, 1).reshape(B * K, -1)


@torch.no_grad()
def _mixed_second_rows(model, xs, n, u) -> torch.Tensor:
    """Fallback of :func:`_mixed_second_derivatives` on repeated images ``xs (B*K, *shape)``."""
    ni, ui = n.reshape(xs.shape), u.reshape(xs.shape)

    def directional(y):
        return jvp(model, (y,), (ni,))[1]

    return jvp(directional, (xs,), (ui,))[1]
