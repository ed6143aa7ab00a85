"""The rules of collapsed second-order forward mode ("Taylor mode"), one per kind of graph node.

A value carried through a model's graph is a :class:`Jet`: the primal ``(B, ...)``, R
first-order tangent rows and S collapsed second-order rows (one per target of :class:`Pairs`).
For a node ``y = f(z)`` each rule maps the rows as the chain rule of order two says,

    y' = J z',        y'' = J z'' + sum over the target's pairs of D^2 f[z'_a, z'_b],

with ``J`` and ``D^2 f`` taken in the way that suits the node (``sigma`` element-wise, ``Q`` the
pairs' symmetrised products):

* ``linear``: affine in the carried value (convolutions, linear layers, pooling, reshapes,
  eval-mode batch norm, sums, products with constants): every row through the node's jvp.
* ``elementwise``: ``y'' = sigma'(z) z'' + sigma''(z) Q(z', z')`` with sigma' and sigma'' taken once
  on the primal, in closed form where :mod:`curvext.autodiff.activation_derivatives` has one,
  else by reverse mode (double-backward formulas exist for more activations than forward ones).
* ``piecewise``: the same with ``sigma'' = 0`` (ReLU, Hardsigmoid, ...).
* ``product``: ``y = a b`` with both factors carried: ``y'' = a'' b + a b'' + 2 Q(a', b')``;
  ``matrix_product`` the same with matrix products (attention's ``a @ b``).
* ``smooth``: per-image maps that are not element-wise (layer/group/instance/RMS norm, softmax,
  log-softmax, ``F.normalize``): ``D^2 f`` by forward-over-forward mode at this node only.
* ``plain`` (no carried argument) and ``shape`` (size queries on the primal).

:mod:`curvext.autodiff.taylor_graph` decides which rule a node takes, and
:mod:`curvext.autodiff.taylor_plan` runs them over the graph.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from curvext.autodiff import activation_derivatives, forward_mode

#: modules that the linear rule runs inside forward_mode.corrected(): eval-mode batch norm as elementary
#: operations, which the compiler can trace through jvp, and adaptive average pools on contiguous input,
#: which vmap can batch. One flat tuple: torch.compile gives up on a nested one in isinstance.
_REROUTED_MODULES = (nn.modules.batchnorm._NormBase, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d)


#: smooth over a ``dim`` (second argument or keyword), which must not be the batch's.
SMOOTH_DIM_NAMES = frozenset({"softmax", "log_softmax", "softmin", "normalize"})


@dataclass
class Jet:
    """A value carried through the graph: ``primal (B, ...)`` and ``rows (R + S, B, ...)``, the R
    first-order rows followed by the S collapsed second-order rows (one tensor, so that a linear
    node maps them all in one call)."""

    primal: torch.Tensor
    rows: torch.Tensor
    order1: int  # R

    @property
    def first(self) -> torch.Tensor:
        return self.rows[: self.order1]

    @property
    def second(self) -> torch.Tensor:
        return self.rows[self.order1 :]


@dataclass(frozen=True)
class Pairs:
    """Which products of first-order rows feed each second-order row (target).

    ``squares``: ``(rows, target)``: target gets ``sum_{a in rows} D^2 f[t_a, t_a]`` (a Laplacian).
    ``products``: ``(left, right, targets)`` slices of equal length: target ``targets[i]`` gets
    ``D^2 f[t_left[i], t_right[i]]`` (mixed second derivatives).
    """

    count: int
    squares: tuple[slice, int] | None = None
    products: tuple[slice, slice, slice] | None = None

    def quad(self, a: torch.Tensor, b: torch.Tensor, op=torch.mul) -> torch.Tensor:
        """``(S, ...)``: the symmetrised bilinear form ``Q(a, b)`` of the pairs on rows ``a, b (R, ...)``
        with the product ``op`` (element-wise by default; ``torch.matmul`` for matrix products):
        a square contributes ``op(a_j, b_j)``, a pair ``(op(a_l, b_r) + op(a_r, b_l)) / 2``."""
        if a is b and op is torch.mul:  # one value squared: op commutes, half the work
            return self.apply(torch.mul, a)
        return self._gathered(lambda rows: op(a[rows], b[rows]),
                              lambda left, right: 0.5 * (op(a[left], b[right]) + op(a[right], b[left])))

    def apply(self, second, first: torch.Tensor) -> torch.Tensor:
        """``(S, ...)``: each target's sum of ``second(t_a, t_b)``, a symmetric bilinear map
        batched over its leading dimension, over its pairs of rows of ``first (R, ...)``."""
        return self._gathered(lambda rows: second(first[rows], first[rows]),
                              lambda left, right: second(first[left], first[right]))

    def _gathered(self, squared, paired) -> torch.Tensor:
        """The targets from ``squared(rows)`` (summed over its leading dimension) and
        ``paired(left, right)`` (one entry per pair); 0 when there are none."""
        out = None
        if self.squares is not None:
            rows, target = self.squares
            part = squared(rows).sum(dim=0)
            out = part.new_zeros((self.count,) + part.shape)
            out[target] += part
        if self.products is not None:
            left, right, targets = self.products
            part = paired(left, right)
            out = part.new_zeros((self.count,) + part.shape[1:]) if out is None else out
            out[targets] += part
        return 0 if out is None else out


def _mapped(tree, fn):
    """``tree`` with ``fn`` applied to every :class:`Jet` in it."""
    if isinstance(tree, Jet):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_mapped(a, fn) for a in tree)
    if isinstance(tree, dict):
        return {k: _mapped(v, fn) for k, v in tree.items()}
    return tree


def _primals(tree):
    return _mapped(tree, lambda j: j.primal)


def _jets(tree) -> list[Jet]:
    found: list[Jet] = []
    _mapped(tree, found.append)
    return found


def _substituted(tree, values):
    """``tree`` with its Jets replaced, in order, by ``values``."""
    it = iter(values)
    return _mapped(tree, lambda j: next(it))


def torch_name(target) -> str:
    """Name of a torch function or operator; '' for anything else (a user's own function)."""
    if isinstance(target, str):
        return target  # a Tensor method
    module = getattr(target, "__module__", None) or ""
    if not (module == "torch" or module.startswith("torch.") or module in ("operator", "_operator", "builtins")):
        return ""
    return getattr(target, "__name__", "")


def _plain(fn, args, kwargs, pairs):
    return fn(*args, **kwargs)


def _shape(fn, args, kwargs, pairs):
    return fn(*_primals(args), **_primals(kwargs))


def _linear(fn, args, kwargs, pairs):
    """Affine in the carried values: the rows go through the linear part (the jvp), all at once."""
    jets = _jets((args, kwargs))
    primals = tuple(j.primal for j in jets)

    def call(*values):
        a, k = _substituted((args, kwargs), values)
        return fn(*a, **k)

    def tangent(*us):
        return jvp(call, primals, us)

    # Eval-mode batch norm as elementary operations, which the compiler can trace through jvp, and
    # adaptive pools on contiguous input, which vmap can batch (only there: the context costs
    # Python time on every operation it sees).
    rerouted = (isinstance(fn, _REROUTED_MODULES)
                or forward_mode.replaces(fn))
    with forward_mode.corrected() if rerouted else contextlib.nullcontext():
        primal, rows = vmap(tangent, out_dims=(None, 0))(*(j.rows for j in jets))
    return Jet(primal, rows, jets[0].order1)


def _elementwise(fn, args, kwargs, pairs, piecewise_linear: bool = False):
    """``y = sigma(z)`` element by element (constants in the other arguments)."""
    (z,) = _jets((args, kwargs))
    inplace = kwargs.get("inplace", False) or getattr(fn, "inplace", False)
    p = z.primal

    def call(value):
        # An in-place activation gets a copy: it must not overwrite z (nor a differentiated leaf).
        a, k = _substituted((args, kwargs), [value.clone() if inplace else value])
        return fn(*a, **k)

    def slope_of(value):  # sigma' element by element: the gradient of the sum
        return grad(lambda v: call(v).sum())(value)

    known = None if piecewise_linear else activation_derivatives.closed_form(fn, args, kwargs)
    if known is not None:
        y, slope, bend = known(p)
    else:
        y = call(p)
        slope = slope_of(p)
        # Reverse over reverse: double-backward formulas exist for more activations than
        # forward-mode ones (SiLU has no forward-over-forward rule in torch 2.14).
        bend = None if piecewise_linear else grad(lambda v: slope_of(v).sum())(p)
    rows = slope * z.rows
    if bend is not None:
        rows[z.order1 :] += bend * pairs.quad(z.first, z.first)
    return Jet(y, rows, z.order1)


def _piecewise(fn, args, kwargs, pairs):
    """An element-wise piecewise-linear ``sigma`` (ReLU, Hardsigmoid, ...): sigma'' = 0 a.e."""
    return _elementwise(fn, args, kwargs, pairs, piecewise_linear=True)


def _smooth(fn, args, kwargs, pairs):
    """A smooth per-image map ``y = f(z)`` that is not element-wise (layer norm, softmax): every
    row through its jvp, and each pair's ``D^2 f(z)[t_a, t_b]`` by forward-over-forward mode at
    this node only (vmapped over the pairs), so the rest of the graph keeps its collapsed rows."""
    (z,) = _jets((args, kwargs))
    p = z.primal
    _require_per_image(fn, args, kwargs, p)

    def call(value):
        a, k = _substituted((args, kwargs), [value])
        return fn(*a, **k)

    def tangent(t):
        return jvp(call, (p,), (t,))

    def second(a, b):
        return jvp(lambda w: jvp(call, (w,), (a,))[1], (p,), (b,))[1]

    # Both passes in the corrected context: layer/instance norm's nested forward rule is wrong in
    # torch, and the compiler cannot trace torch's own first-order one with affine weights.
    with forward_mode.corrected():
        y, rows = vmap(tangent, out_dims=(None, 0))(z.rows)
        rows[z.order1 :] += pairs.apply(vmap(second), z.first)
    return Jet(y, rows, z.order1)


class NotPerImage(ValueError):
    """A smooth node that would mix the images of a batch (a plan for it is dropped)."""


def _require_per_image(fn, args, kwargs, p: torch.Tensor) -> None:
    """Raise :class:`NotPerImage` when the node normalises or soft-maxes over dimension 0 of
    ``p``, which the walk takes as the batch (negative dims and full-shape norms included)."""
    name = torch_name(fn) or getattr(fn, "__name__", "")  # Tensor methods are named too
    what = type(fn).__name__ if isinstance(fn, nn.Module) else name
    dim = getattr(fn, "dim", None) if isinstance(fn, nn.Module) else None
    if dim is None and name in SMOOTH_DIM_NAMES:
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 1 if name == "normalize" else None)
    if isinstance(dim, int) and p.ndim > 0 and dim % p.ndim == 0:
        raise NotPerImage(f"{what} over dimension {dim} of a {p.ndim}-d tensor")
    shape = getattr(fn, "normalized_shape", None) if isinstance(fn, nn.Module) else None
    if shape is None and name in ("layer_norm", "rms_norm"):
        shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
    if shape is not None:
        count = 1 if isinstance(shape, int) else len(tuple(shape))
        if count >= p.ndim:
            raise NotPerImage(f"{what} over all {p.ndim} dimensions")


def _product(fn, args, kwargs, pairs):
    """``y = a * b`` with both factors carried (one carried factor is a linear node)."""
    a, b = _jets((args, kwargs))
    shape = torch.broadcast_shapes(a.primal.shape, b.primal.shape)
    a_rows, b_rows = _broadcast_rows(a, shape), _broadcast_rows(b, shape)
    rows = a_rows * b.primal + a.primal * b_rows
    rows[a.order1 :] += 2 * pairs.quad(a_rows[: a.order1], b_rows[: b.order1])
    return Jet(a.primal * b.primal, rows, a.order1)


def _matrix_product(fn, args, kwargs, pairs):
    """``y = a @ b`` with both factors carried (attention's scores and weighted values):
    ``y'' = a'' b + a b'' + 2 Q(a', b')`` with matrix products (leading dimensions broadcast)."""
    a, b = _jets((args, kwargs))
    rows = torch.matmul(a.rows, b.primal) + torch.matmul(a.primal, b.rows)
    rows[a.order1 :] += 2 * pairs.quad(a.first, b.first, torch.matmul)
    return Jet(torch.matmul(a.primal, b.primal), rows, a.order1)


def _broadcast_rows(jet: Jet, shape: torch.Size) -> torch.Tensor:
    """``jet.rows (N, *p)`` expanded to ``(N, *shape)``, aligned from the right as the primal
    ``p`` broadcasts to ``shape`` (a per-channel gate times a feature map)."""
    n, p = jet.rows.shape[0], jet.primal.shape
    return jet.rows.reshape(n, *([1] * (len(shape) - len(p))), *p).expand(n, *shape)


RULES = {"plain": _plain, "shape": _shape, "linear": _linear, "elementwise": _elementwise, "piecewise": _piecewise,
          "smooth": _smooth, "product": _product, "matrix_product": _matrix_product}
