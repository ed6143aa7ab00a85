"""The detector's settings: one frozen, validated dataclass that helpers receive instead of the
detector, and that a calibration file stores."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from curvext.curvature.quadratic_forms import METHODS
from curvext.detection.recovery import RECOVERY_RULES
from curvext.utils import model_checks

logger = logging.getLogger(__name__)

AUTO_METHOD = "auto"  # resolved by CurvatureDetector from the model: autograd (smooth) or fd2 (ReLU/max-pool)
ESTIMATORS = ("hutchinson", "deflated")
ORIENTATIONS = ("higher", "lower")
ORIENTATION_RULES = ORIENTATIONS + ("probe", "auto")
RECOVERY_CHOICES = RECOVERY_RULES + ("probe",)  # "probe": adopt the rule the calibration probe suggests
PROBE_NORMS = ("l2", "linf")  # the probe's PGD norm: pick the one the attacks to be detected do not use
DEFAULT_PROBE_EPS_LINF = 0.2  # per-pixel probe radius for probe_norm="linf" when none is given
DEFAULT_SCALE = 0.05  # fd/fd2 scale h when none is given (see choose_scale)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "None or a positive int" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _positive_finite(name: str, value, what: str) -> float:
    """``float(value)`` when it is a positive finite real number (numeric strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def _default_scale(method: str) -> float:
    return 0.0 if method == "autograd" else DEFAULT_SCALE


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`curvext.detection.CurvatureDetector` (docs/method.md §7).

    num_directions: T random unit directions, shared by every class and image.
    classes: None sums over every competing class; K over the K highest-scoring ones.
    method: "autograd" (exact second derivatives, smooth nets), "fd" or "fd2" (at scale ``h``;
        piecewise-linear nets, whose exact input Hessian is zero almost everywhere), or "auto"
        (the default): :class:`CurvatureDetector` picks autograd or fd2 from its model and logs it.
    h: finite-difference scale (an l2 step in input units) for fd/fd2; None means
        ``DEFAULT_SCALE`` for fd/fd2 and 0 for autograd (resolved on construction; with "auto",
        when the method is resolved).
    estimator: "hutchinson" (plain sampling) or "deflated" (exact top principal curvatures by
        Lanczos plus sampling of the rest).
    deflation_k: principal curvatures computed exactly per class by the deflated estimator.
    deflation_basis_size: Lanczos vectors the deflated estimator stores per image and class
        (None: :func:`curvext.lanczos`'s default); more than ``deflation_k``. Memory of a group is
        ``batch x classes x (deflation_basis_size + 1) x d``.
    orientation: "probe" (read from a PGD probe of clean images at calibration), "higher",
        "lower" or "auto" (the paper's sign rule on the clean rho).
    recovery: the label-recovery rule of flagged images, one of ``RECOVERY_RULES`` ("max",
        Algorithm 2's, by default), or "probe" to adopt the rule the calibration probe suggests
        (the probe's images sit just across the boundary, so its suggestion suits minimal
        attacks more than high-confidence ones).
    probe_eps: largest probe radius in input units (None: ``0.05 sqrt(d)`` for l2,
        ``DEFAULT_PROBE_EPS_LINF`` for linf). probe_norm: "l2" or "linf".
    seed: seeds the directions, the probe and the deflated estimator's start vectors.
    input_range: ``(low, high)`` every input must lie in; None skips the check.
    batch_size: images scored together (each group's passes hold batch x classes and
        batch x directions rows).
    compile: score the exact sums through ``torch.compile`` (method "autograd" with the
        Hutchinson estimator only).
    """

    num_directions: int = 16
    classes: int | None = None
    method: str = AUTO_METHOD
    h: float | None = None
    estimator: str = "hutchinson"
    deflation_k: int = 4
    deflation_basis_size: int | None = None
    orientation: str = "probe"
    recovery: str = "max"
    probe_eps: float | None = None
    probe_norm: str = "l2"
    seed: int = 0
    input_range: tuple | None = (0.0, 1.0)
    batch_size: int = 16
    compile: bool = False

    def __post_init__(self):
        _choice("method", self.method, METHODS + (AUTO_METHOD,))
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("orientation", self.orientation, ORIENTATION_RULES)
        _choice("recovery", self.recovery, RECOVERY_CHOICES)
        if self.recovery == "probe" and self.orientation != "probe":
            raise ValueError(f"recovery='probe' adopts the calibration probe's rule, which needs orientation='probe', "
                             f"got orientation={self.orientation!r}")
        _choice("probe_norm", self.probe_norm, PROBE_NORMS)
        _positive_int("num_directions", self.num_directions)
        _positive_int("classes", self.classes, allow_none=True)
        _positive_int("batch_size", self.batch_size)
        _positive_int("deflation_k", self.deflation_k)
        _positive_int("deflation_basis_size", self.deflation_basis_size, allow_none=True)
        if self.deflation_basis_size is not None and self.deflation_basis_size <= self.deflation_k:
            raise ValueError(f"deflation_basis_size must exceed deflation_k = {self.deflation_k} (the basis keeps "
                             f"the wanted vectors through restarts), got {self.deflation_basis_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.probe_eps is not None:
            object.__setattr__(self, "probe_eps",
                               _positive_finite("probe_eps", self.probe_eps, "a positive finite radius"))
        if self.h is None and self.method == AUTO_METHOD:
            pass  # resolved with the method
        elif self.h is None:
            object.__setattr__(self, "h", _default_scale(self.method))
        elif self.method == "autograd" and self.h == 0:
            object.__setattr__(self, "h", 0.0)
        else:
            object.__setattr__(self, "h", _positive_finite("h", self.h, "a positive finite scale"))
        if self.input_range is not None:
            if len(tuple(self.input_range)) != 2 or not float(self.input_range[0]) < float(self.input_range[1]):
                raise ValueError(f"input_range must be None or (low, high) with low < high, got {self.input_range!r}")
            object.__setattr__(self, "input_range", (float(self.input_range[0]), float(self.input_range[1])))
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.compile and (self.method not in ("autograd", AUTO_METHOD) or self.estimator != "hutchinson"):
            raise ValueError("compile=True applies to method='autograd' with estimator='hutchinson' "
                             f"(the exact sums), got method={self.method!r}, estimator={self.estimator!r}")

    def replace(self, **changes) -> DetectorConfig:
        """A copy with ``changes`` applied and validated (``dataclasses.replace``). A new ``method``
        without a new ``h`` takes that method's default scale when ``h`` was the old default."""
        if "method" in changes and "h" not in changes and self.h == _default_scale(self.method):
            changes["h"] = None
        return dataclasses.replace(self, **changes)

    def probe_radius(self, d: int) -> float:
        """The probe's largest radius for images of ``d`` elements."""
        if self.probe_eps is not None:
            return self.probe_eps
        return 0.05 * d**0.5 if self.probe_norm == "l2" else DEFAULT_PROBE_EPS_LINF

    def to_dict(self) -> dict:
        """JSON-able fields."""
        out = dataclasses.asdict(self)
        out["input_range"] = None if self.input_range is None else list(self.input_range)
        return out

    @classmethod
    def from_dict(cls, fields: dict) -> DetectorConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown detector settings {unknown}; known: {sorted(known)}")
        values = dict(fields)
        if values.get("input_range") is not None:
            values["input_range"] = tuple(values["input_range"])
        return cls(**values)


def resolve_method(model: torch.nn.Module, config: DetectorConfig) -> DetectorConfig:
    """``config`` with method "auto" replaced by "fd2" for a piecewise-linear model (ReLU/max-pool
    layers, :func:`curvext.utils.model_checks.is_piecewise_linear`) and by "autograd" otherwise
    (then ``compile`` applies; for fd2 it is dropped); the choice is logged. Other methods are
    returned unchanged."""
    if config.method != AUTO_METHOD:
        return config
    piecewise = model_checks.is_piecewise_linear(model)
    method = "fd2" if piecewise else "autograd"
    logger.info("method 'auto' -> %s (%s)", method, "the model has ReLU/max-pool layers: finite differences at "
                "a scale h" if piecewise else "a smooth model: exact second derivatives")
    return config.replace(method=method, compile=config.compile and method == "autograd")
