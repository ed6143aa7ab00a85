"""Files that appear whole or not at all, so a killed run or several writers (shards of a sweep on
one or several nodes sharing a folder) never leave half a file behind."""
from __future__ import annotations

import os
import re
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary sibling of ``path`` to write; on success it replaces ``path`` in one
    step (``os.replace``, after an ``fsync`` of the file), on failure it is removed. The
    temporary name keeps the suffix (so writers that pick a format by suffix work) and holds the
    host, the process and a random token, so concurrent writers on a shared filesystem never
    write the same temporary file."""
    path = Path(path)
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
    tmp = path.with_name(f".{path.stem}.{host}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix or '.tmp'}")
    try:
        yield tmp
        _flush(tmp)  # on disk before the rename: a crash never leaves an empty file under the name
        os.replace(tmp, path)
        _flush(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _flush(path: Path) -> None:
    """``fsync`` a file or a folder (the rename's entry); skipped where the system refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
