"""Exactly-once parts of a sweep's output: one Parquet file per chunk, written in one step, and
claim files so that processes sharing an output folder do not compute a chunk at the same time.

A process claims chunk i by creating ``claims/<name>-<i>.claim`` exclusively (``O_CREAT |
O_EXCL``) with a random token, its host, pid and the pid's start time. While it holds the claim a
background thread touches it every ``stale_after / 10`` seconds (the heartbeat) and checks that
the token is still its own. A claim is stale when its heartbeat is older than ``stale_after``,
or, on the same host, when its process is gone (or its pid now belongs to a process that
started later). Breaking a stale claim renames it away and checks that the renamed file is the
stale one; if a live claim was taken instead, it is put back, or its holder notices at its next
heartbeat that the claim is lost and abandons the chunk. A part that exists is never recomputed;
parts are flushed to disk before they are renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from curvext.utils.atomic_files import atomic_path
from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)

STALE_AFTER = 600.0  # seconds without a heartbeat after which a claim is broken


class ClaimLost(RuntimeError):
    """Another process broke this process's claim (its heartbeat stalled): the chunk is abandoned."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from ``/proc``), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (None: unknown) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process holds the pid
    now = _process_start(pid)
    return started is None or now is None or now == started


class Claim:
    """A held claim on one chunk. :meth:`check` raises :class:`ClaimLost` once another process has
    broken it; a daemon thread keeps the heartbeat going until :meth:`release`."""

    def __init__(self, path: Path, token: str, interval: float):
        self.path, self.token = path, token
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if not self.owned():
                self.lost = True
                return
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def owned(self) -> bool:
        return _read(self.path).get("token") == self.token

    def check(self) -> None:
        """Raise :class:`ClaimLost` when the claim is no longer this process's."""
        if self.lost or not self.owned():
            self.lost = True
            raise ClaimLost(f"the claim {self.path.name} was taken over by another process")

    def refresh(self) -> None:
        """Check the claim and touch it (the heartbeat, for callers between batches)."""
        self.check()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.owned():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


class PartStore:
    """The parts ``<folder>/<name>-<chunk:06d>.parquet`` of one sweep and their claims."""

    def __init__(self, folder: str | os.PathLike, name: str = "part", stale_after: float = STALE_AFTER):
        self.folder = Path(folder)
        self.name = name
        self.stale_after = float(stale_after)
        self.claims = self.folder / "claims"

    def path(self, chunk: int) -> Path:
        return self.folder / f"{self.name}-{chunk:06d}.parquet"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).is_file()

    def missing(self, chunks: int) -> list[int]:
        """Chunks without a part, from a fresh listing of the folder (a listing revalidates a
        network file system's cache, which a lookup of each name may not)."""
        present = set(os.listdir(self.folder)) if self.folder.is_dir() else set()
        return [i for i in range(chunks) if self.path(i).name not in present]

    def write(self, chunk: int, table) -> Path:
        """Write the ``pyarrow.Table`` of ``chunk`` in one step (readers see all of it or nothing)."""
        parquet = optional_import("pyarrow.parquet")
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(chunk)) as tmp:
            parquet.write_table(table, tmp)
        return self.path(chunk)

    def read(self, chunks: int, columns: list[str] | None = None):
        """All parts, in chunk order, as one ``pyarrow.Table`` (every part must exist)."""
        pa = optional_import("pyarrow")
        parquet = optional_import("pyarrow.parquet")
        return pa.concat_tables([parquet.read_table(self.path(i), columns=columns) for i in range(chunks)])

    @contextlib.contextmanager
    def claimed(self, chunk: int) -> Iterator[Claim | None]:
        """Hold the claim on ``chunk`` while the block runs; yields None (and holds nothing) when a
        live process holds it."""
        self.claims.mkdir(parents=True, exist_ok=True)
        path = self.claims / f"{self.name}-{chunk:06d}.claim"
        token = secrets.token_hex(8)
        if not self._create(path, token):
            stale = self._stale_token(path)
            if stale is None or not self._break(path, stale) or not self._create(path, token):
                yield None
                return
        claim = Claim(path, token, max(self.stale_after / 10, 0.05))
        try:
            yield claim
        finally:
            claim.release()

    def clear_stale_claims(self) -> None:
        """Remove claims on chunks whose part exists (left by a process killed after writing)."""
        if not self.claims.is_dir():
            return
        for path in self.claims.glob(f"{self.name}-*.claim"):
            chunk = int(path.stem.rsplit("-", 1)[1])
            if self.done(chunk):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    @staticmethod
    def _create(path: Path, token: str) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _process_start(os.getpid()), "since": time.time()}, f)
        return True

    def _stale_token(self, path: Path) -> str | None:
        """The token of the claim at ``path`` when it is stale (``""`` for an unreadable claim past
        ``stale_after``), else None (live, or gone: the caller then retries later)."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        holder = _read(path)
        if age > self.stale_after:
            return holder.get("token", "")
        if not holder:
            return None  # being written by its creator, or unreadable: live until it ages out
        same_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
        if same_host and not _running(holder["pid"], holder.get("started")):
            return holder.get("token", "")  # the process is gone, or its pid was reused
        return None

    def _break(self, path: Path, stale: str) -> bool:
        tomb = path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return False  # another process broke it first
        if _read(tomb).get("token", "") != stale:  # a live claim replaced the stale one meanwhile
            with contextlib.suppress(OSError):
                os.link(tomb, path)  # put it back (its holder finds it lost if someone got there first)
            return False
        logger.info("broke the stale claim %s", path.name)
        return True
