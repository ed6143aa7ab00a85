"""The public API: every exported name resolves; the extension reports how it was built."""
from __future__ import annotations

import subprocess
import sys

import pytest

import curvext


@pytest.mark.parametrize("name", curvext.__all__)
def test_exported_names_resolve(name):
    assert getattr(curvext, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        curvext.nope  # noqa: B018


def test_import_is_light():
    # Importing curvext must not pull in the evaluation stack (matplotlib, pandas, sklearn).
    code = "import sys, curvext; print(any(m in sys.modules for m in ('matplotlib', 'pandas', 'sklearn')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
