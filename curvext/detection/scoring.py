"""Algorithm 2's statistic for a batch of images under a :class:`DetectorConfig` (docs/method.md §7).

For an image x with predicted class k̂ and competing classes i,

    rho(x) = 1 / ((K + 1) T) * sum_{i != k̂} sum_{j=1..T} kappa_i(v_j),
    kappa_i(v) = (P_i v)^T H_i (P_i v) / ||g_i||,

the curvature of ``F_i = f_i - f_k̂`` (normal toward class i, out of the image's own region) along
T random unit directions ``v_j`` shared by every class and image; K competing classes enter the
sum (all ``L - 1`` by default, so the factor is ``1 / (L T)``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvext.curvature import verification
from curvext.curvature.quadratic_forms import (
    class_curvature_sums,
    competing_classes,
    scored_class_curvature_sums,
)
from curvext.detection.config import DetectorConfig
from curvext.detection.deflated import deflated_class_curvatures
from curvext.utils import model_checks
from curvext.utils.progress import progress_bar
from curvext.utils.reprs import ShortRepr

#: ``(x (b, *shape), V (T, *shape)) -> (logits, predicted, cls, sums)``: the exact sums of
#: :func:`curvext.curvature.quadratic_forms.scored_class_curvature_sums`, e.g. compiled.
ExactSums = Callable[[torch.Tensor, torch.Tensor], tuple]


@dataclass(frozen=True, repr=False)
class Scores(ShortRepr):
    """Algorithm 2's statistics for B images.

    rho: ``(B,)`` mean normal curvature (docs/method.md §1 sign convention).
    per_class: ``(B, L)`` curvature summed over the T directions for each competing class that
        entered the sum; NaN for the predicted class and for classes left out (``classes=K``).
    predicted: ``(B,)`` int64, the model's label k̂.
    competitors: ``(B, K)`` int64, the competing classes in the sum by decreasing logit (column
        0 is the model's runner-up).
    """

    rho: torch.Tensor
    per_class: torch.Tensor
    predicted: torch.Tensor
    competitors: torch.Tensor


def random_directions(shape: tuple, count: int, seed: int, device=None, dtype=None) -> torch.Tensor:
    """``count`` unit directions ``(count, *shape)``, a function of ``seed`` alone (drawn in float64
    on the CPU, then moved), uniform on the unit sphere."""
    g = torch.Generator().manual_seed(seed)
    d = 1
    for s in shape:
        d *= s
    V = torch.randn(count, d, generator=g, dtype=torch.float64)
    V = V / V.norm(dim=1, keepdim=True)
    return V.to(device=device, dtype=dtype).reshape((count,) + tuple(shape))


def refuse_half_precision_differences(x: torch.Tensor, method: str, h: float) -> None:
    """Raise ValueError when ``x`` is float16/bfloat16 or an autocast region would run the model
    in one: second differences of the logits at scale ``h`` lose every digit there."""
    dtype = x.dtype
    if dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):  # autocast leaves float64 alone
        dtype = torch.get_autocast_dtype(x.device.type)
    if torch.finfo(dtype).eps > 1e-4:
        where = f"x is {dtype}" if dtype == x.dtype else f"autocast runs the model in {dtype}"
        raise ValueError(
            f"{where}: method={method!r} takes second differences of the logits at scale h={h:g}, whose "
            f"rounding error (about eps |f| / h^2, eps = {torch.finfo(dtype).eps:.1e}) swamps the curvature "
            f"in {dtype}; score float32 images with a float32 model (model.float(), x.float(), no autocast)")


def score_images(model: torch.nn.Module, x: torch.Tensor, config: DetectorConfig,
                 exact_sums: ExactSums | None = None) -> Scores:
    """Algorithm 2's rho, per-class curvature sums and predicted labels for ``x (B, C, H, W)``,
    in groups of ``config.batch_size`` images. ``exact_sums`` replaces the exact Hutchinson sums
    (``method="autograd"``), e.g. by their compiled form."""
    model_checks.check_images(x, "x", config.input_range)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("curvature scores need autograd (gradients of the logits with respect to the "
                           "images), which torch.inference_mode() disables; call score/detect outside it "
                           "(torch.no_grad() is fine)")
    if config.method == "autograd":
        verification.verify_once(model, x)  # once per model: torch's nested forward rules
    else:
        refuse_half_precision_differences(x, config.method, config.h)
    V = random_directions(x.shape[1:], config.num_directions, config.seed, x.device, x.dtype)
    with torch.enable_grad():  # gradients of the logits, also when the caller is under no_grad
        groups = range(0, x.shape[0], config.batch_size)
        bar = progress_bar(total=x.shape[0], desc="curvature", unit="img", leave=False,
                           enabled=None if len(groups) > 1 else False)
        try:
            parts = []
            for i in groups:
                parts.append(_score_group(model, x[i : i + config.batch_size], V, config, exact_sums))
                bar.update(parts[-1][0].shape[0])
        except RuntimeError:
            # A model that rejects the images' shape (channels, size) fails deep inside a second-order
            # pass; say so plainly. Any other error is the model's own and is raised as it is.
            model_checks.output_count(model, tuple(x.shape[1:]), x.device,
                                      "check the images' channels and size against the model's")
            raise
        finally:
            bar.close()
    return Scores(*(torch.cat([p[k] for p in parts]) for k in range(4)))


def _score_group(model, x, V, config: DetectorConfig, exact_sums):
    if config.method == "autograd" and config.estimator == "hutchinson":
        # The exact sums choose the classes from the forward pass of their own gradients.
        score = exact_sums or (lambda x, V: scored_class_curvature_sums(model, x, V, config.classes))
        logits, predicted, cls, sums = score(x, V)
    else:
        with torch.no_grad():
            logits = model(x)
        predicted, cls = competing_classes(logits, config.classes)  # (B,), (B, K) by score
        if config.estimator == "deflated":
            sums, _ = deflated_class_curvatures(model, x, cls, predicted, V, config)  # Hutchinson's scale
        else:
            sums = class_curvature_sums(model, x, cls, predicted, V, config.method, config.h)
    B, L = logits.shape
    K = cls.shape[1]
    if not bool(torch.isfinite(sums).all()):
        bad = (~torch.isfinite(sums)).any(dim=1).nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite curvature for image(s) {bad[:10]} of the batch")
    per_class = torch.full((B, L), float("nan"), dtype=sums.dtype, device=x.device)
    per_class.scatter_(1, cls, sums)
    rho = sums.sum(dim=1) / ((K + 1) * config.num_directions)
    return rho.detach(), per_class.detach(), predicted, cls
