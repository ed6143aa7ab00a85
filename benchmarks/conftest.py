"""pytest-benchmark runs (``make bench``): tune the C allocator once for the whole session, as the
plain scripts do, so curvext and every reference run under the same allocator
(``CURVEXT_TUNE_MALLOC=0`` leaves glibc's defaults; see curvext/utils/cpu_allocator.py)."""
from __future__ import annotations


def pytest_configure(config):
    from curvext.utils.cpu_allocator import tune_cpu_allocator, tuning_enabled_by_env

    if tuning_enabled_by_env():
        tune_cpu_allocator()
