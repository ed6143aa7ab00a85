"""curvext.commands.placement: --device and --shard of the commands."""
from __future__ import annotations

import pytest
import torch

from curvext.commands.placement import parse_shard, resolve_device
from curvext.sweep.engine import Shard


def test_shards_partition_the_work():
    shards = [parse_shard(f"{i}/3") for i in range(3)]
    owners = [[s.owns(item) for s in shards] for item in range(10)]
    assert all(sum(row) == 1 for row in owners)  # every item has exactly one owner
    assert str(shards[2]) == "2/3"


def test_shard_from_torchrun_environment():
    assert Shard.from_env({"RANK": "3", "WORLD_SIZE": "8"}) == Shard(3, 8)
    assert Shard.from_env({}) == Shard(0, 1)
    with pytest.raises(ValueError, match="shard must be I/N"):
        Shard.from_env({"RANK": "8", "WORLD_SIZE": "8"})
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE must be integers"):
        Shard.from_env({"RANK": "a", "WORLD_SIZE": "8"})


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        assert resolve_device("auto", {"LOCAL_RANK": "0"}) == torch.device("cuda:0")
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    for bad in ("gpu", "meta"):
        with pytest.raises(ValueError, match="--device"):
            resolve_device(bad)
