"""The ``curvext`` command line: ``curvext <command> [options]``.

Each command lives in ``curvext/commands/<name>.py`` and exposes ``add_parser(subparsers)``
(which sets ``func`` on its parser) so this file only dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from curvext.utils.cpu_allocator import tune_cpu_allocator, tuning_enabled_by_env

COMMAND_MODULES = ("demo", "evaluate", "paths", "profile")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curvext", description="Decision-boundary curvature of classifiers "
                                     "in input space: detection, label recovery and profiles.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
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
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if tuning_enabled_by_env():  # the command owns its process (see curvext.utils.cpu_allocator)
        logging.getLogger(__name__).info("glibc malloc tuned for batched tensors: %s", tune_cpu_allocator())
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
