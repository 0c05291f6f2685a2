"""``rloss data acdc --root DIR [--download]``: check (or fetch) the WSL4MIS ACDC folder."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``acdc`` subcommand to the ``rloss data`` group."""
    p = subparsers.add_parser(
        "acdc",
        help="check (or download) ACDC cine-MRI with scribbles, WSL4MIS layout",
        description="Check a WSL4MIS-layout ACDC folder (ACDC_training_slices/, "
        "ACDC_training_volumes/; HDF5 datasets image, label, scribble): print the patients, "
        "frames and slices found and the scribbled-pixel fraction, refuse malformed files "
        "by name. With --download fetch the public WSL4MIS data/ACDC folder (git, sparse "
        "and shallow; resumable; files checked before they are moved into place).",
    )
    p.add_argument("--root", required=True, help="the ACDC folder (WSL4MIS data/ACDC)")
    p.add_argument("--download", action="store_true",
                   help="fetch the WSL4MIS folder into --root when it is missing")
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)  # tests: a local git repo
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``rloss data acdc``; prints the report, raises CLIError on bad data."""
    from rloss.commands._common import CLIError
    from rloss.data.acdc import WSL4MIS_GIT, check_root, download_acdc
    from rloss.data.download import DownloadError
    from rloss.data.io import DataError

    try:
        if args.download:
            report = download_acdc(args.root, url=args.url or WSL4MIS_GIT,
                                   progress=not args.no_progress)
        else:
            report = check_root(args.root, progress=not args.no_progress)
    except (DataError, DownloadError, FileExistsError) as err:
        raise CLIError(str(err)) from err
    print(report.format())
    return 0
