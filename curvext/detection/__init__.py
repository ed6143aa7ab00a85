"""Algorithm 2: the curvature detector, its settings, estimators, calibration and metrics."""
from curvext.detection.config import DetectorConfig
from curvext.detection.detector import CurvatureDetector, Detection
from curvext.detection.metrics import detection_metrics
from curvext.detection.probe import ProbeResult
from curvext.detection.recovery import RECOVERY_RULES, recovered_labels
from curvext.detection.scale_selection import PROBE_SCALES, ScaleChoice
from curvext.detection.scoring import Scores, score_images

__all__ = ["CurvatureDetector", "Detection", "DetectorConfig", "PROBE_SCALES", "ProbeResult", "RECOVERY_RULES",
           "ScaleChoice", "Scores", "detection_metrics", "recovered_labels", "score_images"]
