"""curvext.linalg._selection: which Ritz values a solver wants, against a plain-Python reference."""
from __future__ import annotations

import pytest
import torch

from curvext.linalg._selection import select, worst_wanted


def reference_columns(values: list[float], k: int, which: str) -> list[int]:
    """Columns of the wanted values of one ascending row, ascending (all of them when short)."""
    m = len(values)
    if m <= k:
        return list(range(m))
    if which == "LA":
        return list(range(m - k, m))
    if which == "SA":
        return list(range(k))
    if which == "BE":
        return list(range(k // 2)) + list(range(m - (k + 1) // 2, m))
    by_magnitude = sorted(range(m), key=lambda i: -abs(values[i]))
    return sorted(by_magnitude[:k])


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("k", [1, 4, 5])
def test_select_matches_reference_with_padded_and_short_rows(which, k):
    g = torch.Generator().manual_seed(k)
    m = 9
    theta = torch.sort(torch.randn(6, m, generator=g, dtype=torch.float64) * 3, dim=1).values
    sizes = torch.tensor([9, 7, 5, 4, 2, 1])  # rows shorter than k return what they have
    idx, valid = select(theta, sizes, k, which)
    for r in range(theta.shape[0]):
        want = reference_columns(theta[r, : sizes[r]].tolist(), k, which)
        got = idx[r][valid[r]].tolist()
        assert got == want, (r, got, want)
        assert int(valid[r].sum()) == len(want)


@pytest.mark.parametrize("which", ["LA", "SA", "BE", "LM"])
@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_worst_wanted_is_the_maximum_over_selected_columns(which, k):
    g = torch.Generator().manual_seed(10 + k)
    theta = torch.sort(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1).values
    score = torch.rand(7, 8, generator=g, dtype=torch.float64)
    idx, valid = select(theta, torch.full((7,), 8), k, which)
    assert bool(valid.all())
    expected = score.gather(1, idx).amax(dim=1)
    torch.testing.assert_close(worst_wanted(score, theta, k, which), expected, rtol=0, atol=0)


def test_worst_wanted_rejects_unknown_which():
    with pytest.raises(ValueError, match="which must be one of"):
        worst_wanted(torch.zeros(1, 3), torch.zeros(1, 3), 1, "XX")
