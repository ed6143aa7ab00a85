"""argparse types shared by the commands: a bad value is refused by argparse with the option's
name and what was expected, before any work starts."""
from __future__ import annotations

import argparse
import math

from curvext.data.normalization import parse_normalization


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _finite_float(text: str, minimum_ok, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (math.isfinite(value) and minimum_ok(value)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _finite_float(text, lambda v: v > 0, "a positive finite number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _finite_float(text, lambda v: v >= 0, "a finite number >= 0")


def scales(text: str):
    """``"0.05,0.1"`` -> ``[0.05, 0.1]`` (every scale a positive finite number), or ``"auto"``."""
    if text.strip() == "auto":
        return "auto"
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers separated by commas, got {text!r}")
    return values


def normalization(text: str):
    """``--normalize``: see :func:`curvext.data.normalization.parse_normalization`."""
    try:
        return parse_normalization(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
