"""curvext.utils.reprs: results print their tensors' shapes and dtypes, not their values."""
from __future__ import annotations

import torch

import curvext
from curvext.utils.reprs import describe


def test_results_print_shapes_not_values():
    A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64)).repeat(2, 1, 1)
    res = curvext.lanczos(lambda V, i: torch.einsum("bij,bj->bi", A[i], V), torch.randn(2, 8, dtype=torch.float64),
                          k=2)
    text = repr(res)
    assert text.startswith("EigResult(eigenvalues=Tensor(2, 2) float64, eigenvectors=Tensor(2, 2, 8) float64")
    assert "steps=Tensor(2,) int64" in text and "tensor(" not in text
    scores = curvext.Scores(torch.zeros(3), torch.zeros(3, 10), torch.zeros(3, dtype=torch.long),
                            torch.zeros(3, 9, dtype=torch.long))
    assert repr(scores) == ("Scores(rho=Tensor(3,) float32, per_class=Tensor(3, 10) float32, "
                            "predicted=Tensor(3,) int64, competitors=Tensor(3, 9) int64)")


def test_describe():
    assert describe([torch.zeros(2), torch.ones(3)]) == "[2 tensors]"
    assert describe(None) == "None" and describe("x") == "'x'"


def test_attack_and_evaluation_results_print_shapes():
    import numpy as np

    from curvext.adversarial.attacks import AttackResult
    from curvext.evaluation.report import EvaluationReport

    res = AttackResult(torch.zeros(4, 1, 8, 8), torch.ones(4, dtype=torch.bool), torch.zeros(4), "l2",
                       torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    assert repr(res).startswith("AttackResult(adversarial=Tensor(4, 1, 8, 8) float32, success=Tensor(4,) bool, ")
    report = EvaluationReport(list(range(30)), "higher", 0.1, 80, rho_clean=np.zeros(80),
                              rho_perturbed={"cw": np.zeros(70)})
    text = repr(report)
    assert "rows=[30 int]" in text and "rho_clean=ndarray(80,) float64" in text
    assert "rho_perturbed={'cw': ndarray(70,) float64}" in text and "0.0, 0.0" not in text
