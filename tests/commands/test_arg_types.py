"""curvext.commands.arg_types: values argparse refuses before any work starts."""
from __future__ import annotations

import argparse

import pytest

from curvext.commands.arg_types import choice_list, non_negative_int


def test_non_negative_int():
    assert non_negative_int("0") == 0 and non_negative_int("7") == 7
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer >= 0"):
            non_negative_int(bad)


def test_choice_list():
    kinds = choice_list(("natural", "adversarial", "noise"))
    assert kinds("noise") == ("noise",)
    assert kinds(" natural, noise ") == ("natural", "noise")
    for bad in ("", ",", "natural,foo", "noise,noise", "Natural"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected one or more of natural, adversarial, noise"):
            kinds(bad)
