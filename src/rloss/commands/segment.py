"""``rloss segment``: scribbles on one image -> a dense mask (see :mod:`rloss.segment`).

Everything the user gives is checked before the optimisation starts: the outputs
(:func:`rloss._io.check_output_file`: not an input, not each other, an existing file only
with ``--overwrite``, a writable location), the scribble file (not a folder, not a lossy
format), the device, and the working scale against the image size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rloss.commands._common import (
    CLIError,
    add_command,
    check_device,
    check_output_file,
    non_negative_float,
    positive_float,
    positive_int,
    user_errors,
)

__all__ = ["check_scribble_path", "register"]

#: Suffixes ``--out`` (the mask) and ``--overlay`` accept.
MASK_SUFFIXES = (".png",)
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rloss segment`` to the ``rloss`` command (argparse only; light)."""
    from rloss.segment import _METHODS, DEFAULT_BACKEND, DEFAULTS, EARLY_STOP_EVERY

    p = add_command(
        subparsers,
        "segment",
        help="segment one image from scribbles (pCE + DenseCRF, optimised on the image)",
        description=(
            "Turn scribbles on one image into a dense mask by fitting a small network "
            "(or per-pixel scores) to that image with partial cross-entropy on the "
            "scribbles plus the DenseCRF loss. Writes the mask as a palette PNG "
            "(label values = the scribbles' values) and optionally an overlay. Outputs are "
            "never inputs; existing files are replaced only with --overwrite."
        ),
    )
    p.add_argument("image", type=Path, help="RGB image (PNG/JPEG)")
    p.add_argument(
        "--scribbles",
        type=Path,
        required=True,
        help="index/palette PNG (255 = unlabelled) or .txt with one 'label,x1,y1,x2,y2,...' "
        "stroke per line (not JPEG: its noise would become labels)",
    )
    p.add_argument("--out", type=Path, required=True, help="output mask (.png)")
    p.add_argument("--overlay", type=Path, default=None,
                   help="also write an overlay (.png, .jpg or .jpeg)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never an input)")
    p.add_argument("--no-crf", action="store_true", help="pCE only (no DenseCRF loss), to compare")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"],
                   help="optimisation steps")
    p.add_argument("--method", choices=_METHODS, default=DEFAULTS["method"],
                   help="small network fitted to the image, or free per-pixel scores")
    p.add_argument("--crf-weight", type=non_negative_float, default=DEFAULTS["crf_weight"],
                   help="weight of the DenseCRF loss")
    p.add_argument("--sigma-rgb", type=positive_float, default=DEFAULTS["sigma_rgb"],
                   help="colour bandwidth (0..255 units)")
    p.add_argument("--sigma-xy", type=positive_float, default=DEFAULTS["sigma_xy"],
                   help="spatial bandwidth (pixels)")
    p.add_argument("--scale", type=float, default=DEFAULTS["scale"],
                   help="working scale of the scores and the loss, in (0, 1]")
    p.add_argument(
        "--max-grid-pixels", type=int, default=DEFAULTS["max_grid_pixels"],
        help="lower --scale on large images so that the score grid has at most this many "
        "pixels (0: no cap)",
    )
    p.add_argument(
        "--tol", type=float, default=DEFAULTS["tol"],
        help="stop early once under this fraction of the labels changes between checks "
        f"{EARLY_STOP_EVERY} steps apart, twice running (0: run all --steps)",
    )
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (unset: 0.01 for net, 0.1 for logits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the network initialisation")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    p.add_argument(
        "--backend", choices=("torch", "numba"), default=DEFAULT_BACKEND,
        help="lattice backend of the DenseCRF loss (torch: no numba import, built in "
        "under 0.1 s on the capped score grid)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=DEFAULTS["threads"],
        help="torch CPU threads, and numba's with --backend numba (1 can be faster when "
        "the machine's cores are busy with other work)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)


def check_scribble_path(path: Path, what: str = "--scribbles") -> None:
    """:func:`rloss.segment.check_scribble_file` (exists, a file, not lossy) as a CLI error."""
    from rloss.segment import check_scribble_file

    with user_errors(ValueError, prefix=f"{what} "):
        check_scribble_file(path)


def _check_outputs(args: argparse.Namespace) -> None:
    inputs = [args.image, args.scribbles]
    check_output_file(args.out, inputs=inputs, overwrite=args.overwrite,
                      suffixes=MASK_SUFFIXES, what="--out")
    if args.overlay is not None:
        from rloss._io import resolve_path

        if resolve_path(args.overlay) == resolve_path(args.out):
            raise CLIError(f"--overlay {args.overlay}: is the same file as --out; give the "
                           "overlay another name")
        check_output_file(args.overlay, inputs=inputs, overwrite=args.overwrite,
                          suffixes=OVERLAY_SUFFIXES, what="--overlay")


def _note_depth(path: Path) -> None:
    """Say once that a 16-bit image was rescaled to 8 bits (``rloss.data.io.read_image``)."""
    import sys

    from PIL import Image

    with Image.open(path) as im:
        mode = im.mode
    if mode.startswith("I"):
        print(f"note: {path} is a 16-bit grey image ({mode!r}); rescaled to 8 bits "
              "(value / 257)", file=sys.stderr)


def _cmd_segment(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from rloss.data.io import DataError, read_image, write_image, write_label
    from rloss.segment import OptimisationDiverged, read_scribbles, segment_image
    from rloss.viz import overlay

    if not 0.0 < args.scale <= 1.0:
        raise CLIError(f"--scale {args.scale:g}: want a number in (0, 1]")
    if args.max_grid_pixels < 0:
        raise CLIError(f"--max-grid-pixels {args.max_grid_pixels}: want an integer >= 0")
    if not 0.0 <= args.tol < 1.0:
        raise CLIError(f"--tol {args.tol:g}: want a fraction in [0, 1)")
    _check_outputs(args)
    check_scribble_path(args.scribbles)
    device = check_device(args.device)
    with user_errors(DataError, ValueError):
        image = read_image(args.image)
        scribbles = read_scribbles(args.scribbles, image.shape[:2])
    _note_depth(args.image)
    h, w = image.shape[:2]
    if round(min(h, w) * args.scale) < 2:
        raise CLIError(
            f"--scale {args.scale:g}: too small for this {w}x{h} image (the score grid would "
            f"have under 2 pixels on a side); want --scale >= {min(1.0, 1.5 / min(h, w)):.3g}"
        )
    start = time.perf_counter()
    try:
        labels = segment_image(
            image,
            scribbles,
            crf_weight=0.0 if args.no_crf else args.crf_weight,
            sigma_rgb=args.sigma_rgb,
            sigma_xy=args.sigma_xy,
            steps=args.steps,
            scale=args.scale,
            max_grid_pixels=args.max_grid_pixels,
            lr=args.lr,
            tol=args.tol,
            method=args.method,
            seed=args.seed,
            device=device,
            backend=args.backend,
            threads=args.threads,
            progress=not args.quiet,
        )
    except OptimisationDiverged as err:
        default = "0.01" if args.method == "net" else "0.1"
        raise CLIError(
            f"the optimisation diverged at step {err.step} of {err.steps} (the scores became "
            f"NaN or Inf): --lr {err.lr:g} is too large; try --lr {default} (the default for "
            f"--method {args.method}) or a smaller --crf-weight"
        ) from None
    except ValueError as err:
        raise CLIError(str(err)) from None
    elapsed = time.perf_counter() - start
    write_label(args.out, labels.astype(np.uint8))
    print(f"mask: {args.out}")
    if args.overlay is not None:
        write_image(args.overlay, overlay(image, labels, alpha=0.5))
        print(f"overlay: {args.overlay}")
    present = np.unique(labels)
    print(
        f"{w}x{h} px, classes {present.tolist()}, "
        f"{'pCE only' if args.no_crf else 'pCE + DenseCRF'}, {elapsed:.1f} s"
    )
    return 0
