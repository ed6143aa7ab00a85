"""curvext: decision-boundary curvature of classifiers in input space.

Sign convention everywhere: curvature of F_i = f_i - f_khat (khat the point's own predicted
class), normal pointing out of the point's own region toward class i (SPEC §1): a region that
is locally convex has positive principal curvatures.

Importing curvext loads the compiled ops (a clear ImportError says how to build them if they are
missing); everything else is imported on first use.
"""
from curvext import _ops  # noqa: F401  (loads the compiled ops; a clear error if not built)
from curvext.linalg import EigResult, lanczos, power_iteration, tridiag_eigh

__version__ = "0.1.0"

_LAZY = {
    # input-space curvature
    "InputHessian": "curvext.hvp",
    "CurvatureOperator": "curvext.operators",
    "deepfool": "curvext.geometry.deepfool",
    "DeepFoolResult": "curvext.geometry.deepfool",
    "principal_curvatures": "curvext.geometry.profiles",
    "CurvatureProfile": "curvext.geometry.profiles",
    "shared_subspace": "curvext.geometry.subspace",
    "subspace_vulnerability": "curvext.geometry.subspace",
    "Vulnerability": "curvext.geometry.subspace",
    # Algorithm 2 and its evaluation
    "CurvatureDetector": "curvext.detect",
    "Scores": "curvext.detect",
    "Detection": "curvext.detect",
    "ScaleChoice": "curvext.scale_selection",
    "evaluate": "curvext.evaluate",
    "attack_suite": "curvext.evaluate",
    # data, models, attacks, baselines, metrics
    "Dataset": "curvext.data",
    "load_digits": "curvext.data",
    "load_mnist": "curvext.data",
    "load_image_folder": "curvext.data",
    "LeNet": "curvext.zoo",
    "NiN": "curvext.zoo",
    "ZooModel": "curvext.zoo",
    "load_checkpoint": "curvext.zoo",
    "AttackResult": "curvext.attacks",
    "pgd": "curvext.attacks",
    "carlini_wagner": "curvext.attacks",
    "max_softmax_score": "curvext.baselines",
    "feature_squeezing_score": "curvext.baselines",
    "runner_up_labels": "curvext.baselines",
    "detection_metrics": "curvext.metrics",
    # process settings
    "tune_cpu_allocator": "curvext.cpu_allocator",
}

__all__ = ["EigResult", "lanczos", "power_iteration", "tridiag_eigh", "train_model", *_LAZY]


def __getattr__(name):
    import importlib

    if name == "train_model":
        return importlib.import_module("curvext.zoo").train
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'curvext' has no attribute {name!r}")
