"""Second-order forward mode with collapsed second-order rows, over a model's ``torch.fx`` graph.

Algorithm 2 needs second derivatives of every logit only in sums. For a batch ``x (B, *shape)``,
first-order tangent rows ``t (R, B, *shape)`` and pairs of rows ``(a, b)`` grouped into ``S``
targets, :func:`second_order_sums` returns, for every logit l,

    s[m] = sum over pairs (a, b) of target m of  D^2 f_l(x)[t_a, t_b]     (S, B, L)

in one pass that carries, node by node, the primal ``(B, ...)``, the R first-order rows and only
S second-order rows ("collapsed" Taylor mode: Li et al. 2023, *Forward Laplacian*; Dangel et al.
2024, *Collapsing Taylor mode automatic differentiation*). Forward-over-forward mode instead
carries, per pair, two first-order rows and one second-order row of its own. For the sum over T
directions of ``v^T H v`` this is T + 1 rows instead of 3 T, about 2x faster on the zoo CNNs
(``benchmarks/bench_taylor_mode.py``).

Rules, per graph node (``sigma`` element-wise, ``A`` linear, ``Q`` the pairs' products):

* linear or affine in the carried input (convolutions, linear layers, pooling, reshapes,
  eval-mode batch norm, sums, products with constants): first and second rows both go through
  the node's linear part (its ``jvp``); the bias reaches only the primal.
* element-wise ``y = sigma(z)``: ``y' = sigma'(z) z'``, ``y'' = sigma'(z) z'' + sigma''(z) Q(z', z')``,
  with sigma' and sigma'' evaluated once, on the primal: in closed form for Softplus, Tanh,
  Sigmoid and SiLU (:mod:`curvext.activation_derivatives`), by reverse mode for the others (so
  activations without forward-over-forward rules work too).
* element-wise piecewise-linear (ReLU, Hardsigmoid, ...): the same with ``sigma'' = 0``, so
  only a first derivative is taken (Hardsigmoid has no double-backward formula).
* product of two carried values ``y = a b``: ``y'' = a'' b + a b'' + 2 Q(a', b')``; the same
  with matrix products for ``a @ b`` (attention), ``Q`` then taking matrix products of the rows.
* smooth per-image maps that are not element-wise (layer, group, instance and RMS norm; softmax,
  log-softmax and ``F.normalize`` over a non-batch dimension): ``y' = J z'``,
  ``y'' = J z'' + sum over pairs of D^2 f[z'_a, z'_b]``, the last by forward-over-forward mode
  at that node alone, so the rest of the graph keeps one row per target.
* shape queries (``size``, ``dim``) read the primal.

A model whose graph has any other operation on the carried value (attention modules such as
``nn.MultiheadAttention``, which ``torch.fx`` keeps whole, batch statistics, data-dependent control flow that
``torch.fx`` cannot trace, several outputs) gets no plan: :func:`plan_for` returns None and callers fall back to ``torch.func`` forward-over-forward.
Before its first use a plan's output is compared once with the model's own (:func:`checked`):
in-place updates through aliases, which ``torch.fx`` records as out-of-place operations, make
them differ, and the model then falls back too. Plans are cached per model and rebuilt when a
module is replaced.
Piecewise-linear layers (ReLU, max-pool) follow the same rules with their almost-everywhere
derivatives, as forward-over-forward mode does.
"""
from __future__ import annotations

import contextlib
import logging
import operator
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from curvext import activation_derivatives, forward_mode

logger = logging.getLogger(__name__)

#: nn modules whose output is affine in their input (in eval mode for the normalisation layers).
_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d,
                   nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                   nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.PixelShuffle, nn.PixelUnshuffle)
_ADAPTIVE_AVERAGE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
#: affine only with running statistics, i.e. in eval mode (training mode uses batch statistics or
#: random masks, which the detector refuses anyway).
_EVAL_LINEAR_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                        nn.Dropout3d, nn.AlphaDropout)
_ELEMENTWISE_MODULES = (nn.Softplus, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
                        nn.Softsign, nn.LogSigmoid, nn.Tanhshrink, nn.Hardswish)
#: smooth, per image, not element-wise (normalisation over an image's own features, softmax over
#: a non-batch dimension): taken node by node with forward-over-forward mode (rule ``smooth``).
_SMOOTH_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                   nn.Softmax, nn.LogSoftmax, nn.Softmin)
#: element-wise and piecewise linear: second derivative zero almost everywhere (Hardsigmoid, as in
#: MobileNetV3, has no double-backward formula, so the smooth rule could not differentiate it twice).
_PIECEWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardsigmoid)

# Functions (by name, from torch's namespaces) and Tensor methods, with the carried value as their
# first argument and constants elsewhere.
_LINEAR_NAMES = frozenset({
    "flatten", "reshape", "view", "squeeze", "unsqueeze", "permute", "transpose", "contiguous", "mean", "sum",
    "expand", "expand_as", "view_as", "reshape_as", "getitem", "neg", "pos", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d", "max_pool2d",
    "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "conv1d", "conv2d", "conv3d",
    "linear", "pad", "pixel_shuffle", "pixel_unshuffle"})
_ELEMENTWISE_NAMES = frozenset({
    "softplus", "tanh", "sigmoid", "gelu", "silu", "elu", "celu", "selu", "mish", "softsign", "logsigmoid",
    "hardswish", "exp", "log", "log1p", "expm1", "sin", "cos", "square", "sqrt", "rsqrt", "reciprocal", "erf", "pow"})
_PIECEWISE_NAMES = frozenset({"relu", "relu6", "leaky_relu", "hardtanh", "hardsigmoid"})
_SMOOTH_NAMES = frozenset({"layer_norm", "group_norm", "rms_norm", "instance_norm"})
#: smooth over a ``dim`` (second argument or keyword), which must not be the batch's.
_SMOOTH_DIM_NAMES = frozenset({"softmax", "log_softmax", "softmin", "normalize"})
# Linear in every carried argument (which may sit in lists: cat, stack).
_MULTI_LINEAR_NAMES = frozenset({"add", "sub", "cat", "concat", "concatenate", "stack"})
_PRODUCT_NAMES = frozenset({"mul"})
_MATRIX_PRODUCT_NAMES = frozenset({"matmul", "bmm"})
_DIVISION_NAMES = frozenset({"truediv", "div"})
_SHAPE_NAMES = frozenset({"size", "dim", "numel"})
#: attributes read with getattr that are metadata, not values (x.T or x.data are not).
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_METADATA_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout"})
_VIEW_NAMES = frozenset({"view", "reshape", "flatten", "transpose", "permute", "expand", "squeeze", "unsqueeze",
                         "contiguous", "getitem", "view_as", "reshape_as", "expand_as", "unflatten"})


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


@dataclass(frozen=True)
class _Ref:
    """A node's value in the argument templates of :class:`_Step`."""

    name: str


@dataclass(frozen=True)
class _Step:
    name: str  # the fx node's name, op and target
    op: str
    target: object
    kind: str  # "input", "attr", "plain", "shape", "linear", "elementwise", "piecewise", "product", "output"
    frees: tuple[str, ...]  # env entries last used by this step
    # node.args and node.kwargs with _Ref for nodes, the keywords as (names, values): plain Python
    # that torch.compile traces (it skips torch.fx's helpers and dict iterators).
    args: tuple = ()
    kwarg_names: tuple[str, ...] = ()
    kwarg_values: tuple = ()


def _template(tree):
    """``tree`` (nested tuples, lists, dicts) with every fx node replaced by a :class:`_Ref`."""
    if isinstance(tree, torch.fx.Node):
        return _Ref(tree.name)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_template(a) for a in tree)
    if isinstance(tree, slice):
        return slice(_template(tree.start), _template(tree.stop), _template(tree.step))
    if isinstance(tree, dict):
        raise TypeError("keyword arguments are templated as (name, value) pairs")
    return tree


def _filled(tree, env):
    if isinstance(tree, _Ref):
        return env[tree.name]
    if isinstance(tree, (tuple, list)):
        return type(tree)(_filled(a, env) for a in tree)
    if isinstance(tree, slice):
        return slice(_filled(tree.start, env), _filled(tree.stop, env), _filled(tree.step, env))
    return tree


def _mapped(tree, fn):
    """``tree`` with ``fn`` applied to every :class:`Jet` in it."""
    if isinstance(tree, Jet):
        return fn(tree)
    if isinstance(tree, (tuple, list)):
        return type(tree)(_mapped(a, fn) for a in tree)
    if isinstance(tree, dict):
        return {k: _mapped(v, fn) for k, v in tree.items()}
    return tree


def module_signature(model: nn.Module) -> tuple:
    """Every module's name, identity, class and the attributes the rules look at: what a plan's
    choice of rules depends on (a module replaced by another object, even of the same class,
    or switched to in-place, needs a new plan)."""
    return tuple((name, id(m), type(m), getattr(m, "inplace", None), getattr(m, "return_indices", None),
                  getattr(m, "track_running_stats", None), None if _is_fx_leaf(m) else m.training)
                 for name, m in model.named_modules())


def _is_fx_leaf(module: nn.Module) -> bool:
    """Whether ``torch.fx`` records ``module`` as one call (torch's own layers, as its default
    tracer decides) rather than tracing its ``forward``, whose Python branches on
    ``self.training`` the trace then bakes in (so the signature holds those modules' modes:
    torchvision's stochastic depth, a user's own dropout)."""
    origin = type(module).__module__ or ""
    return (origin.startswith("torch.nn") or origin.startswith("torch.ao.nn")) and not isinstance(module, nn.Sequential)


class Plan:
    """The node-by-node program for one model; built by :func:`plan_for`, run by :meth:`run`."""

    def __init__(self, model: nn.Module, steps: list[_Step], stateful: list[str], constants: dict):
        self._model = weakref.ref(model)
        self.steps = steps
        self._stateful = stateful  # names of modules affine only in eval mode
        self._constants = constants  # tensors the tracer lifted out of forward (torch.tensor(...))
        self.signature = module_signature(model)  # the rules were chosen for these modules
        self.checked = False  # set by check_against_model once its output matched the model's

    def belongs_to(self, model: nn.Module) -> bool:
        return self._model() is model

    def usable(self) -> bool:
        """False once the model is gone or a module was replaced, and while a batch-norm or dropout
        layer is in training mode."""
        model = self._model()
        return (model is not None and module_signature(model) == self.signature
                and not any(model.get_submodule(name).training for name in self._stateful))


    def run(self, x: torch.Tensor, first: torch.Tensor, pairs: Pairs) -> Jet:
        """Carry ``x (B, *shape)`` and tangent rows ``first (R, B, *shape)`` through the graph."""
        model = self._model()
        env: dict[str, object] = {}
        for step in self.steps:
            if step.kind == "input":
                rows = torch.cat([first.expand(first.shape[0], *x.shape), x.new_zeros((pairs.count,) + x.shape)])
                env[step.name] = Jet(x, rows, first.shape[0])
            elif step.kind == "attr":
                constant = self._constants.get(step.target)
                env[step.name] = _attribute(model, step.target) if constant is None else constant
            elif step.kind == "output":
                return _filled(step.args, env)[0]
            else:
                fn = _callable(model, step)
                args = _filled(step.args, env)
                kwargs = dict(zip(step.kwarg_names, _filled(step.kwarg_values, env)))
                env[step.name] = _RULES[step.kind](fn, args, kwargs, pairs)
            for name in step.frees:
                env.pop(name, None)
        raise RuntimeError("graph without output")  # fx graphs always end in one


def _attribute(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _callable(model: nn.Module, step: _Step):
    if step.op == "call_module":
        return model.get_submodule(step.target)
    if step.op == "call_method":
        return getattr(torch.Tensor, step.target)  # called with the tensor first; keeps the name
    return step.target


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
    rerouted = (isinstance(fn, (nn.modules.batchnorm._NormBase, _ADAPTIVE_AVERAGE_POOLS))
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
    name = _name(fn) or getattr(fn, "__name__", "")  # Tensor methods are named too
    what = type(fn).__name__ if isinstance(fn, nn.Module) else name
    dim = getattr(fn, "dim", None) if isinstance(fn, nn.Module) else None
    if dim is None and name in _SMOOTH_DIM_NAMES:
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


_RULES = {"plain": _plain, "shape": _shape, "linear": _linear, "elementwise": _elementwise, "piecewise": _piecewise,
          "smooth": _smooth, "product": _product, "matrix_product": _matrix_product}


def _name(target) -> str:
    """Name of a torch function or operator; '' for anything else (a user's own function)."""
    if isinstance(target, str):
        return target  # a Tensor method
    module = getattr(target, "__module__", None) or ""
    if not (module == "torch" or module.startswith("torch.") or module in ("operator", "_operator", "builtins")):
        return ""
    return getattr(target, "__name__", "")


def _classify(model: nn.Module, node: torch.fx.Node, carried: set[str], stateful: list[str]) -> str | None:
    """The rule for a call node whose arguments include carried values; None if none applies."""
    carried_args = [a for a in _flat_nodes(node.args) if a.name in carried]
    carried_kwargs = [a for a in _flat_nodes(node.kwargs) if a.name in carried]
    first_is_carried = bool(node.args) and isinstance(node.args[0], torch.fx.Node) and node.args[0].name in carried
    only_first = first_is_carried and len(carried_args) == 1 and not carried_kwargs
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        if not only_first:
            return None
        if getattr(module, "return_indices", False):
            return None  # max-pool modules returning (values, indices)
        if isinstance(module, _LINEAR_MODULES):
            return "linear"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
            return None  # batch statistics even in eval mode: not affine per image
        if isinstance(module, _EVAL_LINEAR_MODULES):
            stateful.append(node.target)
            return "linear"
        if isinstance(module, _SMOOTH_MODULES):
            return "smooth" if _per_image_dim(getattr(module, "dim", 1)) else None
        for classes, kind in ((_ELEMENTWISE_MODULES, "elementwise"), (_PIECEWISE_MODULES, "piecewise")):
            if isinstance(module, classes):
                return kind if _inplace_safe(model, node, getattr(module, "inplace", False)) else None
        return None
    if _is_inactive_stochastic_depth(node) and only_first:
        return "linear"  # torchvision's residual-branch dropout, the identity in eval mode
    name = _name(node.target)
    if name.endswith("_") and not name.startswith("__"):
        return None  # in-place methods and functions (relu_, add_) would overwrite a carried primal
    if name in _SHAPE_NAMES and only_first:
        return "shape"
    if name == "getattr" and only_first:
        return "shape" if len(node.args) > 1 and node.args[1] in _METADATA_ATTRIBUTES else None
    if name in _LINEAR_NAMES and only_first:
        if name.endswith("pool1d") or name.endswith("pool2d") or name.endswith("pool3d"):
            if node.kwargs.get("return_indices", False):
                return None
        return "linear"
    if name in _MULTI_LINEAR_NAMES and not carried_kwargs:
        return "linear"
    if name in _PRODUCT_NAMES and not carried_kwargs:
        return "product" if len(carried_args) == 2 else "linear"
    if name in _MATRIX_PRODUCT_NAMES and not carried_kwargs and len(node.args) == 2:
        return "matrix_product" if len(carried_args) == 2 else "linear"
    if name in _DIVISION_NAMES and only_first:
        return "linear"
    if name in _SMOOTH_NAMES and only_first:
        return "smooth"
    if name in _SMOOTH_DIM_NAMES and only_first:
        default = 1 if name == "normalize" else None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", default)
        return "smooth" if _per_image_dim(dim) else None
    if name in _PIECEWISE_NAMES and only_first:
        return "piecewise" if _inplace_safe(model, node, node.kwargs.get("inplace", False)) else None
    if name in _ELEMENTWISE_NAMES and only_first:
        if name == "pow" and not (len(node.args) > 1 and isinstance(node.args[1], (int, float))):
            return None  # a tensor exponent may broadcast the output beyond the input's shape
        return "elementwise" if _inplace_safe(model, node, node.kwargs.get("inplace", False)) else None
    return None


def _is_inactive_stochastic_depth(node: torch.fx.Node) -> bool:
    """``torchvision.ops.stochastic_depth(input, p, mode, training)`` traced with training False."""
    target = node.target
    if getattr(target, "__name__", "") != "stochastic_depth":
        return False
    if not (getattr(target, "__module__", "") or "").startswith("torchvision.ops"):
        return False
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False


def _per_image_dim(dim) -> bool:
    """Whether a softmax/normalisation ``dim`` stays within each image: given, constant and not
    the batch's (a missing ``dim`` makes softmax pick one by the input's rank)."""
    return isinstance(dim, int) and dim != 0


def _inplace_safe(model: nn.Module, node: torch.fx.Node, inplace: bool) -> bool:
    """An in-place activation overwrites its input in the eager model; the rules compute it out of
    place, which is the same only when nothing else reads that input, nor anything it is a view of
    (followed up through view-like nodes; the model's own input counts as read by the caller)."""
    if not inplace:
        return True
    value = node.args[0]
    while True:
        if len(value.users) != 1 or value.op == "placeholder":
            return False
        viewing = (value.op in ("call_method", "call_function") and _name(value.target) in _VIEW_NAMES) or (
            value.op == "call_module" and isinstance(model.get_submodule(value.target), _VIEW_MODULES))
        if not viewing or not value.args or not isinstance(value.args[0], torch.fx.Node):
            return True
        value = value.args[0]


def _flat_nodes(tree) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(tree, lambda n: found.append(n) or n)
    return found


def build_plan(model: nn.Module) -> Plan | None:
    """Trace ``model`` with ``torch.fx`` and assign a rule to every node; None when it cannot be
    traced or some operation on the input's descendants has no rule."""
    from curvext._model_checks import _structural_copy

    try:
        traced = torch.fx.symbolic_trace(_structural_copy(model))
    except Exception as err:  # noqa: BLE001  (tracing fails in many ways on dynamic Python code)
        return _no_plan(model, f"torch.fx cannot trace it ({str(err).splitlines()[0][:200] if str(err) else err!r})")
    nodes = list(traced.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return _no_plan(model, f"its forward takes {len(placeholders)} inputs, not one")
    carried: set[str] = set()
    kinds: list[str] = []
    stateful: list[str] = []
    constants: dict = {}
    for node in nodes:
        if node.op == "placeholder":
            kind = "input"
        elif node.op == "get_attr":
            kind = "attr"
            try:
                _attribute(model, node.target)
            except AttributeError:  # a constant the tracer lifted out of forward
                constants[node.target] = _attribute(traced, node.target)
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node) or out.name not in carried:
                return _no_plan(model, "its output is not one tensor computed from the input")
            kind = "output"
        elif not any(a.name in carried for a in _flat_nodes((node.args, node.kwargs))):
            kind = "plain"
        else:
            kind = _classify(model, node, carried, stateful)
            if kind is None:
                return _no_plan(model, f"no rule for {node.op} {node.target}")
        if kind in ("input", "linear", "elementwise", "piecewise", "product", "smooth", "matrix_product"):
            carried.add(node.name)
        kinds.append(kind)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for arg in _flat_nodes((node.args, node.kwargs)):
            last_use[arg.name] = i
    frees: list[list[str]] = [[] for _ in nodes]
    for name, i in last_use.items():
        frees[i].append(name)
    steps = [_Step(node.name, node.op, node.target, kind, tuple(frees[i]), _template(node.args), tuple(node.kwargs),
                   _template(tuple(node.kwargs.values())))
             for i, (node, kind) in enumerate(zip(nodes, kinds))]
    return Plan(model, steps, stateful, constants)


def _no_plan(model: nn.Module, why: str) -> None:
    logger.info("taylor mode: %s uses forward-over-forward mode: %s", type(model).__name__, why)
    return None


_PLANS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Plan | None]]" = weakref.WeakKeyDictionary()


def plan_for(model: nn.Module) -> Plan | None:
    """The cached plan of ``model`` (built on first use, and again after a module was replaced by
    one of another class), or None if it has none or cannot use it now (a batch-norm or dropout
    layer in training mode)."""
    signature = module_signature(model)
    cached = _PLANS.get(model)
    if cached is None or cached[0] != signature:
        cached = _PLANS[model] = (signature, build_plan(model))
    plan = cached[1]
    return plan if plan is not None and plan.usable() else None


@torch.no_grad()
def checked(plan: Plan, x: torch.Tensor) -> Plan | None:
    """``plan`` once its output on ``x`` equals the model's own (checked once per plan), else None
    from then on. The graph walk computes in-place operations out of place; where the model relied
    on one overwriting an alias (``h = y; y += 1`` is recorded as an out-of-place add), the walk
    would silently differ, and only the model's own output shows it."""
    if plan.checked:
        return plan
    model = plan._model()
    expected = model(x.clone())
    try:
        got = plan.run(x, x.new_zeros((1,) + x.shape), Pairs(0)).primal
    except NotPerImage as err:
        logger.warning("taylor mode: %s mixes the images of a batch (%s); using forward-over-forward mode for it",
                       type(model).__name__, err)
        _PLANS[model] = (plan.signature, None)
        return None
    scale = expected.abs().max().clamp_min(1e-30)
    tolerance = max(1e-4, 8 * torch.finfo(expected.dtype).eps)  # rounding differs: float16 eps is 1e-3
    if got.shape != expected.shape or float((got - expected).abs().max() / scale) > tolerance:
        logger.warning("taylor mode: the graph walk's output differs from %s's own (in-place updates of "
                       "aliased tensors?); using forward-over-forward mode for it", type(model).__name__)
        _PLANS[model] = (plan.signature, None)
        return None
    plan.checked = True
    return plan


@torch.no_grad()
def second_order_sums(plan: Plan, x: torch.Tensor, first: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """``(S, B, L)``: for each target m, the sum of ``D^2 f(x_b)[t_a, t_b]`` over its pairs, for
    every output l; ``x (B, *shape)``, ``first (R, B, *shape)``."""
    return plan.run(x, first, pairs).second
