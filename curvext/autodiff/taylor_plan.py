"""Collapsed second-order forward mode over a model's ``torch.fx`` graph: building, caching,
checking and running a model's :class:`Plan`.

Algorithm 2 needs second derivatives of every logit only in sums. For a batch ``x (B, *shape)``,
first-order tangent rows ``t (R, B, *shape)`` and pairs of rows ``(a, b)`` grouped into ``S``
targets, a plan returns, for every logit l,

    s[m] = sum over pairs (a, b) of target m of  D^2 f_l(x)[t_a, t_b]     (S, B, L)

in one pass that carries, node by node, the primal ``(B, ...)``, the R first-order rows and only
S second-order rows ("collapsed" Taylor mode: Li et al. 2023, *Forward Laplacian*; Dangel et al.
2024, *Collapsing Taylor mode automatic differentiation*). Forward-over-forward mode instead
carries, per pair, two first-order rows and one second-order row of its own: for the sum over T
directions of ``v^T H v`` a plan carries T + 1 rows instead of 3 T.

:func:`direction_sums` is what callers use: every logit's ``sum_j v_j^T H v_j`` and the logits
themselves, or None when the model has no usable plan (then forward-over-forward mode applies).
A model gets no plan when some operation on the carried value has no rule
(:mod:`curvext.autodiff.taylor_graph`), when ``torch.fx`` cannot trace it, or when its forward
takes several inputs or returns several outputs. Before its first use a plan's output is compared
once with the model's own (:func:`checked`): in-place updates through aliases, which ``torch.fx``
records as out-of-place operations, make them differ, and the model then falls back too. Plans
are cached per model and rebuilt when a module is replaced. Piecewise-linear layers (ReLU,
max-pool) follow the rules with their almost-everywhere derivatives, as forward-over-forward mode
does.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from curvext.autodiff.taylor_graph import classify, flat_nodes, module_signature
from curvext.autodiff.taylor_rules import RULES, Jet, NotPerImage, Pairs
from curvext.utils.model_checks import structural_copy

logger = logging.getLogger(__name__)

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
                env[step.name] = RULES[step.kind](fn, args, kwargs, pairs)
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


def build_plan(model: nn.Module) -> Plan | None:
    """Trace ``model`` with ``torch.fx`` and assign a rule to every node; None when it cannot be
    traced or some operation on the input's descendants has no rule."""
    try:
        traced = torch.fx.symbolic_trace(structural_copy(model))
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
        elif not any(a.name in carried for a in flat_nodes((node.args, node.kwargs))):
            kind = "plain"
        else:
            kind = classify(model, node, carried, stateful)
            if kind is None:
                return _no_plan(model, f"no rule for {node.op} {node.target}")
        if kind in ("input", "linear", "elementwise", "piecewise", "product", "smooth", "matrix_product"):
            carried.add(node.name)
        kinds.append(kind)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for arg in flat_nodes((node.args, node.kwargs)):
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


_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Plan | None]] = weakref.WeakKeyDictionary()


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


class DirectionSums(NamedTuple):
    """``logits (B, L)``: the model's output; ``sums (B, L)``: every logit's ``sum_j v_j^T H v_j``."""

    logits: torch.Tensor
    sums: torch.Tensor


@torch.no_grad()
def direction_sums(model: nn.Module, x: torch.Tensor, V: torch.Tensor, *, max_rows: int = 4096,
                   plan: bool | Plan = True) -> DirectionSums | None:
    """Every logit's exact ``sum_j v_j^T H v_j`` at ``x (B, *shape)`` over the directions
    ``V (T, *shape)``, and the logits (the pass's primal), by one collapsed Taylor-mode pass per
    chunk of directions (chunks keep ``(directions + 1) * B`` rows within ``max_rows``). None when
    the model has no usable plan: the caller then takes forward-over-forward mode.

    ``plan``: True looks the model's plan up (:func:`plan_for`), False never uses one, a
    :class:`Plan` is used as given (code compiled by ``torch.compile`` passes it: a lookup in the
    plan cache would put that cache into the compiler's guards)."""
    if plan is False:
        return None
    found = plan_for(model) if plan is True else plan
    if found is None:
        return None
    if not found.belongs_to(model):
        raise ValueError("plan: the plan was built for another model")
    if not found.usable():
        return None
    if not found.checked and not torch.compiler.is_compiling():
        found = checked(found, x)  # once per plan: the walk's output is the model's
        if found is None:
            return None
    B, T = x.shape[0], V.shape[0]
    chunk = max(1, max_rows // max(B, 1) - 1)
    logits, total = None, None
    for j0 in range(0, T, chunk):
        v = V[j0 : j0 + chunk]
        jet = found.run(x, v.unsqueeze(1), Pairs(1, squares=(slice(0, v.shape[0]), 0)))
        logits = jet.primal if logits is None else logits
        total = jet.second[0] if total is None else total + jet.second[0]
    return DirectionSums(logits, total)
