"""Algorithm 2's exact per-class curvature sums through ``torch.compile``.

``CurvatureDetector(method="autograd", compile=True)`` scores its groups of images with a
compiled :func:`curvext.curvature.quadratic_forms.scored_class_curvature_sums`. The compiler
fuses the element-wise work of the second-order passes (activations and their first and second
derivatives along every direction and class), which eager PyTorch runs as separate kernels. After
a one-off compilation per model it pays over long sweeps, not for a few images (BENCHMARKS.md has
the measurements). Results equal the eager ones to float rounding. The model's
:mod:`curvext.autodiff.taylor_plan` plan is looked up before compiling and passed in, and the
whole computation is one graph (no graph break; tested).

The compiler runs in inductor's inference ("freezing") mode, under ``torch.no_grad``: its
inference passes merge common subexpressions across the passes (each runs the model's forward)
and fold constants. In torch 2.14 the parameters stay inputs of the compiled graph, so in-place
weight updates are seen by the next call (tested).

Every call sees the same shapes: a last, smaller group is padded with copies of its last image
(and the padding's results dropped), so the function compiles once. If compilation fails (no C++
compiler, an operation the compiler cannot handle), a warning says why and the eager function is
used from then on; the same happens if the first group's compiled results differ from the eager
function's beyond rounding (the compiler has produced wrong second derivatives for some graphs).
"""
from __future__ import annotations

import logging
import warnings

import torch

from curvext.autodiff import taylor_plan
from curvext.curvature.quadratic_forms import scored_class_curvature_sums

logger = logging.getLogger(__name__)


class CompiledCurvatureSums:
    """``(x (b, *shape), V (T, *shape)) -> (logits (b, L), predicted (b,), cls (b, K), sums (b, K))``:
    :func:`curvext.curvature.quadratic_forms.scored_class_curvature_sums` (the exact method over the
    ``classes`` highest-scoring competing classes), compiled once for groups of ``batch_size``
    images (``b <= batch_size``)."""

    def __init__(self, model: torch.nn.Module, batch_size: int, classes: int | None = None):
        self.model = model
        self.batch_size = batch_size
        self.classes = classes
        # Looked up now, eagerly, and passed in: tracing with torch.fx inside the compiler would break
        # its graph, and a lookup in the plan cache would put that cache into the compiled code's guards.
        self._taylor = taylor_plan.plan_for(model) or False
        self._compiled = torch.compile(self._eager, dynamic=False, options={"freezing": True})
        self.failed = False
        self.verified = False  # the first compiled group is checked against the eager function

    def _eager(self, x, V):
        return scored_class_curvature_sums(self.model, x, V, self.classes, taylor=self._taylor)

    def __call__(self, x, V):
        if self.failed:
            return self._eager(x, V)
        if self._taylor is not False and not self._taylor.checked:  # eagerly, before the first compilation
            self._taylor = taylor_plan.checked(self._taylor, x) or False
        b = x.shape[0]
        pad = self.batch_size - b
        if pad > 0:  # one shape for every group: no recompilation for the last one
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
        else:
            # A group is a slice of the caller's batch; torch 2.14's compiler fails on views of a
            # larger base ("Tensor device mismatch"), so it gets a tensor of its own.
            x = x.clone()
        try:
            with warnings.catch_warnings():
                # functorch's notice, while the compiler traces vmap, that a view op lacks a batching
                # rule: it concerns tracing speed, not the compiled kernels.
                warnings.filterwarnings("ignore", message=r".*not yet implemented the batching rule.*",
                                        category=UserWarning)
                with torch.no_grad():  # inductor applies its inference passes only without grad mode
                    out = self._compiled(x, V)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001  (the compiler's errors have many types)
            self.failed = True
            logger.warning("torch.compile could not compile the curvature sums (%s: %s); running them "
                           "eagerly", type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            return self._eager(x[:b], V)
        if not self.verified:
            out = self._verified_against_eager(x, V, out)
        return tuple(t[:b] for t in out)

    def _verified_against_eager(self, x, V, compiled):
        """``compiled`` (the first group's results) if they equal the eager function's to rounding;
        otherwise the eager results, with a warning, and eager from then on. The compiler has
        produced silently wrong second derivatives for some graphs (a model with
        ``F.log_softmax(h, dim=-1)`` in torch 2.14), so the first group is computed both ways."""
        eager = self._eager(x, V)
        tol = 1e-8 if x.dtype == torch.float64 else 1e-3
        same = all(torch.equal(c, e) for c, e in zip(compiled[1:3], eager[1:3]))  # predicted, classes
        for c, e in (compiled[0], eager[0]), (compiled[3], eager[3]):  # logits, sums
            same = same and float((c - e).abs().max()) <= tol * max(float(e.abs().max()), 1e-30)
        self.verified = True
        if same:
            return compiled
        self.failed = True
        logger.warning("torch.compile's curvature sums differ from the eager ones on the first group (a compiler "
                       "bug); running them eagerly")
        return eager
