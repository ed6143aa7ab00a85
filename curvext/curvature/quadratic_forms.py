"""Second-order pieces of Algorithm 2 for many classes and directions at once.

For a batch of images ``x (B, C, H, W)``, competing classes ``cls (B, K)`` and unit directions
``V (T, C, H, W)`` shared by every image and class, :func:`class_curvatures` returns the normal
curvatures ``kappa[b, k, j] = (P v_j)^T H_i (P v_j) / ||g_i||`` of ``F_i = f_i - f_khat``
(``i = cls[b, k]``; docs/method.md §1 sign convention: normal toward class i, out of the image's own
region), with the cost of the *sum* of classes and directions, not their product:

    (P v)^T H (P v) = v^T H v - 2 c (H n)^T v + c^2 n^T H n,   c = n^T v,

where ``v^T H_f v`` for every logit at once comes from one second-order directional derivative
per direction, and ``H_i n_i`` from one Hessian-vector product per class. Algorithm 2 needs only
the sums over the directions, :func:`class_curvature_sums`; with ``"autograd"`` it takes
``sum_j v_j^T H_f v_j`` from :mod:`curvext.autodiff.taylor_plan` (one collapsed second-order row instead
of one per direction) and each class's gradient and ``H_i n_i`` from one reverse-over-reverse
pass. :func:`scored_class_curvature_sums` is the same with the competing classes chosen from the
logits of the Taylor-mode pass (what ``CurvatureDetector`` runs for ``"autograd"``).

Methods (how second derivatives are measured):

* ``"autograd"``: exact, infinitesimal. ``v^T H v`` by forward-over-forward mode
  (``torch.func.jvp`` twice), ``H n`` by reverse-over-reverse. For smooth nets; zero for ReLU
  nets. Both are vectorised with ``torch.func.vmap`` over the directions (classes) while the
  images stay unbatched, so each image's forward pass (its activations and their derivatives)
  is computed once and shared by all its directions and classes rather than once per row.
  Models that ``vmap`` cannot
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

from curvext.autodiff import forward_mode, pointwise_conv, taylor_plan

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
    try:
        return rows()
    except (RuntimeError, NotImplementedError) as err:
        text = str(err).lower()
        if "derivative for" in text or "not implemented" in text or "forward ad" in text:
            raise RuntimeError(
                f"{what}: the model uses an operation that PyTorch cannot differentiate twice "
                f"({str(err).splitlines()[0][:200]}), which method='autograd' needs; use method='fd' or "
                f"'fd2' (finite differences at a scale h)") from err
        raise


def _second_directional_derivatives(model, x: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``(B, t, L)``: d^2/ds^2 f(x_b + s v_j) at s = 0 for every logit, by forward-over-forward
    mode vmapped over the t directions ``V (t, *shape)`` with ``x (B, *shape)`` unbatched."""

    def along(v):
        vb = v.expand_as(x)

        def directional(y):
            return jvp(model, (y,), (vb,))[1]

        return jvp(directional, (x,), (vb,))[1]

    with forward_mode.corrected():  # layer norm's nested rule is wrong in torch
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
            q = _vectorised_or_rows(lambda v=v: _second_directional_derivatives(model, x, v),
                                    lambda v=v: _second_directional_rows(model, *repeated(v)), "quadratic forms")
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
                              max_rows: int = 4096, taylor: bool | taylor_plan.Plan = True) -> torch.Tensor:
    """``(B, L)``: ``logit_quadratic_forms(...).sum(dim=1)``, each logit's ``sum_j v_j^T H v_j``.

    With ``"autograd"`` and a model that :mod:`curvext.autodiff.taylor_plan` can run, the sum over the
    directions is carried as one collapsed second-order row (T + 1 rows per image instead of
    forward-over-forward's 3 T; BENCHMARKS.md has the gain); chunks of directions keep
    ``(directions + 1) * B`` rows within ``max_rows``. Other models and methods sum
    :func:`logit_quadratic_forms`. ``taylor``: True looks the model's plan up, False never uses
    one, a :class:`~curvext.autodiff.taylor_plan.Plan` is used as given (code compiled by ``torch.compile``
    passes it: a lookup in the plan cache would put the cache into the compiler's guards).
    """
    if method != "autograd":
        return logit_quadratic_forms(model, x, V, method, h, max_rows).sum(dim=1)
    return _logits_and_exact_form_sums(model, x, V, max_rows, taylor, need_logits=False)[1]


@torch.no_grad()
def _logits_and_exact_form_sums(model, x: torch.Tensor, V: torch.Tensor, max_rows: int, taylor,
                                need_logits: bool = True):
    """``(logits (B, L) or None, sums (B, L))``: the model's output and each logit's exact
    ``sum_j v_j^T H v_j``. A Taylor-mode pass carries the output as its primal, so the logits cost
    nothing there; the forward-over-forward fallback runs one forward pass for them."""
    found = taylor_plan.direction_sums(model, x, V, max_rows=max_rows, plan=taylor)
    if found is not None:
        return found.logits, found.sums
    logits = model(x) if need_logits else None
    return logits, logit_quadratic_forms(model, x, V, "autograd", 0.0, max_rows).sum(dim=1)


def _second_directional_rows(model, xs: torch.Tensor, vs: torch.Tensor) -> torch.Tensor:
    """Fallback of :func:`_second_directional_derivatives` on repeated rows ``xs, vs (R, *shape)``."""

    def directional(y):
        return jvp(model, (y,), (vs,))[1]

    with forward_mode.corrected():
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


@torch.no_grad()  # torch.func's own transforms still run; the weights' graph is not recorded
def _hessian_normal_vectorised(model, x, cls, predicted):
    """Exact ``(grad, hn)`` as in :func:`hessian_normal_products` by reverse-over-reverse mode,
    vmapped over the K class slots with ``x`` unbatched: the pullback of each class gradient
    ``g_i``, applied to ``g_i`` itself, gives ``H_i g_i`` (H_i is symmetric), so the gradient and
    ``H_i n_i = H_i g_i / ||g_i||`` come from one pass, with one shared forward per image. Runs
    under no_grad, so weights that require grad cost nothing extra (torch.func transforms ignore
    the outer mode for their own derivatives). Memory: the first backward pass is kept for all
    K x B rows until the second one has run, so peak memory grows with the model's depth (the
    forward-over-forward pass it replaced held one layer's rows at a time); on a device
    out-of-memory error the classes are taken in smaller chunks (:func:`_by_class_slots`)."""
    B, K = cls.shape
    x = x.detach()
    predicted = predicted.unsqueeze(1)

    def gradient_and_hessian_gradient(slot):  # slot (B,): one competing class per image
        def summed_margin(y):  # sum_b F_i(y_b): its gradient holds every image's g_i
            logits = model(y)
            return (logits.gather(1, slot.unsqueeze(1)) - logits.gather(1, predicted)).sum()

        g, pullback = vjp(torch.func.grad(summed_margin), x)
        return g, pullback(g)[0]

    # Attention on a backend with double-backward rules; 1x1 convolutions without torch's wasted
    # weight gradient in the second backward pass.
    with forward_mode.corrected(), pointwise_conv.pointwise_as_matmul():
        g, hg = _by_class_slots(vmap(gradient_and_hessian_gradient), cls.transpose(0, 1))  # (K, B, *shape) each
    g = g.transpose(0, 1).reshape(B * K, -1)
    hg = hg.transpose(0, 1).reshape(B * K, -1)
    return g, hg / g.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _by_class_slots(fn, slots: torch.Tensor):
    """``fn(slots)`` for class slots ``(k, B)`` returning a tuple of ``(k, ...)`` tensors; when the
    device runs out of memory, the slots are split in halves (down to one class per call) and the
    parts concatenated, so deep models at high resolution still run, more slowly. (Not inside
    ``torch.compile``, whose caller handles its own errors.)"""
    if torch.compiler.is_compiling():
        return fn(slots)
    try:
        return fn(slots)
    except torch.OutOfMemoryError:
        if slots.shape[0] == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = slots.shape[0] // 2
    logger.info("out of memory for %d classes at once; splitting them in two", slots.shape[0])
    first, second = _by_class_slots(fn, slots[:half]), _by_class_slots(fn, slots[half:])
    return tuple(torch.cat(parts) for parts in zip(first, second))


def _hessian_normal_rows(model, x, cls, predicted):
    """Fallback of :func:`_hessian_normal_vectorised`: double backward on repeated images."""
    B, K = cls.shape
    with torch.enable_grad(), forward_mode.corrected(), pointwise_conv.pointwise_as_matmul():  # also under no_grad
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
                         taylor: bool | taylor_plan.Plan = True) -> torch.Tensor:
    """``(B, K)``: ``class_curvatures(...).sum(dim=2)``, the curvature of each class summed over
    the T directions, which is all Algorithm 2 needs. Summing first,

        sum_j (P v_j)^T H (P v_j) = sum_j v_j^T H v_j + (H n)^T (s n - 2 w),
        w = sum_j c_j v_j,  s = sum_j c_j^2,  c_j = n^T v_j,

    so with ``"autograd"`` the tangent projection costs one Hessian-vector product per class (by
    reverse-over-reverse mode, in the same pass as the class gradient: see
    :func:`hessian_normal_products`) instead of one per class and direction, and the sums
    ``v_j^T H v_j`` come from :func:`logit_quadratic_form_sums` (``taylor`` as there). fd/fd2 use
    :func:`class_curvatures`.
    """
    if method != "autograd":
        return class_curvatures(model, x, cls, predicted, V, method, h, max_rows).sum(dim=2)
    grad, hn = hessian_normal_products(model, x, cls, predicted, "autograd", 0.0)
    q_logits = logit_quadratic_form_sums(model, x, V, "autograd", 0.0, max_rows, taylor)
    return _projected_sums(q_logits, cls, predicted, V, grad, hn)


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
                                max_rows: int = 4096, taylor: bool | taylor_plan.Plan = True):
    """``(logits (B, L), predicted (B,), cls (B, K), sums (B, K))``: the exact
    :func:`class_curvature_sums` over the competing classes of :func:`competing_classes`, chosen
    from the logits that the Taylor-mode pass carries as its primal (no forward pass of their own
    for models with a plan)."""
    x = x.detach()
    logits, q_logits = _logits_and_exact_form_sums(model, x, V, max_rows, taylor)
    predicted, cls = competing_classes(logits, classes)
    grad, hn = hessian_normal_products(model, x, cls, predicted, "autograd", 0.0)
    return logits, predicted, cls, _projected_sums(q_logits, cls, predicted, V, grad, hn)


def _projected_sums(q_logits, cls, predicted, V, grad, hn) -> torch.Tensor:
    """``(B, K)``: :func:`class_curvature_sums` from its parts: every logit's ``sum_j v_j^T H v_j``
    ``q_logits (B, L)``, the class gradients ``grad (B*K, d)`` and ``hn = H_i n_i (B*K, d)``."""
    B, K = cls.shape
    T = V.shape[0]
    gnorm = grad.norm(dim=1).clamp_min(1e-30)
    n = grad / gnorm.unsqueeze(1)
    Vf = V.reshape(T, -1)
    c = n @ Vf.T  # (B*K, T)
    u = (c * c).sum(dim=1, keepdim=True) * n - 2 * (c @ Vf)  # s n - 2 w, (B*K, d)
    q = q_logits.gather(1, cls) - q_logits.gather(1, predicted.view(B, 1))  # (B, K)
    return (q + (hn * u).sum(dim=1).reshape(B, K)) / gnorm.reshape(B, K)
