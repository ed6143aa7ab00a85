"""curvext.utils.validation."""
from __future__ import annotations

import pytest

from curvext.utils.validation import require_positive_int


def test_positive_int():
    assert require_positive_int(3, "steps") == 3
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"^steps must be a positive int, got "):
            require_positive_int(bad, "steps")
