"""Watching a model's input-space curvature while it trains (docs/method.md §10).

:class:`CurvatureMonitor` is called once per training step and, every ``every`` steps, measures
on the first ``images`` images of the batch:

* ``curvature``: the largest magnitude ``max_i |kappa_i|`` of the principal curvatures at the
  image of the boundary surface of ``F = f_r - f_k̂`` through it (k̂ the predicted class, r the
  runner-up; docs/method.md §1 sign convention, §3 operator), by batched Lanczos ("LM") on
  :class:`curvext.curvature.operators.CurvatureOperator` in tangent coordinates;
* ``rho``: Algorithm 2's mean normal curvature (:func:`curvext.detection.scoring.score_images`);
* ``grad_norm``: ``||grad_x loss(f(x_b), y_b)||`` per image (cross-entropy; labels ``y``, or the
  model's predictions when none are given).

It records the median and the maximum of each over the images. The measurement runs in eval
mode on a detached copy of the images with every parameter's ``requires_grad`` switched off;
afterwards the modules' train/eval flags, the ``requires_grad`` flags, the parameters' ``.grad``
tensors and the global RNG state are put back, so a training run is bit-for-bit the same with
the monitor as without it.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from curvext.curvature.operators import CurvatureOperator
from curvext.curvature.quadratic_forms import METHODS
from curvext.detection.config import DEFAULT_SCALE, DetectorConfig
from curvext.detection.scoring import score_images
from curvext.linalg import lanczos, power_iteration
from curvext.utils import model_checks
from curvext.utils.optional import optional_import
from curvext.utils.validation import require_positive_int

logger = logging.getLogger(__name__)

MEASURES = ("curvature", "rho", "grad_norm")
STATISTICS = ("median", "max")


def trainable_parameters(model: torch.nn.Module, name: str = "model") -> list[torch.nn.Parameter]:
    """The parameters of ``model`` that require grad; TypeError/ValueError when it is not a
    module or has none (nothing is being trained)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name} has no parameters that require grad: there is nothing to train "
                         "(a model in training has at least one parameter with requires_grad=True)")
    return params


def resolve_methods(model: torch.nn.Module, method: str) -> tuple[str, str]:
    """``(curvature method, rho method)`` for ``method``: "auto" gives ("autograd", "autograd")
    for smooth models and ("fd", "fd2") for piecewise-linear ones
    (:func:`curvext.utils.model_checks.is_piecewise_linear`); "fd2" gives ("fd", "fd2"), since
    principal curvatures need Hessian-vector products; "autograd" and "fd" are used for both."""
    if method == "auto":
        return ("fd", "fd2") if model_checks.is_piecewise_linear(model) else ("autograd", "autograd")
    if method not in METHODS:
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    return ("fd" if method == "fd2" else method), method


@contextlib.contextmanager
def measuring(model: torch.nn.Module, device: torch.device):
    """Eval mode, parameters without ``requires_grad`` and a forked global RNG for the body;
    the train/eval flag of every module, the ``requires_grad`` flags, the ``.grad`` tensors
    (the same objects) and the RNG state of the CPU and ``device`` are restored on exit, also
    after an exception."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else "cuda"):
        try:
            for m, _ in modes:  # flags, not train(False): no override's side effects, and torch.export
                m.training = False  # modules refuse train()
            for p in params:
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
        finally:
            for m, training in modes:
                m.training = training
            for p, flag, grad in zip(params, flags, grads):
                p.requires_grad_(flag)
                p.grad = grad


def summarize(values: torch.Tensor) -> tuple[float, float]:
    """``(median, max)`` of the finite entries of ``values (n,)`` (the median of an even count is
    the mean of the middle two, as numpy's); NaN, NaN when none is finite."""
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return math.nan, math.nan
    return float(torch.quantile(v, 0.5)), float(v.max())


class CurvatureMonitor:
    """Input-space curvature of a model in training, measured every ``every`` steps.

    Args:
        model: the classifier being trained, ``(B, C, H, W) -> (B, L)`` logits, with at least one
            parameter that requires grad.
        every: measure at the steps ``s`` with ``s % every == 0`` (the first step included).
        images: measure on the first ``min(images, B)`` images of each batch.
        k: principal curvatures of largest magnitude Lanczos converges per image (the record
            holds the largest; ``k > 1`` guards against a near tie at the top, at more operator
            applications).
        method: "auto" (exact second derivatives for smooth models; finite differences, "fd"
            for the principal curvatures and "fd2" for rho, at scale ``h`` for piecewise-linear
            ones), "autograd", "fd" or "fd2" (principal curvatures then take "fd").
        h: finite-difference scale in input units (l2), default
            :data:`curvext.detection.config.DEFAULT_SCALE` for fd/fd2; unused by autograd.
        writer: a TensorBoard ``SummaryWriter`` (anything with ``add_scalar(tag, value,
            step)``): each statistic goes to ``f"{tag}/{name}"``.
        callback: called with each record.
        directions: rho's T random directions.
        tol, max_steps: the Lanczos settings (:func:`curvext.lanczos`); the default tol 1e-2
            bounds the residual to 1% of the value, whose own error is then of the order of the
            residual squared over the gap. Where Lanczos fails on a finite-difference operator
            (a warning says so), power iteration ("LM", ``max_steps`` or 60 steps) measures instead.
        seed: seeds the directions and the Lanczos start vectors (the global RNG is not used).
        measures: a subset of ``("curvature", "rho", "grad_norm")`` to measure.
        tag: prefix of the writer's scalars.

    Attributes:
        history: list of the records, oldest first (``pandas.DataFrame(monitor.history)``).
        calls: the number of :meth:`step` calls so far (the default step number).
        methods: ``(curvature method, rho method)`` resolved from ``method``.
    """

    def __init__(self, model: torch.nn.Module, *, every: int = 100, images: int = 32, k: int = 1,
                 method: str = "auto", h: float | None = None, writer=None,
                 callback: Callable[[dict], object] | None = None, directions: int = 16, tol: float = 1e-2,
                 max_steps: int | None = None, seed: int = 0, measures: tuple = MEASURES,
                 tag: str = "curvature"):
        trainable_parameters(model)
        self.model = model
        self.every = require_positive_int(every, "every")
        self.images = require_positive_int(images, "images")
        self.k = require_positive_int(k, "k")
        if max_steps is not None:
            require_positive_int(max_steps, "max_steps")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol must be a positive number, got {tol!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        measures = tuple(measures) if not isinstance(measures, str) else (measures,)
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ValueError(f"measures must be a non-empty subset of {MEASURES}, got {measures!r}")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have an add_scalar(tag, value, step) method (a TensorBoard "
                            f"SummaryWriter), got {type(writer).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self.methods = resolve_methods(model, method)
        if h is None:
            h = DEFAULT_SCALE
        elif not (isinstance(h, (int, float)) and not isinstance(h, bool) and math.isfinite(h) and h > 0):
            raise ValueError(f"h must be a positive finite scale, got {h!r}")
        self.h = float(h)
        # Algorithm 2's settings; input_range=None: training images may be normalised.
        self.config = DetectorConfig(num_directions=require_positive_int(directions, "directions"),
                                     method=self.methods[1], h=None if self.methods[1] == "autograd" else self.h,
                                     seed=seed, input_range=None, batch_size=self.images)
        self.tol, self.max_steps, self.seed = float(tol), max_steps, seed
        self.measures = measures
        self.writer, self.callback, self.tag = writer, callback, tag
        self.history: list[dict] = []
        self.calls = 0

    def due(self, step: int) -> bool:
        """Whether :meth:`step` measures at ``step``."""
        return step % self.every == 0

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None, step: int | None = None) -> dict | None:
        """Call once per training step with the batch ``x (B, C, H, W)`` (and its labels
        ``y (B,)`` int64); ``step`` defaults to the number of earlier calls. Returns the record
        (a dict: ``step``, ``images``, ``seconds`` and ``f"{measure}_{median|max}"``) at the
        steps it measures, else None."""
        if step is None:
            step = self.calls
        elif isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be None or an int >= 0, got {step!r}")
        self.calls += 1
        if not self.due(step):
            return None
        record = self.measure(x, y, step)
        self.history.append(record)
        if self.writer is not None:
            for name, value in record.items():
                if name != "step":
                    self.writer.add_scalar(f"{self.tag}/{name}", value, step)
        if self.callback is not None:
            self.callback(record)
        return record

    def measure(self, x: torch.Tensor, y: torch.Tensor | None = None, step: int = 0) -> dict:
        """The record for the first ``images`` images of ``x`` now, whatever the step (not
        added to the history)."""
        x, y = self._batch(x, y)
        start = time.perf_counter()
        with measuring(self.model, x.device):
            values = self._values(x, y)
        record = {"step": int(step), "images": int(x.shape[0]), "seconds": time.perf_counter() - start}
        for name in self.measures:
            record[f"{name}_median"], record[f"{name}_max"] = summarize(values[name])
        return record

    def values(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The per-image values behind a record, ``{measure: (b,)}`` for the first ``images``
        images (NaN where a curvature has no boundary normal, ``grad F = 0``)."""
        x, y = self._batch(x, y)
        with measuring(self.model, x.device):
            return self._values(x, y)

    def _batch(self, x, y):
        """The first ``images`` images (detached) and their labels, checked."""
        model_checks.check_images(x, "x", input_range=None)
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
                raise ValueError(f"y must be None or a (B,) = ({x.shape[0]},) integer tensor of class labels, got "
                                 f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
            y = y[: self.images].detach().to(device=x.device, dtype=torch.long)
        return x[: self.images].detach(), y

    def _values(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = {}
        if "grad_norm" in self.measures or "curvature" in self.measures:
            grad_norm, normal_norm, pair = self._first_order(x, y)
            if "grad_norm" in self.measures:
                out["grad_norm"] = grad_norm
            if "curvature" in self.measures:
                out["curvature"] = self._top_curvature(x, pair, normal_norm)
        if "rho" in self.measures:
            out["rho"] = score_images(self.model, x, self.config).rho
        return out

    def _first_order(self, x, y):
        """Per image: the loss gradient's norm, ``||grad F||`` and the pair (runner-up, predicted),
        from one forward pass."""
        xg = x.clone().requires_grad_(True)
        logits = self.model(xg)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0] or logits.shape[1] < 2:
            raise ValueError(f"model must map (B, C, H, W) images to (B, L) logits with L >= 2, got "
                             f"{tuple(logits.shape)}")
        top2 = logits.detach().topk(2, dim=1).indices
        labels = top2[:, 0] if y is None else y
        (g,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), xg, retain_graph=True)
        rows = torch.arange(x.shape[0], device=x.device)
        (gF,) = torch.autograd.grad((logits[rows, top2[:, 1]] - logits[rows, top2[:, 0]]).sum(), xg)
        return g.flatten(1).norm(dim=1), gF.flatten(1).norm(dim=1), (top2[:, 1], top2[:, 0])

    def _top_curvature(self, x, pair, normal_norm):
        """``max_i |kappa_i|`` per image (NaN where ``grad F = 0``: no boundary normal)."""
        out = torch.full((x.shape[0],), math.nan, dtype=x.dtype, device=x.device)
        keep = (normal_norm > 0).nonzero().flatten()
        d = x[0].numel()
        if keep.numel() == 0 or d < 2:
            return out
        G = CurvatureOperator(self.model, x[keep], pair[0][keep], pair[1][keep], method=self.methods[0],
                              h=None if self.methods[0] == "autograd" else self.h, tangent_coords=True)
        g = torch.Generator().manual_seed(self.seed)
        v0 = torch.randn((keep.numel(), d - 1), generator=g, dtype=torch.float64).to(x)
        try:
            res = lanczos(G, v0, k=min(self.k, d - 1), which="LM", tol=self.tol, max_steps=self.max_steps,
                          vectors=False, seed=self.seed)
        except FloatingPointError as err:
            # A finite-difference operator of a piecewise-linear net can return exactly zero for a
            # Lanczos vector mid-run (no kink within h along it); Lanczos's relative breakdown test
            # then misses the breakdown and its next vector overflows. Power iteration stops there.
            logger.warning("curvature monitor: Lanczos failed (%s); power iteration instead", err)
            res = power_iteration(G, v0, which="LM", max_iters=self.max_steps or 60, tol=self.tol)
        out[keep] = res.eigenvalues.abs().nan_to_num(nan=0.0).amax(dim=1).to(out.dtype)  # NaN: not found
        return out

    def frame(self):
        """The history as a ``pandas.DataFrame`` (needs pandas: ``pip install 'curvext[eval]'``)."""
        pd = optional_import("pandas")
        return pd.DataFrame(self.history)
