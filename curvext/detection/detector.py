"""Algorithm 2: detect adversarially perturbed images by boundary curvature, recover their labels.

For an image x with predicted class khat and competing classes i, the statistic is

    rho(x) = 1 / (L T) * sum_{i != khat} sum_{j=1..T} kappa_i(v_j),
    kappa_i(v) = (P_i v)^T H_i (P_i v) / ||g_i||,

the curvature of F_i = f_i - f_khat (normal toward class i, out of the image's own region; SPEC
§1) along random unit directions v_j shared by every class. It estimates the mean curvature
tr(G_i)/d averaged over the competing classes. A flagged image's recovered label is the class
with the largest summed curvature.

Orientation: perturbed images are expected to have the larger rho ("higher", the paper's
finding and what SPEC §1 measured for a ReLU CNN) or the smaller ("lower"). Which one holds depends
on the model and the scale h: on our zoo models it is "higher" for the ReLU LeNet on sklearn digits
and "lower" for the ReLU LeNet on MNIST, for every attack alike. Neither the paper's sign rule
(``"auto"``: clean rho mostly negative -> "higher") nor the margin of clean images predicts it
there. ``"probe"`` (the default) reads it from the clean calibration images alone: it perturbs them
with a small PGD probe, l2 or l-inf (``probe_norm``; no knowledge of the attack to be detected;
each image at the smallest of three radii that flips it, see :meth:`CurvatureDetector.probe`) and
takes the side to which rho moves. Label recovery is Algorithm 2's "the competing class with the
largest summed curvature" (``recovery="max"``); the probe also checks it, since the probe images'
true labels are known: it picks, among the rules of ``RECOVERY_RULES``, the one that gives most
probe images back their labels (ties: Algorithm 2's "max"). On the smooth MNIST LeNet the original class is the one
with the *smallest* sum ("min"); "max-top2" / "min-top2" choose only between the two
highest-scoring competing classes, which on the MNIST zoo models recovers far more than the sum
over all classes (e.g. CW on the ReLU LeNet: 79% instead of 26%). The same probe picks the scale
``h`` of the fd/fd2 methods (:meth:`CurvatureDetector.choose_scale`,
:mod:`curvext.scale_selection`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from curvext import _model_checks, forward_mode
from curvext.quadratic_forms import METHODS, class_curvature_sums, competing_classes, scored_class_curvature_sums

logger = logging.getLogger(__name__)

ESTIMATORS = ("hutchinson", "deflated")
ORIENTATIONS = ("higher", "lower")
ORIENTATION_RULES = ORIENTATIONS + ("probe", "auto")
PROBE_RADII = (0.25, 0.5, 1.0)  # fractions of probe_eps tried in turn by CurvatureDetector.probe
PROBE_NORMS = ("l2", "linf")  # the probe's PGD norm: pick the one the attacks to be detected do not use
DEFAULT_PROBE_EPS_LINF = 0.2  # per-pixel probe radius for probe_norm="linf" when none is given
DEFAULT_SCALE = 0.05  # fd/fd2 scale h when none is given (see CurvatureDetector and choose_scale)


@dataclass(frozen=True)
class Scores:
    """Algorithm 2's statistics for B images.

    rho: ``(B,)`` mean normal curvature (SPEC sign convention).
    per_class: ``(B, L)`` curvature summed over the T directions for each competing class that
        entered the sum; NaN for the predicted class and for classes left out (``classes=K``).
    predicted: ``(B,)`` int64, the model's label khat.
    competitors: ``(B, K)`` int64, the competing classes in the sum by decreasing logit (column
        0 is the model's runner-up).
    """

    rho: torch.Tensor
    per_class: torch.Tensor
    predicted: torch.Tensor
    competitors: torch.Tensor


@dataclass(frozen=True)
class Detection:
    """perturbed ``(B,)`` bool; predicted, recovered ``(B,)`` int64 (recovered = predicted where
    not flagged); rho ``(B,)``."""

    perturbed: torch.Tensor
    predicted: torch.Tensor
    recovered: torch.Tensor
    rho: torch.Tensor


RECOVERY_RULES = ("max", "min", "max-top2", "min-top2")


def recovered_labels(per_class: torch.Tensor, rule: str = "max",
                     competitors: torch.Tensor | None = None) -> torch.Tensor:
    """The competing class with the largest (Algorithm 2, "max") or smallest ("min") summed
    curvature, ``(B,)``; classes outside the sum (NaN) never win. The "-top2" rules choose only
    between the two highest-scoring competing classes, ``competitors[:, :2]`` (``(B, K)``, as in
    :class:`Scores`)."""
    if rule not in RECOVERY_RULES:
        raise ValueError(f"rule must be one of {RECOVERY_RULES}, got {rule!r}")
    if rule.endswith("-top2"):
        if competitors is None:
            raise ValueError(f"rule {rule!r} needs competitors (B, K): the competing classes by decreasing logit")
        keep = torch.zeros(per_class.shape, dtype=torch.bool, device=per_class.device)
        keep.scatter_(1, competitors[:, :2].to(per_class.device), True)
        per_class = per_class.masked_fill(~keep, float("nan"))
    if rule.startswith("max"):
        return torch.nan_to_num(per_class, nan=float("-inf")).argmax(dim=1)
    return torch.nan_to_num(per_class, nan=float("inf")).argmin(dim=1)


def _refuse_half_precision_differences(x: torch.Tensor, method: str, h: float) -> None:
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


class CurvatureDetector:
    """Training-free detector and label recovery from decision-boundary curvature.

    Args:
        model: classifier ``(B, C, H, W) -> (B, L)`` logits, in eval mode (no batch statistics).
        num_directions: T random unit directions (shared by all classes and images).
        classes: None sums over all competing classes; K sums over the K highest-scoring ones
            (needed for 1000-class models).
        method: "autograd" (exact, smooth nets), "fd" or "fd2" (at scale h; ReLU nets, whose
            exact input Hessian is zero). See :mod:`curvext.quadratic_forms`.
        h: finite-difference scale (l2 step length in input units) for fd/fd2; default 0.05.
            Which scale separates perturbed from clean images depends on the model (0.01 or
            below for the MNIST ReLU LeNet, about 0.02 for the NiN, 0.05 for the digits LeNet):
            :meth:`choose_scale` picks it from the clean images alone.
        estimator: "hutchinson" (plain sampling) or "deflated" (exact top principal curvatures
            by Lanczos plus sampling on the rest; fewer operator applications per accuracy).
        deflation_k: principal curvatures computed exactly per class with "deflated".
        orientation: "probe" (default: from a small PGD probe of the clean images at
            :meth:`calibrate`), "higher", "lower" or "auto" (the paper's sign rule on clean rho);
            see the module docstring.
        probe_eps: radius of the probe in input units (default ``0.05 * sqrt(d)`` for l2, 0.2
            for linf).
        probe_norm: "l2" (default) or "linf": the norm of the probe's PGD. The probe chooses
            h, the orientation and the recovery rule, so a probe of another norm than the
            attacks to be detected keeps their family out of every choice.
        seed: seeds the directions (the same seed gives the same rho).
        input_range: ``(low, high)`` the model expects, checked on every input; None skips it.
        batch_size: images scored together. A group's passes hold batch x classes and
            batch x directions rows; the default 16 keeps them cache-sized on a CPU (2.5x the
            throughput of 128 for the MNIST NiN with fd2) and a ResNet-50's second-order passes
            within a GPU's memory.
        compile: score with a ``torch.compile``d function (``method="autograd"`` with the
            Hutchinson estimator only): 1.2-1.8x on the MNIST zoo models on a CPU after a
            one-off compilation of 5-40 s; see :mod:`curvext.compiled_sums`.
    """

    def __init__(self, model: torch.nn.Module, *, num_directions: int = 16, classes: int | None = None,
                 method: str = "fd2", h: float | None = None, estimator: str = "hutchinson",
                 deflation_k: int = 4, orientation: str = "probe", probe_eps: float | None = None,
                 probe_norm: str = "l2", seed: int = 0,
                 input_range: tuple | None = (0.0, 1.0), batch_size: int = 16, compile: bool = False):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if not isinstance(num_directions, int) or num_directions < 1:
            raise ValueError(f"num_directions must be a positive int, got {num_directions!r}")
        if classes is not None and (not isinstance(classes, int) or classes < 1):
            raise ValueError(f"classes must be None or a positive int, got {classes!r}")
        if orientation not in ORIENTATION_RULES:
            raise ValueError(f"orientation must be one of {ORIENTATION_RULES}, got {orientation!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if probe_norm not in PROBE_NORMS:
            raise ValueError(f"probe_norm must be one of {PROBE_NORMS}, got {probe_norm!r}")
        if probe_eps is not None and not (probe_eps > 0 and probe_eps < float("inf")):
            raise ValueError(f"probe_eps must be a positive finite radius, got {probe_eps!r}")
        if h is not None and not h > 0:
            raise ValueError(f"h must be > 0, got {h!r}")
        if compile and (method != "autograd" or estimator != "hutchinson"):
            raise ValueError("compile=True applies to method='autograd' with estimator='hutchinson' "
                             f"(the exact sums), got method={method!r}, estimator={estimator!r}")
        _model_checks.require_eval(model, "model")
        if method == "autograd" and _model_checks.is_piecewise_linear(model):
            logger.warning("model has ReLU/max-pool layers: its exact input Hessian is zero almost "
                           "everywhere; use method='fd' or 'fd2' to measure curvature at a scale h")
        self.model = model
        self.num_directions = num_directions
        self.classes = classes
        self.method = method
        self.h = (DEFAULT_SCALE if method != "autograd" else 0.0) if h is None else float(h)
        self.estimator = estimator
        self.deflation_k = deflation_k
        self.seed = seed
        self.input_range = input_range
        self.batch_size = batch_size
        self.orientation_rule = orientation
        self.probe_eps = probe_eps
        self.probe_norm = probe_norm
        self.threshold: float | None = None
        self.orientation: str | None = orientation if orientation in ORIENTATIONS else None
        self.recovery = "max"
        self._probe_memo = None  # (key of the clean images, probe result) of the last probe
        self._compiled_sums = None
        if compile:
            from curvext.compiled_sums import CompiledCurvatureSums

            self._compiled_sums = CompiledCurvatureSums(model, batch_size, classes)

    # -- statistics -------------------------------------------------------------------------

    def directions(self, shape: tuple, device, dtype) -> torch.Tensor:
        """The T unit directions ``(T, *shape)``, a function of the seed alone."""
        g = torch.Generator().manual_seed(self.seed)
        d = 1
        for s in shape:
            d *= s
        V = torch.randn(self.num_directions, d, generator=g, dtype=torch.float64)
        V = V / V.norm(dim=1, keepdim=True)
        return V.to(device=device, dtype=dtype).reshape((self.num_directions,) + tuple(shape))

    def score(self, x: torch.Tensor) -> Scores:
        """Algorithm 2's rho, per-class curvature sums and predicted labels for ``x (B, C, H, W)``."""
        _model_checks.check_images(x, "x", self.input_range)
        if self.method != "autograd":
            _refuse_half_precision_differences(x, self.method, self.h)
        if self.method == "autograd":
            forward_mode.verify_once(self.model, x)  # once per model: torch's nested forward rules
        V = self.directions(x.shape[1:], x.device, x.dtype)
        parts = [self._score_batch(x[i : i + self.batch_size], V) for i in range(0, x.shape[0], self.batch_size)]
        return Scores(*(torch.cat([p[k] for p in parts]) for k in range(4)))

    def _score_batch(self, x, V):
        if self.method == "autograd" and self.estimator == "hutchinson":
            # The exact sums choose the classes from the forward pass of their own gradients.
            score = self._compiled_sums or (lambda x, V: scored_class_curvature_sums(self.model, x, V, self.classes))
            logits, predicted, cls, sums = score(x, V)
        else:
            with torch.no_grad():
                logits = self.model(x)
            predicted, cls = competing_classes(logits, self.classes)  # (B,), (B, K) by score
            if self.estimator == "deflated":
                from curvext.deflated import deflated_class_curvatures

                sums, _ = deflated_class_curvatures(self, x, cls, predicted, V)  # (B, K), Hutchinson's scale
            else:
                sums = class_curvature_sums(self.model, x, cls, predicted, V, self.method, self.h)
        B, L = logits.shape
        K = cls.shape[1]
        if not bool(torch.isfinite(sums).all()):
            bad = (~torch.isfinite(sums)).any(dim=1).nonzero().flatten().tolist()
            raise FloatingPointError(f"non-finite curvature for image(s) {bad[:10]} of the batch")
        per_class = torch.full((B, L), float("nan"), dtype=sums.dtype, device=x.device)
        per_class.scatter_(1, cls, sums)
        rho = sums.sum(dim=1) / ((K + 1) * self.num_directions)
        return rho.detach(), per_class.detach(), predicted, cls

    # -- thresholds -------------------------------------------------------------------------

    def _probe_eps(self, x_clean: torch.Tensor) -> float:
        if self.probe_eps is not None:
            return float(self.probe_eps)
        return 0.05 * x_clean[0].numel() ** 0.5 if self.probe_norm == "l2" else DEFAULT_PROBE_EPS_LINF

    def probe(self, x_clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The calibration probe: PGD in ``probe_norm`` (20 steps, the detector's seed) of the clean
        images ``x_clean (N, C, H, W)`` at growing radii ``probe_eps * (1/4, 1/2, 1)``, each image
        perturbed at the smallest radius that changes its label (larger radii are tried only on
        the images not yet flipped). So the probe images sit just across the boundary, as
        adversarial images do, rather than deep in another class. Returns the images whose label
        it changed ``(n, C, H, W)``, their original labels ``(n,)`` and which clean images they
        came from ``(N,)`` bool; it knows nothing of the attacks to be detected. Deterministic:
        the orientation, the recovery rule and the scale choice see the same probe."""
        import hashlib

        from curvext.attacks import pgd

        eps = self._probe_eps(x_clean)
        key = (hashlib.sha256(x_clean.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
               tuple(x_clean.shape), str(x_clean.dtype), str(x_clean.device), eps, self.probe_norm, self.seed,
               tuple(p._version for p in self.model.parameters()))  # in-place weight updates bump these
        if self._probe_memo is not None and self._probe_memo[0] == key:
            return self._probe_memo[1]  # choose_scale then calibrate on the same images: one probe
        adversarial = x_clean.detach().clone()
        labels = torch.empty(x_clean.shape[0], dtype=torch.long, device=x_clean.device)
        flipped = torch.zeros(x_clean.shape[0], dtype=torch.bool, device=x_clean.device)
        for fraction in PROBE_RADII:
            todo = (~flipped).nonzero().flatten()
            if todo.numel() == 0:
                break
            p = pgd(self.model, x_clean[todo], eps=fraction * eps, norm=self.probe_norm, steps=20, seed=self.seed)
            new = todo[p.success]
            adversarial[new] = p.adversarial[p.success]
            labels[todo] = p.labels
            flipped[new] = True
        result = (adversarial[flipped], labels[flipped], flipped)
        self._probe_memo = (key, result)
        return result

    def choose_scale(self, x_clean: torch.Tensor, scales=None):
        """Set ``h`` to the candidate scale at which the PGD probe of the clean images separates
        best from them (fd/fd2 only) and return the :class:`~curvext.scale_selection.ScaleChoice`
        (separation per candidate). ``scales`` default: ``scale_selection.PROBE_SCALES``. Call
        it before :meth:`calibrate`."""
        from curvext.scale_selection import PROBE_SCALES, choose_scale

        choice = choose_scale(self, x_clean, PROBE_SCALES if scales is None else scales)
        self.h = choice.h
        return choice

    def resolve_orientation(self, x_clean: torch.Tensor, rho_clean: torch.Tensor) -> tuple[str, str]:
        """``(orientation, recovery rule)`` for clean images ``x_clean`` with statistics
        ``rho_clean``: fixed, the paper's sign rule ("auto"), or from the PGD probe ("probe"),
        which also picks the recovery rule that gives the probe images back their labels."""
        if self.orientation_rule in ORIENTATIONS:
            return self.orientation_rule, "max"
        rho_clean = torch.as_tensor(rho_clean).double().cpu()
        if self.orientation_rule == "auto":
            return ("higher" if float(rho_clean.median()) < 0 else "lower"), "max"
        adversarial, truth, success = self.probe(x_clean)
        if adversarial.shape[0] == 0:
            raise RuntimeError(f"orientation probe: PGD-{self.probe_norm} at eps={self._probe_eps(x_clean):.3g} "
                               "changed no label; "
                               "pass a larger probe_eps or a fixed orientation")
        s = self.score(adversarial)
        rho_probe = s.rho.double().cpu()
        shift = float(rho_probe.median() - rho_clean[success.cpu()].median())
        hits = {rule: float((recovered_labels(s.per_class, rule, s.competitors) == truth).double().mean())
                for rule in RECOVERY_RULES}
        recovery = max(RECOVERY_RULES, key=hits.get)  # ties: the earlier rule, Algorithm 2's "max" first
        logger.info("probe: %d/%d flipped at eps %.3g, median rho shift %.3g, recovery hits %s",
                    int(success.sum()), len(success), self._probe_eps(x_clean), shift,
                    {k: round(v, 2) for k, v in hits.items()})
        return ("higher" if shift > 0 else "lower"), recovery

    def calibrate(self, x_clean: torch.Tensor, *, fpr: float = 0.05) -> "CurvatureDetector":
        """Set the threshold (and, for "auto", the orientation) from clean images alone, for a
        target false-positive rate."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
        from curvext.metrics import calibrate_threshold

        rho = self.score(x_clean).rho.double().cpu()
        self.orientation, self.recovery = self.resolve_orientation(x_clean, rho)
        sign = 1.0 if self.orientation == "higher" else -1.0
        self.threshold = sign * calibrate_threshold((sign * rho).numpy(), fpr)
        logger.info("calibrated: clean median rho %.3g -> orientation %s, threshold %.4g",
                    float(rho.median()), self.orientation, self.threshold)
        return self

    def fit_threshold(self, x_clean: torch.Tensor, x_perturbed: torch.Tensor) -> "CurvatureDetector":
        """Set orientation and threshold that maximise accuracy on labelled clean/perturbed sets."""
        from curvext.metrics import best_threshold

        rc = self.score(x_clean).rho.double().cpu().numpy()
        rp = self.score(x_perturbed).rho.double().cpu().numpy()
        best = None
        for orientation, sign in (("higher", 1.0), ("lower", -1.0)):
            t, acc = best_threshold(sign * rc, sign * rp)
            if best is None or acc > best[0]:
                best = (acc, orientation, sign * t)
        _, self.orientation, self.threshold = best
        return self

    def detect(self, x: torch.Tensor) -> Detection:
        """Flag perturbed images and recover their labels (requires calibrate/fit_threshold)."""
        if self.threshold is None or self.orientation is None:
            raise RuntimeError("detector is not calibrated: call calibrate(x_clean) or "
                               "fit_threshold(x_clean, x_perturbed) before detect()")
        s = self.score(x)
        flagged = s.rho >= self.threshold if self.orientation == "higher" else s.rho <= self.threshold
        candidate = recovered_labels(s.per_class, self.recovery, s.competitors)
        recovered = torch.where(flagged, candidate, s.predicted)
        return Detection(flagged, s.predicted, recovered, s.rho)
