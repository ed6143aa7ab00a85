"""Geometry of classification regions: DeepFool boundary points, principal-curvature profiles and
the shared curved subspace (docs/method.md §5), paths inside a region (Algorithm 1, §6)."""
from curvext.geometry.deepfool import DeepFoolResult, deepfool
from curvext.geometry.paths import PathResult, find_paths
from curvext.geometry.profiles import CurvatureProfile, principal_curvatures
from curvext.geometry.subspace import Vulnerability, shared_subspace, subspace_vulnerability

__all__ = ["CurvatureProfile", "DeepFoolResult", "PathResult", "Vulnerability", "deepfool", "find_paths",
           "principal_curvatures", "shared_subspace", "subspace_vulnerability"]
