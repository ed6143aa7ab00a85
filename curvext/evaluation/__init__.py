"""The evaluation protocol of the detector against plain and adaptive attacks and baselines
(docs/method.md §9), and its figures."""
from curvext.evaluation.protocol import evaluate
from curvext.evaluation.report import EvaluationReport, write_outputs
from curvext.evaluation.rows import ScoreRow
from curvext.evaluation.suite import ATTACKS, AdaptiveAttack, attack_suite

__all__ = ["ATTACKS", "AdaptiveAttack", "EvaluationReport", "ScoreRow", "attack_suite", "evaluate", "write_outputs"]
