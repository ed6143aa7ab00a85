"""curvext.sweep.parts: atomic parts, and claims that exclude live holders, survive dead ones
(also when their pid was reused) and notice when they were taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from curvext.sweep.engine import Chunks, run_chunks
from curvext.sweep.parts import PartStore, _process_start


def test_parts_are_written_whole_and_read_in_chunk_order(tmp_path):
    store = PartStore(tmp_path / "parts")
    store.write(1, pa.table({"x": [3, 4]}))
    store.write(0, pa.table({"x": [1, 2]}))
    assert store.missing(3) == [2]
    store.write(2, pa.table({"x": [5]}))
    assert store.read(3).column("x").to_pylist() == [1, 2, 3, 4, 5]
    assert not [p for p in (tmp_path / "parts").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_live_claim_excludes_others_and_is_released(tmp_path):
    store = PartStore(tmp_path)
    with store.claimed(0) as mine:
        assert mine is not None
        with store.claimed(0) as theirs:  # the same process, as a second claimant would
            assert theirs is None
    with store.claimed(0) as again:
        assert again is not None


def plant(tmp_path, chunk: int, **holder) -> os.PathLike:
    (tmp_path / "claims").mkdir(exist_ok=True)
    claim = tmp_path / "claims" / f"part-{chunk:06d}.claim"
    claim.write_text(json.dumps({"token": "theirs", **holder}))
    return claim


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_claim_of_a_dead_process_is_broken(tmp_path):
    claim = plant(tmp_path, 3, host=socket.gethostname(), pid=dead_pid(), started="1")
    with PartStore(tmp_path).claimed(3) as mine:
        assert mine is not None and mine.owned()
    assert not claim.exists()


@pytest.mark.skipif(_process_start(os.getpid()) is None, reason="needs /proc to read process start times")
def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path):
    """The recorded pid runs again (here: this very process) but started at another time."""
    plant(tmp_path, 0, host=socket.gethostname(), pid=os.getpid(), started="0")
    with PartStore(tmp_path).claimed(0) as mine:
        assert mine is not None


def test_another_hosts_claim_is_broken_only_after_its_heartbeat_stops(tmp_path):
    store = PartStore(tmp_path, stale_after=60)
    claim = plant(tmp_path, 0, host="another-node", pid=1)
    with store.claimed(0) as mine:
        assert mine is None  # fresh heartbeat: the other node is working on it
    old = time.time() - 120
    os.utime(claim, (old, old))
    with store.claimed(0) as mine:
        assert mine is not None


def test_a_claim_being_written_is_live_until_it_ages(tmp_path):
    store = PartStore(tmp_path, stale_after=60)
    (tmp_path / "claims").mkdir()
    claim = tmp_path / "claims" / "part-000000.claim"
    claim.write_text("")  # created, not written yet
    with store.claimed(0) as mine:
        assert mine is None
    old = time.time() - 120
    os.utime(claim, (old, old))
    with store.claimed(0) as mine:
        assert mine is not None


def test_a_claim_taken_over_is_noticed_and_its_chunk_abandoned(tmp_path):
    store = PartStore(tmp_path)

    def compute(items, heartbeat):
        claim = tmp_path / "claims" / "part-000000.claim"
        claim.write_text(json.dumps({"token": "someone-else"}))  # as a process that broke our claim
        heartbeat()  # raises ClaimLost
        return pa.table({"x": list(items)})

    status = run_chunks(store, Chunks(2, 2), compute)
    assert status.computed == 0 and status.owned_missing == 1 and not store.done(0)
    assert (tmp_path / "claims" / "part-000000.claim").exists()  # the other holder's claim is left alone


def test_breaking_a_claim_that_turned_live_gives_it_back(tmp_path):
    store = PartStore(tmp_path)
    claim = plant(tmp_path, 0, host="another-node", pid=1)
    assert store._break(claim, stale="an-older-token") is False  # the token changed since it was judged
    assert json.loads(claim.read_text())["token"] == "theirs"


def test_claims_on_finished_parts_are_cleared(tmp_path):
    store = PartStore(tmp_path)
    store.write(0, pa.table({"x": [1]}))
    plant(tmp_path, 0)
    store.clear_stale_claims()
    assert not (tmp_path / "claims" / "part-000000.claim").exists()
