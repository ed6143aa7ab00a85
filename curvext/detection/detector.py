"""Algorithm 2: detect adversarially perturbed images by boundary curvature, recover their labels.

:class:`CurvatureDetector` holds a model, its :class:`DetectorConfig` and what calibration
learned from clean images: the threshold on rho, the orientation (do perturbed images have the
larger rho, "higher", or the smaller, "lower") and the label-recovery rule. The statistic itself
is :func:`curvext.detection.scoring.score_images`; the method, the orientation and the recovery
rules are described in docs/method.md §7, the scale h in §8.

Which side perturbed images fall on depends on the model and the scale h: on the zoo models it
is "higher" for the ReLU LeNet on sklearn digits and "lower" for the ReLU LeNet on MNIST, for
every attack alike, and neither the paper's sign rule nor the clean margin predicts it. So the
default, ``orientation="probe"``, reads it from the clean calibration images alone, through a
small PGD probe (:mod:`curvext.detection.probe`) that also suggests a recovery rule and, for
fd/fd2, picks the scale (:meth:`CurvatureDetector.choose_scale`). Flagged images are recovered by
Algorithm 2's rule ("max") unless the config asks for another one (or for the probe's).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from curvext import __version__
from curvext.curvature.compiled_sums import CompiledCurvatureSums
from curvext.detection import scale_selection
from curvext.detection.benign import BENIGN_SIGMA, benign_noise, reacts_to_benign_noise
from curvext.detection.calibration_file import Calibration, read_calibration, write_calibration
from curvext.detection.config import ORIENTATIONS, DetectorConfig, resolve_method
from curvext.detection.metrics import best_threshold, calibrate_threshold
from curvext.detection.probe import ProbeResult, orientation_from_probe, run_probe
from curvext.detection.recovery import recovered_labels
from curvext.detection.scoring import Scores, random_directions, score_images
from curvext.utils import model_checks
from curvext.utils.cache_keys import model_digest
from curvext.utils.reprs import ShortRepr

logger = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class Detection(ShortRepr):
    """perturbed ``(B,)`` bool; predicted, recovered ``(B,)`` int64 (recovered = predicted where
    not flagged); rho ``(B,)``."""

    perturbed: torch.Tensor
    predicted: torch.Tensor
    recovered: torch.Tensor
    rho: torch.Tensor


class _Setting:
    """A detector attribute that reads and (validated, through ``dataclasses.replace``) writes
    one field of its config."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, detector, owner=None):
        return self if detector is None else getattr(detector.config, self.name)

    def __set__(self, detector, value):
        detector.config = detector.config.replace(**{self.name: value})


class CurvatureDetector:
    """Training-free detector and label recovery from decision-boundary curvature.

    Args:
        model: classifier ``(B, C, H, W) -> (B, L)`` logits, in eval mode (no batch statistics).
        config: a :class:`DetectorConfig`; or give its fields as keyword arguments
            (``CurvatureDetector(model, num_directions=16, method="fd2")``), which override those
            of ``config``. Every field is also an attribute of the detector; setting one (e.g.
            ``det.h = 0.1``) replaces the config, validated. Method "auto" (the default) is
            resolved from the model on construction and logged: "autograd" for smooth nets,
            "fd2" for piecewise-linear ones (:func:`~curvext.detection.config.resolve_method`).

    After :meth:`calibrate`, ``recovery`` is the rule flagged images are recovered by
    (``config.recovery``: Algorithm 2's "max" unless asked otherwise) and
    ``suggested_recovery`` the rule the calibration probe would pick (None without the probe).
    """

    num_directions = _Setting()
    classes = _Setting()
    method = _Setting()
    h = _Setting()
    estimator = _Setting()
    deflation_k = _Setting()
    deflation_basis_size = _Setting()
    probe_eps = _Setting()
    probe_norm = _Setting()
    seed = _Setting()
    input_range = _Setting()
    batch_size = _Setting()
    compile = _Setting()

    def __init__(self, model: torch.nn.Module, config: DetectorConfig | None = None, **settings):
        if config is not None and not isinstance(config, DetectorConfig):
            raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
        config = DetectorConfig(**settings) if config is None else config.replace(**settings)
        model_checks.require_eval(model, "model")
        config = resolve_method(model, config)
        if config.method == "autograd" and model_checks.is_piecewise_linear(model):
            logger.warning("model has ReLU/max-pool layers: its exact input Hessian is zero almost "
                           "everywhere; use method='fd' or 'fd2' to measure curvature at a scale h")
        self.model = model
        self._config = None
        self._compiled_sums = None
        self.config = config
        self.threshold: float | None = None
        self.orientation: str | None = config.orientation if config.orientation in ORIENTATIONS else None
        self.recovery = "max" if config.recovery == "probe" else config.recovery
        self.suggested_recovery: str | None = None
        self.fpr: float | None = None  # the target false-positive rate of the last calibrate()
        self.n_calibration_images = 0
        self.scale_choice: scale_selection.ScaleChoice | None = None  # the last choose_scale()
        self.benign_flag_rate: float | None = None  # share of noisy calibration images flagged (detection.benign)
        self._probe_memo = None  # (key of the clean images, probe result) of the last probe

    @property
    def config(self) -> DetectorConfig:
        """The detector's settings (a frozen :class:`DetectorConfig`)."""
        return self._config

    @config.setter
    def config(self, config: DetectorConfig) -> None:
        if not isinstance(config, DetectorConfig):
            raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
        config = resolve_method(self.model, config)
        old = self._config
        if not config.compile:
            self._compiled_sums = None
        elif old is None or not old.compile or (old.batch_size, old.classes) != (config.batch_size, config.classes):
            self._compiled_sums = CompiledCurvatureSums(self.model, config.batch_size, config.classes)
        self._config = config

    @property
    def orientation_rule(self) -> str:
        """How the orientation is chosen: ``config.orientation``."""
        return self.config.orientation

    # -- statistics -------------------------------------------------------------------------

    def directions(self, shape: tuple, device, dtype) -> torch.Tensor:
        """The T unit directions ``(T, *shape)``, a function of the seed alone."""
        return random_directions(shape, self.config.num_directions, self.config.seed, device, dtype)

    def score(self, x: torch.Tensor) -> Scores:
        """Algorithm 2's rho, per-class curvature sums and predicted labels for ``x (B, C, H, W)``
        (:func:`curvext.detection.scoring.score_images`). Works under ``torch.no_grad()``;
        refused under ``torch.inference_mode()``, which disables the gradients it needs."""
        return score_images(self.model, x, self.config, self._compiled_sums)

    # -- calibration ------------------------------------------------------------------------

    def probe(self, x_clean: torch.Tensor) -> ProbeResult:
        """The calibration probe of the clean images ``x_clean (N, C, H, W)``
        (:func:`curvext.detection.probe.run_probe`), computed once for the same images, settings
        and weights: the scale choice, the orientation and the recovery rule see the same probe."""
        key = (hashlib.sha256(x_clean.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
               tuple(x_clean.shape), str(x_clean.dtype), str(x_clean.device),
               self.config.probe_radius(x_clean[0].numel()), self.config.probe_norm, self.config.seed,
               tuple(p._version for p in self.model.parameters()))  # in-place weight updates bump these
        if self._probe_memo is None or self._probe_memo[0] != key:
            self._probe_memo = (key, run_probe(self.model, x_clean, self.config))
        return self._probe_memo[1]

    def choose_scale(self, x_clean: torch.Tensor, scales=None, *, extend: bool = True) -> scale_selection.ScaleChoice:
        """Set ``h`` to the candidate scale at which the probe of the clean images separates best
        from them (fd/fd2 only) and return the :class:`~curvext.detection.scale_selection.ScaleChoice`
        (the chosen h, every candidate's separation). ``scales`` default:
        ``scale_selection.PROBE_SCALES``; with ``extend``, candidates are added beyond an edge
        of the grid while the best one lies there. Call it before :meth:`calibrate`."""
        if self.config.method == "autograd":
            raise ValueError("choose_scale applies to method 'fd' or 'fd2' (autograd has no scale h)")
        model_checks.check_images(x_clean, "x_clean", self.config.input_range)
        choice = scale_selection.choose_scale(
            self.model, self.config, x_clean, self.probe(x_clean),
            scale_selection.PROBE_SCALES if scales is None else scales, self._compiled_sums, extend=extend)
        self.h = choice.h
        self.scale_choice = choice
        return choice

    def resolve_orientation(self, x_clean: torch.Tensor, rho_clean: torch.Tensor) -> tuple[str, str]:
        """``(orientation, recovery rule the probe suggests)`` for clean images ``x_clean`` with
        statistics ``rho_clean (N,)``: fixed, the paper's sign rule ("auto"), or from the PGD probe
        ("probe") (:func:`curvext.detection.probe.orientation_from_probe`; "max" without the probe)."""
        probe = scores = None
        if self.config.orientation == "probe":
            probe = self.probe(x_clean)
            scores = self.score(probe.images) if probe.images.shape[0] else None
        return orientation_from_probe(self.config, rho_clean, probe, scores)

    def calibrate(self, x_clean: torch.Tensor, *, fpr: float = 0.05) -> CurvatureDetector:
        """Set the threshold, the orientation and the recovery rule from the clean images
        ``x_clean`` alone (a calibration split: not the images the detector will be judged on),
        for a target false-positive rate ``fpr`` in (0, 1). The recovery rule is
        ``config.recovery``; the probe's pick is kept as ``suggested_recovery`` (and adopted
        with ``recovery="probe"``)."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
        rho = self.score(x_clean).rho.double().cpu()
        self.orientation, suggestion = self.resolve_orientation(x_clean, rho)
        self.suggested_recovery = suggestion if self.config.orientation == "probe" else None
        self.recovery = suggestion if self.config.recovery == "probe" else self.config.recovery
        if self.suggested_recovery not in (None, self.recovery):
            logger.info("the calibration probe suggests recovery rule %r (using %r; recovery='probe' adopts it)",
                        self.suggested_recovery, self.recovery)
        sign = 1.0 if self.orientation == "higher" else -1.0
        self.threshold = sign * calibrate_threshold((sign * rho).numpy(), fpr)
        self.fpr, self.n_calibration_images = float(fpr), int(x_clean.shape[0])
        logger.info("calibrated: clean median rho %.3g -> orientation %s, threshold %.4g",
                    float(rho.median()), self.orientation, self.threshold)
        noisy = benign_noise(x_clean, self.config.seed, self.config.input_range)
        self.benign_flag_rate = float(self.decide(self.score(noisy)).perturbed.double().mean())
        if reacts_to_benign_noise(self.benign_flag_rate, fpr):
            logger.warning("the calibrated detector flags %.0f%% of its calibration images once Gaussian noise of "
                           "sigma %.3g is added (target false-positive rate %.0f%%): it reacts to any perturbation, "
                           "so its detection rates say little%s", 100 * self.benign_flag_rate, BENIGN_SIGMA,
                           100 * fpr, "" if self.config.method == "autograd" else
                           f"; a larger h than {self.h:g} may avoid it (choose_scale with larger candidates, or a "
                           "fixed h)")
        return self

    def fit_threshold(self, x_clean: torch.Tensor, x_perturbed: torch.Tensor) -> CurvatureDetector:
        """Set orientation and threshold that maximise accuracy on labelled clean/perturbed sets."""
        rc = self.score(x_clean).rho.double().cpu().numpy()
        rp = self.score(x_perturbed).rho.double().cpu().numpy()
        best = None
        for orientation, sign in (("higher", 1.0), ("lower", -1.0)):
            t, acc = best_threshold(sign * rc, sign * rp)
            if best is None or acc > best[0]:
                best = (acc, orientation, sign * t)
        _, self.orientation, self.threshold = best
        self.fpr, self.n_calibration_images, self.benign_flag_rate = None, int(x_clean.shape[0]), None
        return self

    def detect(self, x: torch.Tensor) -> Detection:
        """Flag perturbed images and recover their labels (requires calibrate/fit_threshold)."""
        if self.threshold is None or self.orientation is None:
            raise RuntimeError("detector is not calibrated: call calibrate(x_clean) or "
                               "fit_threshold(x_clean, x_perturbed) before detect()")
        return self.decide(self.score(x))

    def decide(self, scores: Scores) -> Detection:
        """The calibrated decision on already computed ``scores``: flagged where rho is beyond the
        threshold on the calibrated side; flagged images get the recovery rule's class."""
        if self.threshold is None or self.orientation is None:
            raise RuntimeError("detector is not calibrated: call calibrate(x_clean) first")
        s = scores
        flagged = s.rho >= self.threshold if self.orientation == "higher" else s.rho <= self.threshold
        candidate = recovered_labels(s.per_class, self.recovery, s.competitors)
        recovered = torch.where(flagged, candidate, s.predicted)
        return Detection(flagged, s.predicted, recovered, s.rho)

    # -- on disk ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, preprocessing: dict | None = None) -> Path:
        """Write the calibrated detector to the JSON file ``path``
        (:mod:`curvext.detection.calibration_file`): settings, threshold, orientation, recovery
        rule, target FPR, the model's digest and ``preprocessing`` (how image files became inputs,
        for sweeps). Requires :meth:`calibrate` or :meth:`fit_threshold`."""
        if self.threshold is None or self.orientation is None:
            raise RuntimeError("detector is not calibrated: call calibrate(x_clean) before save()")
        separation = {} if self.scale_choice is None else dict(self.scale_choice.separation)
        calibration = Calibration(self.config, float(self.threshold), self.orientation, self.recovery, self.fpr,
                                  model_digest(self.model), dict(preprocessing or {}), self.n_calibration_images,
                                  separation, __version__, self.benign_flag_rate)
        return write_calibration(path, calibration)

    @classmethod
    def load(cls, path: str | os.PathLike, model: torch.nn.Module) -> CurvatureDetector:
        """The detector saved in ``path``, calibrated, for ``model``: refused (ValueError naming both
        digests) when ``model``'s weights are not the ones it was calibrated on."""
        calibration = read_calibration(path)
        digest = model_digest(model)
        if digest != calibration.model_digest:
            raise ValueError(f"{path} was calibrated for the model with digest {calibration.model_digest}, but this "
                             f"model's digest is {digest} (other weights, architecture or normalisation): "
                             "calibrate this model")
        detector = cls(model, calibration.config)
        detector.apply(calibration)
        return detector

    def apply(self, calibration: Calibration) -> CurvatureDetector:
        """Take the threshold, orientation, recovery rule and settings of ``calibration``
        (no digest check; see :meth:`load`)."""
        self.config = calibration.config
        self.threshold, self.orientation, self.recovery = calibration.threshold, calibration.orientation, \
            calibration.recovery
        self.fpr, self.n_calibration_images = calibration.fpr, calibration.n_images
        self.benign_flag_rate = calibration.benign_flag_rate
        return self
