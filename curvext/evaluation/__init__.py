"""The evaluation protocol of the detector against attacks and baselines (docs/method.md §9), and
its figures."""
from curvext.evaluation.protocol import EvaluationReport, ScoreRow, attack_suite, evaluate, write_outputs

__all__ = ["EvaluationReport", "ScoreRow", "attack_suite", "evaluate", "write_outputs"]
