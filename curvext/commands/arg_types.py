"""argparse types shared by the commands: a bad value is refused by argparse with the option's
name and what was expected, before any work starts."""
from __future__ import annotations

import argparse
import math
import os

from curvext.data.normalization import parse_normalization


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return _finite_float(text, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")


def choice_list(choices: tuple[str, ...]):
    """An argparse type: ``"a,b"`` -> ``("a", "b")``, each one of ``choices``, no repeats, at
    least one."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        wrong = [item for item in items if item not in choices]
        if not items or wrong or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(choices)} separated by commas "
                                             f"(no repeats), got {text!r}")
        return items

    parse.__name__ = "choice_list"  # argparse names the type in some messages
    return parse


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


def _existing(text: str, is_kind, kind: str, other: str) -> str:
    text = os.path.expanduser(text)
    if not is_kind(text):
        raise argparse.ArgumentTypeError(f"expected an existing {kind}, got {text!r}, which "
                                         f"{other if os.path.exists(text) else 'does not exist'}")
    return text


def existing_file(text: str) -> str:
    """The path of a file that exists (``~`` expanded)."""
    return _existing(text, os.path.isfile, "file", "is a folder")


def existing_folder(text: str) -> str:
    """The path of a folder that exists (``~`` expanded)."""
    return _existing(text, os.path.isdir, "folder", "is a file")


def output_folder(text: str) -> str:
    """A folder to write into (``~`` expanded): absent (created later) or an existing directory,
    not a file."""
    text = os.path.expanduser(text)
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder to write into, got {text!r}, which is a file")
    return text
