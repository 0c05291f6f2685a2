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
import atexit
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

import rloss
from rloss.commands import COMMAND_MODULES
from rloss.commands._common import CLIError, HelpFormatter, is_user_error, one_line

__all__ = ["COMMAND_MODULES", "CLIError", "build_parser", "console_main", "main"]


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


def console_main() -> NoReturn:
    """Entry point of the installed ``rloss`` command (and ``python -m rloss.cli``).

    Runs :func:`main`, then ends the process with :func:`quick_exit`. Call :func:`main`
    instead to run a command from Python: it returns the exit status and leaves the
    interpreter alone.
    """
    quick_exit(main())


def quick_exit(code: int) -> NoReturn:
    """End the process with status ``code``, skipping the interpreter's teardown.

    When a command returns, its outputs are written and closed (atomically, by
    :mod:`rloss._io`); what a normal shutdown still does is tear the loaded modules down
    one by one (torch alone leaves ~180,000 objects for the garbage collector to walk,
    several times) and run libtorch's C++ static destructors. That takes 0.4-0.6 s on a
    2-core machine (``python -c "import torch"`` exits 0.45 s faster through
    :func:`os._exit`; ``perf`` puts 60% of it in ``gc_collect_main``), a tenth of an
    ``rloss segment`` run. So this does what a shutdown must (runs the :mod:`atexit`
    handlers, which close loggers and stop multiprocessing workers, and flushes the
    standard streams) and then calls :func:`os._exit`.

    It falls back to :func:`sys.exit` (the normal shutdown) when another non-daemon
    thread is alive, since the interpreter would wait for it, or when flushing a standard
    stream fails (a closed pipe), so that Python reports it as usual.
    """
    code = int(code)
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if others or run_exitfuncs is None:
        sys.exit(code)
    run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    console_main()
