"""Where a command runs: its device, and its shard of the work under ``torchrun``.

``--device auto`` (the default) is ``cuda:<LOCAL_RANK>`` when CUDA is available and ``cpu``
otherwise. ``--shard I/N`` gives a run the chunks ``i`` with ``i % N == I``; under ``torchrun`` it
defaults to ``RANK/WORLD_SIZE``, so ``torchrun --nproc-per-node 8 -m curvext.cli detect ...``
splits a sweep over eight GPUs (and over nodes, with ``--nnodes``): each process writes its own
parts of the shared output folder, and the only communication is a barrier at the end
(:mod:`curvext.sweep.engine`).
"""
from __future__ import annotations

import argparse
import os

import torch

from curvext.sweep.engine import Shard


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with ``0 <= I < N`` (argparse type)."""
    try:
        index, count = (int(part) for part in text.split("/"))
        return Shard(index, count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None


def add_shard_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="compute the chunks i with i %% N == I (default: RANK/WORLD_SIZE under torchrun, else all); "
                        "sharding by hand on one GPU machine, also pass --device cuda:I")


def resolve_device(text: str, environ=os.environ):
    """``torch.device`` for ``--device``: "auto", "cpu", "cuda" or "cuda:N"; a clear error when
    CUDA is asked for and absent."""
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = f"cuda:{int(environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {text!r}")
    return device


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda or cuda:N")
