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
    ar = torch.arange(k, device=theta.device)
    sizes = sizes.to(theta.device).view(B, 1)
    if which == "LA":
        idx = sizes - k + ar
    elif which == "SA":
        idx = ar.expand(B, k)
    elif which == "BE":
        hi, lo = (k + 1) // 2, k // 2
        idx = torch.cat([ar[:lo].expand(B, lo), sizes - hi + ar[:hi]], dim=1)
        valid_be = (sizes >= k).expand(B, k)
    elif which == "LM":
        cols = torch.arange(m, device=theta.device).view(1, m)
        mag = theta.abs().masked_fill(cols >= sizes, -1.0)
        top = torch.topk(mag, min(k, m), dim=1).indices
        if top.shape[1] < k:
            top = torch.cat([top, top.new_zeros(B, k - top.shape[1])], dim=1)
        idx = torch.sort(top, dim=1).values
    else:
        raise ValueError(f"which must be one of {sorted(WHICH)}, got {which!r}")
    valid = (idx >= 0) & (idx < sizes)
    if which == "BE":
        valid = valid & valid_be
    if which == "LM":
        valid = (ar.view(1, k) < sizes)
        # Padding columns were chosen only when a row has fewer than k values.
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        valid = valid.expand(B, k)
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx.long(), valid
