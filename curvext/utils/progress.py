"""Progress bars for the phases of a run that can take more than a few seconds: training a zoo
model, the calibration probe, the scale choice, curvature scores group by group, attacks batch
by batch.

Library code asks for a bar with :func:`progress_bar`. It is drawn where the caller passes
``enabled=True``, or, with ``enabled=None``, where the process turned bars on with
:func:`show_progress` (the command line does, unless ``--no-progress``). Otherwise, and without
tqdm installed, the bar is silent, so library users and tests see no output."""
from __future__ import annotations

import contextlib
import importlib

_shown = False


def show_progress(enabled: bool = True) -> bool:
    """Turn the bars of ``enabled=None`` callers on or off for this process; returns the
    previous setting."""
    global _shown
    previous, _shown = _shown, bool(enabled)
    return previous


@contextlib.contextmanager
def progress_shown(enabled: bool = True):
    """:func:`show_progress` for the ``with`` block, restored after it."""
    previous = show_progress(enabled)
    try:
        yield
    finally:
        show_progress(previous)


class _Silent:
    """The part of tqdm's interface the library uses, doing nothing."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(() if self.iterable is None else self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 enabled: bool | None = None, leave: bool = True):
    """A tqdm bar over ``iterable`` (or one updated by hand up to ``total``), or a silent
    stand-in (see the module docstring). ``leave=False`` for inner phases: the bar disappears
    when done."""
    if not (_shown if enabled is None else enabled):
        return _Silent(iterable)
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return _Silent(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
