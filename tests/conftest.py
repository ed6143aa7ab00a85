"""Shared fixtures: devices to parametrise over, seeded generators."""
from __future__ import annotations

import pytest
import torch

import curvext._ops as _ops

CUDA_OK = torch.cuda.is_available() and _ops.has_cuda_kernels()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and a CUDA build"))]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state: unseeded draws (start vectors, random
    matrices) are the same on every run, so a failure reproduces."""
    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
