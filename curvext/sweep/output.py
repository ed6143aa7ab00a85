"""An output folder belongs to one run: ``<out>/run.json`` records what made its parts (model
digest, calibration, data, settings), and a run with anything else is refused, so no run ever
reads or overwrites another's parts."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

RUN_FILE = "run.json"


class OutputInUse(ValueError):
    """``--out`` holds the parts of another run."""


def claim_output_folder(out: str | os.PathLike, identity: dict) -> Path:
    """Create ``out`` (if needed) for the run ``identity`` (JSON-able), or check that it is the run
    recorded there. Raises NotADirectoryError when ``out`` is a file and :class:`OutputInUse`
    naming every setting that differs when it belongs to another run."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"output folder {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    text = json.dumps(identity, indent=2, sort_keys=True) + "\n"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        recorded = _read(path)
        if recorded != json.loads(text):
            changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
            details = ", ".join(f"{k}: {recorded.get(k)!r} there, {identity.get(k)!r} now" for k in changed[:4])
            raise OutputInUse(f"{folder} holds the results of another run ({details}); choose another output "
                              "folder, or delete that one to start over") from None
        return folder
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return folder


def _read(path: Path) -> dict:
    """The recorded identity; waits briefly for a concurrent creator to finish writing it."""
    for _ in range(50):
        with contextlib.suppress(json.JSONDecodeError):
            content = path.read_text()
            if content.strip():
                return json.loads(content)
        time.sleep(0.1)
    raise OutputInUse(f"{path} is unreadable; delete it to start over")
