"""The ``rloss`` command.

Each command group lives in a module of :mod:`rloss.commands` exposing
``register(subparsers)``; registration stays light (argparse only) so that
``rloss --help`` is fast. Handlers import the heavy stack (Lightning, smp) inside themselves.

Every command reports a user error (bad argument, unreadable or unsafe file) as one line
``rloss COMMAND: error: ...`` with exit status 2, and Ctrl-C as ``interrupted`` with exit
status 130 and, where the work can be resumed, the command that resumes it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import rloss
from rloss.commands import COMMAND_MODULES
from rloss.commands._common import CLIError, HelpFormatter, is_user_error, one_line

__all__ = ["COMMAND_MODULES", "CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``rloss`` argument parser with every command group of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog="rloss",
        description="Weakly-supervised segmentation with regularized losses.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rloss {rloss.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rloss`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv
    sub = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    name = f"rloss {args.command}" + (f" {sub}" if isinstance(sub, str) else "")
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print(f"\n{name}: interrupted"
              + (f"; resume with: {hint}" if hint else ""), file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
