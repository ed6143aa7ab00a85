"""Stop batched CPU passes from page-faulting their tensors in again on every call (glibc).

PyTorch takes CPU tensors from the C library's ``malloc``. glibc serves blocks above its mmap
threshold (128 KiB at first, raised as such blocks are freed, at most 32 MiB) with fresh pages
from the kernel, and hands freed memory at the top of its heap back to the kernel past a trim
threshold. Batched passes whose temporaries are megabytes each (activations of 64 images, their
tangents, a Lanczos basis) then fault every page in again on every call (BENCHMARKS.md has the
page-fault counts and times). Per-image loops allocate small blocks and barely notice, so the
batched code is the one that pays.

:func:`tune_cpu_allocator` raises the mmap threshold to glibc's ceiling (32 MiB) and the trim
threshold to 1 GiB, so those blocks are reused from the heap. The cost: up to the trim threshold
of freed memory stays with the process until it exits. It is process-wide, so the library never
calls it on import; the ``curvext`` command line does (``CURVEXT_TUNE_MALLOC=0`` turns that off)
and so do the benchmark scripts, for both sides of every comparison. Setting
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456`` in
the environment, or preloading jemalloc / tcmalloc, has the same effect.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_cpu_allocator", "tuning_enabled_by_env", "MMAP_THRESHOLD_MAX"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger mmap thresholds on 64-bit systems
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def tune_cpu_allocator(*, mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30,
                       top_pad: int = 256 << 20) -> bool:
    """Keep freed blocks up to ``mmap_threshold`` bytes in the process (glibc ``mallopt``).

    Args:
        mmap_threshold: blocks at least this large still come from (and go back to) the kernel;
            at most :data:`MMAP_THRESHOLD_MAX`.
        trim_threshold: free memory at the top of the heap kept before any is returned.
        top_pad: extra memory requested whenever the heap grows.

    Returns:
        True when every setting was applied; False where the C library is not glibc (nothing
        is changed there).
    """
    for name, value, high in (("mmap_threshold", mmap_threshold, MMAP_THRESHOLD_MAX),
                              ("trim_threshold", trim_threshold, _INT_MAX), ("top_pad", top_pad, _INT_MAX)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= high:
            raise ValueError(f"{name} must be an int in (0, {high}] bytes, got {value!r}")
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library the process already uses
    if mallopt is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                (_M_TOP_PAD, top_pad))
    applied = [mallopt(param, value) for param, value in settings]  # every one, even after a refusal
    return all(status == 1 for status in applied)


def tuning_enabled_by_env() -> bool:
    """False when ``CURVEXT_TUNE_MALLOC`` is set to 0 / false / no / off (the command line's opt-out)."""
    return os.environ.get("CURVEXT_TUNE_MALLOC", "1").strip().lower() not in ("0", "false", "no", "off")
