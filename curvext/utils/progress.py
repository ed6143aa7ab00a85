"""Progress bars for the phases of a run that can take more than a few seconds: training a zoo
model, the calibration probe, the scale choice, curvature scores group by group, attacks batch
by batch, sweeps image by image.

Library code asks for a bar with :func:`progress_bar`. An *outer* bar (``leave=True``: a whole
job, e.g. the attacks of an evaluation or a sweep) is drawn where the caller passes
``enabled=True``. An *inner* bar (``leave=False``: one phase) with ``enabled=None`` is drawn only
where the process turned bars on with :func:`show_progress` (the command line does, unless
``--no-progress``), stderr is a terminal, and no outer bar is open (the outer bar already shows
the progress). Otherwise, and without tqdm installed, the bar is silent, so library users, logs
and tests see no output. Every bar is a context manager; close it, also on errors."""
from __future__ import annotations

import contextlib
import importlib
import sys

_shown = False
_open_outer = 0


def show_progress(enabled: bool = True) -> bool:
    """Turn the inner bars of ``enabled=None`` callers on or off for this process; returns the
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


def _on_terminal() -> bool:
    return sys.stderr.isatty()


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


class _Outer:
    """A tqdm bar that counts as open (silencing inner bars) until closed."""

    def __init__(self, bar):
        global _open_outer
        self._bar, self._open = bar, True
        _open_outer += 1

    def __getattr__(self, name):
        return getattr(self._bar, name)

    def __iter__(self):
        try:
            yield from self._bar
        finally:
            self.close()

    def close(self) -> None:
        global _open_outer
        if self._open:
            self._open = False
            _open_outer -= 1
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
                 enabled: bool | None = None, leave: bool = True):
    """A tqdm bar over ``iterable`` (or one updated by hand up to ``total``), or a silent
    stand-in (see the module docstring for when). ``leave=False`` for inner phases: the bar
    disappears when done."""
    if enabled is None:
        enabled = _shown and (leave or _open_outer == 0) and _on_terminal()
    if not enabled:
        return _Silent(iterable)
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return _Silent(iterable)
    bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return _Outer(bar) if leave else bar
