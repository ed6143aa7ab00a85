"""Which Taylor-mode rule each node of a model's ``torch.fx`` graph takes (or that none does).

:func:`classify` looks at a call node whose arguments include carried values (descendants of
the model's input) and names its rule (:mod:`curvext.autodiff.taylor_rules`), or returns None when
no rule applies: attention modules that ``torch.fx`` keeps whole, batch statistics, in-place
operations whose input is read elsewhere, several carried arguments where one is expected.
:func:`module_signature` records what these choices depend on, so a plan is rebuilt when a module
is replaced.
"""
from __future__ import annotations

import torch
from torch import nn

from curvext.autodiff.taylor_rules import SMOOTH_DIM_NAMES, torch_name

#: nn modules whose output is affine in their input (in eval mode for the normalisation layers).
_LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.MaxPool1d, nn.MaxPool2d,
                   nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                   nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.PixelShuffle, nn.PixelUnshuffle)


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


def classify(model: nn.Module, node: torch.fx.Node, carried: set[str], stateful: list[str]) -> str | None:
    """The rule for a call node whose arguments include carried values; None if none applies."""
    carried_args = [a for a in flat_nodes(node.args) if a.name in carried]
    carried_kwargs = [a for a in flat_nodes(node.kwargs) if a.name in carried]
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
    name = torch_name(node.target)
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
    if name in SMOOTH_DIM_NAMES and only_first:
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
        viewing = (value.op in ("call_method", "call_function") and torch_name(value.target) in _VIEW_NAMES) or (
            value.op == "call_module" and isinstance(model.get_submodule(value.target), _VIEW_MODULES))
        if not viewing or not value.args or not isinstance(value.args[0], torch.fx.Node):
            return True
        value = value.args[0]


def flat_nodes(tree) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(tree, lambda n: found.append(n) or n)
    return found
