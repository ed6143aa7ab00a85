"""Checks of plain arguments shared by the library's entry points, each raising a ValueError that
names the argument and what was expected."""
from __future__ import annotations


def require_positive_int(value, name: str) -> int:
    """``value`` when it is an int >= 1 (not a bool); otherwise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
