"""curvext: decision-boundary curvature of classifiers in input space.

Sign convention everywhere: curvature of ``F_i = f_i - f_k̂`` (k̂ the point's own predicted
class), normal pointing out of the point's own region toward class i (docs/method.md §1): a
region that is locally convex has positive principal curvatures.

Importing curvext loads the compiled ops (a clear ImportError says how to build them if they are
missing) and the eigensolvers; every other public name is imported on first use. The
subpackages, bottom to top: ``utils``; ``linalg``, ``autodiff``, ``data``; ``curvature``;
``geometry``; ``adversarial``; ``detection``; ``evaluation``, ``training``; ``commands``.
"""
import importlib

from curvext import _ops  # noqa: F401  (loads the compiled ops; a clear error if not built)
from curvext.linalg import (
    ConvergenceError,
    ConvergenceWarning,
    EigResult,
    lanczos,
    power_iteration,
    tridiag_eigh,
)

__version__ = "0.1.0"

_LAZY = {
    # input-space curvature
    "InputHessian": "curvext.curvature.hvp",
    "CurvatureOperator": "curvext.curvature.operators",
    "deepfool": "curvext.geometry.deepfool",
    "DeepFoolResult": "curvext.geometry.deepfool",
    "principal_curvatures": "curvext.geometry.profiles",
    "CurvatureProfile": "curvext.geometry.profiles",
    "shared_subspace": "curvext.geometry.subspace",
    "subspace_vulnerability": "curvext.geometry.subspace",
    "Vulnerability": "curvext.geometry.subspace",
    # Algorithm 1: paths inside classification regions
    "find_paths": "curvext.geometry.paths",
    "PathResult": "curvext.geometry.paths",
    "differentiable_curvature": "curvext.curvature.differentiable",
    # Algorithm 2 and its evaluation
    "CurvatureDetector": "curvext.detection.detector",
    "DetectorConfig": "curvext.detection.config",
    "Scores": "curvext.detection.scoring",
    "Detection": "curvext.detection.detector",
    "ScaleChoice": "curvext.detection.scale_selection",
    "evaluate": "curvext.evaluation.protocol",
    "attack_suite": "curvext.evaluation.protocol",
    # data, models, attacks, baselines, metrics
    "Dataset": "curvext.data.datasets",
    "load_digits": "curvext.data.datasets",
    "load_mnist": "curvext.data.datasets",
    "load_idx": "curvext.data.datasets",
    "load_image_folder": "curvext.data.datasets",
    "LeNet": "curvext.data.zoo",
    "NiN": "curvext.data.zoo",
    "ZooModel": "curvext.data.zoo",
    "load_checkpoint": "curvext.data.zoo",
    "AttackResult": "curvext.adversarial.attacks",
    "pgd": "curvext.adversarial.attacks",
    "carlini_wagner": "curvext.adversarial.attacks",
    "adaptive_pgd": "curvext.adversarial.adaptive",
    "best_of_restarts": "curvext.adversarial.adaptive",
    "max_softmax_score": "curvext.adversarial.baselines",
    "logit_margin_score": "curvext.adversarial.baselines",
    "noise_consistency_score": "curvext.adversarial.baselines",
    "feature_squeezing_score": "curvext.adversarial.baselines",
    "Squeezer": "curvext.adversarial.squeezers",
    "runner_up_labels": "curvext.adversarial.baselines",
    "detection_metrics": "curvext.detection.metrics",
    # curvature in training loops
    "CurvatureMonitor": "curvext.training.monitor",
    "curvature_penalty": "curvext.training.penalty",
    # process settings
    "tune_cpu_allocator": "curvext.utils.cpu_allocator",
}
_RENAMED = {"train_model": ("curvext.data.zoo", "train")}

__all__ = ["ConvergenceError", "ConvergenceWarning", "EigResult", "lanczos", "power_iteration", "tridiag_eigh",
           *_RENAMED, *_LAZY]


def __getattr__(name):
    if name in _RENAMED:
        module, attribute = _RENAMED[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curvext' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
