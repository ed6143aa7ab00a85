"""curvext.sweep.engine: chunks and shards cover every item exactly once; runs resume."""
from __future__ import annotations

import pyarrow as pa
import pytest

from curvext.sweep.engine import Chunks, Shard, run_chunks
from curvext.sweep.parts import PartStore


def test_chunks_cover_every_item_once():
    chunks = Chunks(10, 4)
    assert chunks.count == 3
    assert [list(chunks.items(i)) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="chunk size"):
        Chunks(10, 0)


def test_shards_split_the_chunks_and_the_last_one_merges(tmp_path):
    store, chunks, seen = PartStore(tmp_path), Chunks(7, 2), []

    def compute(items, heartbeat):
        seen.extend(items)
        heartbeat()
        return pa.table({"item": list(items)})

    first = run_chunks(store, chunks, compute, shard=Shard(1, 2))
    assert (first.computed, first.missing, first.leader) == (2, 2, False)
    second = run_chunks(store, chunks, compute, shard=Shard(0, 2))
    assert (second.computed, second.missing, second.leader) == (2, 0, True)
    assert sorted(seen) == list(range(7))  # no item twice, none padded
    again = run_chunks(store, chunks, compute)  # a rerun computes nothing
    assert (again.computed, again.skipped, again.leader) == (0, 4, True)
    assert store.read(4).column("item").to_pylist() == list(range(7))


def test_a_failing_chunk_leaves_no_part_and_no_claim(tmp_path):
    store = PartStore(tmp_path)

    def compute(items, heartbeat):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_chunks(store, Chunks(3, 3), compute)
    assert store.missing(1) == [0] and not list((tmp_path / "claims").iterdir())
