"""The ``rloss`` command.

Each command group lives in its own module exposing ``register(subparsers)``;
registration must stay light (argparse only) so that ``rloss --help`` is
fast. Handlers import the heavy stack (Lightning, smp) inside themselves.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Idle OpenMP workers (torch's and numba's runtimes are separate) spin by default
# and steal the cores the next step needs; measured 5-15x slowdowns of the CPU
# lattice on 2 cores (benchmarks/RESULTS.md). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import rloss

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "rloss.demo",
    "rloss.segment",
    "rloss.data.commands",
    "rloss.train.commands",
    "rloss.viz_commands",
)


class CLIError(Exception):
    """An error to report to the user as one line, with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rloss",
        description="Weakly-supervised segmentation with regularized losses.",
    )
    parser.add_argument("--version", action="version", version=f"rloss {rloss.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CLIError as err:
        print(f"rloss {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
