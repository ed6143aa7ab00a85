"""Loads the compiled extension and registers fake (meta) kernels for torch.compile.

Everything here is a thin, unchecked handle on ``torch.ops.curvext.*``; the public, validated
wrappers are in :mod:`curvext.linalg`. Shapes and conventions of each op are documented at its
schema in ``csrc/curvext.cpp``.
"""
from __future__ import annotations

import enum
import glob
import os
import sys

import torch


def _shadowed_installations() -> list[str]:
    """Other folders on ``sys.path`` holding a curvext package with a built extension: when this
    copy (a source checkout, found first because it is the working directory) has none."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or os.getcwd()), "curvext")
        if os.path.normcase(candidate) != os.path.normcase(here) and glob.glob(os.path.join(candidate, "_C*.*")):
            found.append(candidate)
    return found


try:
    from curvext import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as exc:
    _here = os.path.dirname(os.path.abspath(__file__))
    _others = _shadowed_installations()
    if _others:
        raise ImportError(
            f"this curvext ({_here}) shadows the installed one ({_others[0]}): Python found this folder first "
            "(it is the working directory or on PYTHONPATH) and its extension is not built. Run from another "
            f"folder to use the installed curvext, or build this checkout (`make build`). Original error: {exc}"
        ) from exc
    raise ImportError(
        f"curvext's compiled extension (curvext._C) is not built in {_here}. From the source checkout run "
        "`make build` (or `pip install --no-build-isolation -e .`; add CURVEXT_CUDA=0 for a quick "
        f"CPU-only build). Original error: {exc}"
    ) from exc

ops = torch.ops.curvext



class TridiagMode(enum.IntEnum):
    """``mode`` of ``curvext::tridiag_eigh``: eigenvalues only, with the first component of each
    eigenvector (quadrature weights), or with whole eigenvectors."""

    VALUES = 0
    FIRST = 1
    VECTORS = 2


class LanczosFlag(enum.IntEnum):
    """Per-sample flags returned by ``curvext::lanczos_step`` (``curvext::lanczos::Flag`` in
    ``csrc/include/curvext/lanczos_rules.h``)."""

    OK = 0
    BREAKDOWN = 1  # beta ~ 0: the Krylov space is invariant; a fresh orthogonal direction was drawn
    EXHAUSTED = 2  # the basis spans the whole space: nothing left to find
    NONFINITE = 3  # the operator returned inf or NaN


def has_cuda_kernels() -> bool:
    """True when this build of the extension contains the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("curvext::tridiag_eigh", "CUDA")


@torch.library.register_fake("curvext::tridiag_eigh")
def _tridiag_eigh_fake(alpha, beta, mode):
    B, m = alpha.shape
    values = alpha.new_empty((B, m))
    if mode == TridiagMode.VALUES:
        return values, alpha.new_empty((B, 0))
    if mode == TridiagMode.FIRST:
        return values, alpha.new_empty((B, m))
    return values, alpha.new_empty((B, m, m))


@torch.library.register_fake("curvext::lanczos_step")
def _lanczos_step_fake(basis, w, alpha, beta, index, step, breakdown_tol, seed, rows=None):
    return index.new_empty((index.shape[0],), dtype=torch.int32)


@torch.library.register_fake("curvext::arrowhead_tridiag")
def _arrowhead_tridiag_fake(diag, border, sizes):
    B, L = diag.shape
    return diag.new_empty((B, L)), diag.new_empty((B, L)), diag.new_empty((B, L, L))


@torch.library.register_fake("curvext::ritz_vectors")
def _ritz_vectors_fake(basis, coeffs):
    return basis.new_empty((basis.shape[0], coeffs.shape[2], basis.shape[2]))


@torch.library.register_fake("curvext::power_step")
def _power_step_fake(v, w, shift, tol):
    b = v.shape[0]
    return (
        torch.empty_like(v),
        v.new_empty((b,)),
        v.new_empty((b,)),
        v.new_empty((b,), dtype=torch.bool),
    )
