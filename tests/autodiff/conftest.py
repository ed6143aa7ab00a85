"""Fixtures of the autodiff tests."""
from __future__ import annotations

import pytest

from tests.autodiff.test_taylor_rules import EveryRule


@pytest.fixture
def every_rule():
    """A double-precision model with a node of every Taylor-mode rule, in eval mode."""
    return EveryRule().double().eval()
