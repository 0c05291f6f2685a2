"""``rloss demo``: the offline demo of :mod:`rloss.demo` (its library code lives there).

The output folder is checked before anything runs; Ctrl-C exits with status 130 and
prints the same command, which resumes (finished runs in ``--out`` are reused).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rloss.commands._common import (
    CLIError,
    add_command,
    check_output_dir,
    positive_int,
    set_resume_hint,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rloss demo`` to the ``rloss`` command (argparse only; light)."""
    p = add_command(
        subparsers,
        "demo",
        help="offline demo: scribbles vs scribbles + DenseCRF loss vs full supervision",
        description=(
            "Generate the built-in dataset, train the same network with partial "
            "cross-entropy on scribbles, then fine-tune it with the DenseCRF loss, and "
            "train it with full masks; print the mIoU table and write a report folder "
            "(tables, figures, gradient visualisation). A few minutes on 2 CPU cores. "
            "Interrupted, the same command resumes."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("rloss-demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny run (< 2 min), numbers meaningless")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    p.add_argument("--ncut", action="store_true", help="also train with the Normalized Cut loss")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="training device")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for training (unset: all cores); 1 is faster on a busy machine",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a demo with other settings in --out"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    if args.device == "cuda":
        from rloss.commands._common import check_device

        check_device("cuda")
    from rloss.demo import run_demo

    set_resume_hint(args, "rloss " + shlex.join(list(getattr(args, "argv", None) or ["demo"])))
    try:
        res = run_demo(
            args.out,
            quick=args.quick,
            seed=args.seed,
            ncut=args.ncut,
            device=args.device,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            overrides={} if args.threads is None else {"threads": int(args.threads)},
        )
    except FileExistsError as err:
        raise CLIError(str(err)) from None
    print()
    print(res["table"])
    for key in ("table_md", "table_json", "predictions", "curves", "gradient"):
        print(f"{key:12s} {res['files'][key]}")
    return 0
