"""curvext.sweep.parts: atomic parts and claims that exclude live holders and survive dead ones."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pyarrow as pa

from curvext.sweep.parts import PartStore


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


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_claim_of_a_dead_process_is_broken(tmp_path):
    store = PartStore(tmp_path)
    (tmp_path / "claims").mkdir()
    claim = tmp_path / "claims" / "part-000003.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": 0}))
    with store.claimed(3) as mine:
        assert mine is not None
    assert not claim.exists()


def test_another_hosts_claim_is_broken_only_after_its_heartbeat_stops(tmp_path):
    store = PartStore(tmp_path, stale_after=60)
    (tmp_path / "claims").mkdir()
    claim = tmp_path / "claims" / "part-000000.claim"
    claim.write_text(json.dumps({"host": "another-node", "pid": 1, "since": 0}))
    with store.claimed(0) as mine:
        assert mine is None  # fresh heartbeat: the other node is working on it
    old = time.time() - 120
    os.utime(claim, (old, old))
    with store.claimed(0) as mine:
        assert mine is not None


def test_claims_on_finished_parts_are_cleared(tmp_path):
    store = PartStore(tmp_path)
    store.write(0, pa.table({"x": [1]}))
    (tmp_path / "claims" / "part-000000.claim").parent.mkdir(exist_ok=True)
    (tmp_path / "claims" / "part-000000.claim").write_text("{}")
    store.clear_stale_claims()
    assert not (tmp_path / "claims" / "part-000000.claim").exists()
