"""Geometry of classification regions: DeepFool boundary points, principal-curvature profiles and
the shared curved subspace (docs/method.md §5)."""
from curvext.geometry.deepfool import DeepFoolResult, deepfool
from curvext.geometry.profiles import CurvatureProfile, principal_curvatures
from curvext.geometry.subspace import Vulnerability, shared_subspace, subspace_vulnerability

__all__ = ["CurvatureProfile", "DeepFoolResult", "Vulnerability", "deepfool", "principal_curvatures",
           "shared_subspace", "subspace_vulnerability"]
