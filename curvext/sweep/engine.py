"""The sweep engine: a dataset cut into fixed chunks, each computed once into a Parquet part,
shared out over the processes of a ``torchrun`` job.

Rank r of a world of W processes takes the chunks i with ``i % W == r`` (from ``RANK`` and
``WORLD_SIZE``, or an explicit :class:`Shard`). Nothing is padded or duplicated: unlike a
``DistributedSampler``, every item belongs to exactly one chunk and every chunk to one rank.
Independent processes started on the same output folder share the work through claims
(:mod:`curvext.sweep.parts`). When the job is a ``torchrun`` job, the ranks meet at a barrier at
the end (their only communication, over gloo) and rank 0 alone writes the summary; otherwise a
process that finds every part present writes it (two independent processes finishing together
may both write it, each in one step, with the same content).
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch.distributed as dist

from curvext.sweep.parts import ClaimLost, PartStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """This process's share of the chunks: ``i`` with ``i % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int)
                and 0 <= self.index < self.count):
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {self.index}/{self.count}")

    def owns(self, chunk: int) -> bool:
        return chunk % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def from_env(cls, environ=os.environ) -> Shard:
        """``RANK/WORLD_SIZE`` as ``torchrun`` sets them; ``0/1`` outside it."""
        try:
            rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
        except ValueError:
            raise ValueError(f"RANK/WORLD_SIZE must be integers, got {environ.get('RANK')!r}/"
                             f"{environ.get('WORLD_SIZE')!r}") from None
        return cls(rank, world)


@dataclass(frozen=True)
class Chunks:
    """``total`` items cut into chunks of ``size``: chunk i holds items ``[i * size, (i+1) * size)``."""

    total: int
    size: int

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"chunk size must be a positive int, got {self.size!r}")

    @property
    def count(self) -> int:
        return -(-self.total // self.size)

    def items(self, chunk: int) -> range:
        return range(chunk * self.size, min(self.total, (chunk + 1) * self.size))


@dataclass(frozen=True)
class SweepStatus:
    """computed: chunks this process computed; skipped: chunks it found done or held by another
    process; missing: chunks without a part at the end; leader: whether this process writes the
    summary (every part present and, in a torchrun job, rank 0); owned_missing: missing chunks of
    this process's shard (held by another live process, or abandoned); joined_group: whether
    the engine joined a torchrun process group (:func:`stop_distributed` leaves it)."""

    computed: int
    skipped: int
    missing: int
    leader: bool
    owned_missing: int = 0
    joined_group: bool = False


def run_chunks(store: PartStore, chunks: Chunks, compute: Callable[[range, Callable[[], None]], object], *,
               shard: Shard | None = None, on_skipped: Callable[[int], None] | None = None) -> SweepStatus:
    """Compute the parts this process owns that do not exist yet: ``compute(items, heartbeat)``
    returns the chunk's ``pyarrow.Table`` and calls ``heartbeat()`` now and then (after each
    batch); ``on_skipped(n_items)`` is told about every owned chunk this process did not compute
    (done already, or held by another process), for progress bars."""
    shard = shard or Shard.from_env()
    store.clear_stale_claims()
    computed = skipped = 0
    for chunk in range(chunks.count):
        if not shard.owns(chunk):
            continue
        items = chunks.items(chunk)
        done_here = False
        if not store.done(chunk):
            with store.claimed(chunk) as claim:
                if claim is not None and not store.done(chunk):  # else another process has it or just did it
                    try:
                        table = compute(items, claim.refresh)
                        claim.check()
                    except ClaimLost as lost:
                        logger.warning("chunk %d abandoned: %s", chunk, lost)
                    else:
                        store.write(chunk, table)
                        done_here = True
        computed += done_here
        skipped += not done_here
        if not done_here and on_skipped is not None:
            on_skipped(len(items))
    distributed, joined = _barrier()
    missing = store.missing(chunks.count)
    leader = not missing and (not distributed or dist.get_rank() == 0)
    owned_missing = sum(shard.owns(i) for i in missing)
    return SweepStatus(computed, skipped, len(missing), leader, owned_missing, joined)


def _barrier() -> tuple[bool, bool]:
    """In a torchrun job, wait for every rank, joining the job's process group with gloo if the
    caller has not (only this barrier crosses processes). ``(in a torchrun job, joined here)``."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or "MASTER_ADDR" not in os.environ:
        return False, False
    joined = not dist.is_initialized()
    if joined:
        # A long sweep's ranks finish at different times: the barrier may wait for hours.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
    dist.barrier()
    return True, joined


def stop_distributed(status: SweepStatus) -> None:
    """Leave the process group that :func:`run_chunks` joined, if it did (never the caller's own)."""
    if status.joined_group and dist.is_initialized():
        dist.destroy_process_group()
