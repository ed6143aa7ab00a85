"""Exactly-once parts of a sweep's output: one Parquet file per chunk, written in one step, and
claim files so that processes sharing an output folder never compute a chunk twice at once.

A process claims chunk i by creating ``claims/<name>-<i>.claim`` exclusively (``O_CREAT |
O_EXCL``, atomic on local and NFS v3+ file systems), writes the part atomically, then drops the
claim. A claim whose holder died (same host and its process is gone, or no heartbeat for
``stale_after`` seconds: the holder touches its claim after every batch) is broken by renaming it
away (atomic, so of two processes breaking it one wins) and the chunk is claimed anew. A part that
exists is never recomputed; a killed run leaves at most stale claims and temporary files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from curvext.utils.atomic_files import atomic_path
from curvext.utils.optional import optional_import

logger = logging.getLogger(__name__)

STALE_AFTER = 600.0  # seconds without a heartbeat after which another host's claim is broken


class Claim:
    """A held claim on one chunk; :meth:`refresh` is the heartbeat."""

    def __init__(self, path: Path):
        self.path = path

    def refresh(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)


class PartStore:
    """The parts ``<folder>/<name>-<chunk:06d>.parquet`` of one sweep and their claims."""

    def __init__(self, folder: str | os.PathLike, name: str = "part", stale_after: float = STALE_AFTER):
        self.folder = Path(folder)
        self.name = name
        self.stale_after = stale_after
        self.claims = self.folder / "claims"

    def path(self, chunk: int) -> Path:
        return self.folder / f"{self.name}-{chunk:06d}.parquet"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).is_file()

    def missing(self, chunks: int) -> list[int]:
        return [i for i in range(chunks) if not self.done(i)]

    def write(self, chunk: int, table) -> Path:
        """Write the ``pyarrow.Table`` of ``chunk`` in one step (readers see all of it or nothing)."""
        parquet = optional_import("pyarrow.parquet")
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(chunk)) as tmp:
            parquet.write_table(table, tmp)
        return self.path(chunk)

    def read(self, chunks: int):
        """All parts, in chunk order, as one ``pyarrow.Table`` (every part must exist)."""
        pa = optional_import("pyarrow")
        parquet = optional_import("pyarrow.parquet")
        return pa.concat_tables([parquet.read_table(self.path(i)) for i in range(chunks)])

    @contextlib.contextmanager
    def claimed(self, chunk: int) -> Iterator[Claim | None]:
        """Hold the claim on ``chunk`` while the block runs; yields None (and holds nothing) when a
        live process holds it."""
        self.claims.mkdir(parents=True, exist_ok=True)
        path = self.claims / f"{self.name}-{chunk:06d}.claim"
        if not self._create(path):
            broken = self._stale(path) and (self._break(path) or not path.exists())
            if not (broken and self._create(path)):
                yield None
                return
        try:
            yield Claim(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

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
    def _create(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, f)
        return True

    def _stale(self, path: Path) -> bool:
        try:
            holder = json.loads(path.read_text() or "{}")
            age = time.time() - path.stat().st_mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return True  # vanished, or its writer died between creating and writing it
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"])
        return age > self.stale_after

    @staticmethod
    def _break(path: Path) -> bool:
        try:
            os.rename(path, path.with_name(f"{path.name}.stale-{secrets.token_hex(4)}"))
        except FileNotFoundError:
            return False  # another process broke it first
        logger.info("broke the stale claim %s", path.name)
        return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds the pid
    return True
