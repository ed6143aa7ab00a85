"""The ``curvext`` command line: ``curvext [--threads N] <command> [options]``.

Each command lives in ``curvext/commands/<name>.py`` and exposes ``add_parser(subparsers)``
(which sets ``func`` on its parser) so this file only dispatches, sets the process up (threads,
allocator, logging) and turns a user's mistake into one line on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys

import torch

from curvext import __version__
from curvext.utils.cpu_allocator import tune_cpu_allocator, tuning_enabled_by_env
from curvext.utils.progress import progress_shown

#: what a user's mistake raises (a missing file, a bad value, a model that does not fit the data, a
#: missing optional package): one line on stderr and exit status 2, the traceback only with --debug
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               ImportError)
COMMAND_MODULES = ("demo", "evaluate", "calibrate", "detect", "profile", "paths")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default, unless its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line (argparse prints the whole usage first), exit status 2."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def _with_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the library's parameter names (``probe_eps``) written as the command's
    options (``--probe-eps``), so an error raised deep in the library names what the user typed."""
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and "_" in a.dest}
    if not flags:
        return message
    # whole words only, not a piece of a path or a file name (/data_dir/, image_size.pth)
    return re.sub(r"(?<![-\w/\\.])(" + "|".join(map(re.escape, flags)) + r")(?![\w/\\.])", lambda m: flags[m.group(1)],
                  message)


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def default_threads(environ=os.environ) -> int:
    """Intra-op threads for a command: the cores this process may use, shared by the processes
    that ``torchrun`` started on this machine (``LOCAL_WORLD_SIZE``), at most torch's default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(torch.get_num_threads(), cores // local))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="curvext", description="Decision-boundary curvature of classifiers in input space: "
                                                 "detection, label recovery, profiles, paths and sweeps.")
    parser.add_argument("--version", action="version", version=f"curvext {__version__} (torch {torch.__version__})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="intra-op CPU threads (default: the cores this process may use, divided among the "
                             "processes torchrun started on this machine; OMP_NUM_THREADS, when set, wins)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"curvext.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"curvext.commands.{name}":
                continue  # command not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected a positive integer, got {args.threads}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None or "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(args.threads or default_threads())
    if tuning_enabled_by_env():  # the command owns its process (see curvext.utils.cpu_allocator)
        logging.getLogger(__name__).info("glibc malloc tuned for batched tensors: %s", tune_cpu_allocator())
    try:
        with progress_shown(not getattr(args, "no_progress", False)):
            return int(args.func(args) or 0)
    except USER_ERRORS as err:
        if args.debug:
            raise
        message = _with_flags(" ".join(str(err).split()) or type(err).__name__, _command_parser(parser, args.command))
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a progress bar left unfinished
        print(f"{clear}curvext {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
