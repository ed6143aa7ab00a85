"""The public API: every exported name resolves; the extension reports how it was built."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cpu_kernels_run_in_parallel():
    """The extension must be compiled with torch's parallel backend (OpenMP in the pip wheels):
    otherwise at::parallel_for silently runs every CPU kernel on one thread."""
    import curvext._ops  # noqa: F401  (loads the extension)

    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("torch runs on one thread here")
    assert torch.ops.curvext.parallel_threads(64) == threads
