"""Label recovery: which competing class a flagged image is given back (docs/method.md §7)."""
from __future__ import annotations

import torch

RECOVERY_RULES = ("max", "min", "max-top2", "min-top2")


def recovered_labels(per_class: torch.Tensor, rule: str = "max",
                     competitors: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` int64: the competing class with the largest (Algorithm 2, "max") or smallest
    ("min") summed curvature in ``per_class (B, L)``; classes outside the sum (NaN) never win.
    The "-top2" rules choose only between the two highest-scoring competing classes,
    ``competitors[:, :2]`` (``(B, K)`` by decreasing logit, as in :class:`Scores`)."""
    if rule not in RECOVERY_RULES:
        raise ValueError(f"rule must be one of {RECOVERY_RULES}, got {rule!r}")
    if rule.endswith("-top2"):
        if competitors is None:
            raise ValueError(f"rule {rule!r} needs competitors (B, K): the competing classes by decreasing logit")
        keep = torch.zeros(per_class.shape, dtype=torch.bool, device=per_class.device)
        keep.scatter_(1, competitors[:, :2].to(per_class.device), True)
        per_class = per_class.masked_fill(~keep, float("nan"))
    if rule.startswith("max"):
        return torch.nan_to_num(per_class, nan=float("-inf")).argmax(dim=1)
    return torch.nan_to_num(per_class, nan=float("inf")).argmin(dim=1)
