"""Which Ritz values a solver wants: LA, SA, BE, LM over an ascending spectrum."""
from __future__ import annotations

import torch

WHICH = frozenset({"LA", "SA", "BE", "LM"})


def select(theta: torch.Tensor, sizes: torch.Tensor, k: int, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the wanted values, ascending, per row.

    Args:
        theta: ``(B, m)`` ascending; in row s only the first ``sizes[s]`` entries are real.
        sizes: ``(B,)`` int64 on theta's device.
        k: how many to select.
        which: "LA" largest algebraic, "SA" smallest, "BE" both ends (ceil(k/2) from the top,
            floor(k/2) from the bottom), "LM" largest magnitude.

    Returns:
        ``index (B, k)`` into theta's columns (ascending by value) and ``valid (B, k)`` bool,
        False where a row has fewer than k real values (index then points at column 0).
    """
    B, m = theta.shape
    dev = theta.device
    ar = torch.arange(k, device=dev).view(1, k)
    sizes = sizes.to(dev).view(B, 1)
    if which not in WHICH:
        raise ValueError(f"which must be one of {sorted(WHICH)}, got {which!r}")
    if which == "LA":
        idx = sizes - k + ar
    elif which == "SA":
        idx = ar.expand(B, k)
    elif which == "BE":
        lo = k // 2  # from the bottom; the other (k + 1) // 2 from the top
        idx = torch.where(ar < lo, ar, sizes - k + ar)
    else:  # LM: the k largest |theta| among the real ones, then ascending by value
        cols = torch.arange(m, device=dev).view(1, m)
        mag = theta.abs().masked_fill(cols >= sizes, -1.0)
        top = torch.topk(mag, min(k, m), dim=1).indices
        top = torch.where(torch.gather(mag, 1, top) < 0, torch.full_like(top, m), top)  # padding last
        if top.shape[1] < k:
            top = torch.cat([top, top.new_full((B, k - top.shape[1]), m)], dim=1)
        idx = torch.sort(top, dim=1).values
    # Rows with fewer than k real values return them all, ascending, then invalid slots.
    short = sizes < k
    idx = torch.where(short, ar.expand(B, k), idx)
    valid = (idx >= 0) & (idx < sizes)
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx.long(), valid


def worst_wanted(score: torch.Tensor, theta: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """``(B,)``: the largest ``score`` over the wanted columns of full spectra, with the rules of
    :func:`select` when every row has all ``m >= k`` values (no padding). Slices instead of
    gathers, for the Lanczos convergence test that runs every few steps.

    Args:
        score: ``(B, m)`` one number per Ritz value (e.g. a residual factor).
        theta: ``(B, m)`` the values, ascending.
    """
    m = theta.shape[1]
    if which == "LA":
        return score[:, m - k :].amax(dim=1)
    if which == "SA":
        return score[:, :k].amax(dim=1)
    if which == "BE":
        hi, lo = (k + 1) // 2, k // 2
        top = score[:, m - hi :].amax(dim=1)
        return torch.maximum(top, score[:, :lo].amax(dim=1)) if lo else top
    if which == "LM":
        return score.gather(1, theta.abs().topk(k, dim=1).indices).amax(dim=1)
    raise ValueError(f"which must be one of {sorted(WHICH)}, got {which!r}")
