"""``rloss segment``: scribbles on an image -> a dense mask (see :mod:`rloss.segment`).

One image: ``rloss segment IMAGE --scribbles FILE --out MASK.png``. Several (batch mode,
one process, so ``import torch`` is paid once): ``rloss segment IMAGES/FOLDERS...
--scribbles FOLDER --out FOLDER``, the scribbles of ``NAME.jpg`` being ``FOLDER/NAME.png``
or ``FOLDER/NAME.txt`` and its mask ``OUT/NAME.png``.

Everything the user gives is checked before the optimisation starts: the outputs
(:func:`rloss._io.check_output_file` / :func:`~rloss._io.check_output_dir`: not an input,
not each other, an existing file only with ``--overwrite``, a writable location), the
scribble files (not a folder, not a lossy format; in batch mode one per image), the device,
and the working scale against the image size (in batch mode, each image's when it is read:
an image that fails is reported and the others go on).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rloss.commands._common import (
    CLIError,
    add_command,
    check_device,
    check_output_dir,
    check_output_file,
    image_files,
    non_negative_float,
    positive_float,
    positive_int,
    set_resume_hint,
    user_errors,
)

__all__ = ["check_scribble_path", "register"]

#: Suffixes ``--out`` (the mask) and ``--overlay`` accept.
MASK_SUFFIXES = (".png",)
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Scribble files batch mode looks for, in this order, as ``--scribbles FOLDER/NAME<suffix>``.
BATCH_SCRIBBLE_SUFFIXES = (".png", ".txt")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rloss segment`` to the ``rloss`` command (argparse only; light)."""
    from rloss.segment import _METHODS, DEFAULT_BACKEND, DEFAULTS, EARLY_STOP_EVERY

    p = add_command(
        subparsers,
        "segment",
        help="segment images from scribbles (pCE + DenseCRF, optimised on each image)",
        description=(
            "Turn scribbles on an image into a dense mask by fitting a small network "
            "(or per-pixel scores) to that image with partial cross-entropy on the "
            "scribbles plus the DenseCRF loss. Writes the mask as a palette PNG "
            "(label values = the scribbles' values) and optionally an overlay. Batch mode: "
            "give --scribbles a folder holding NAME.png or NAME.txt for each image NAME.* "
            "and --out a folder; the images are segmented one after the other in one "
            "process. Outputs are never inputs; existing files are replaced only with "
            "--overwrite."
        ),
    )
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                   help="RGB image (PNG/JPEG); with a --scribbles folder, any number of "
                   "images and folders of images")
    p.add_argument(
        "--scribbles",
        type=Path,
        required=True,
        help="index/palette PNG (255 = unlabelled) or .txt with one 'label,x1,y1,x2,y2,...' "
        "stroke per line (not JPEG: its noise would become labels); or a folder with "
        "NAME.png or NAME.txt for each image NAME.* (batch mode)",
    )
    p.add_argument("--out", type=Path, required=True,
                   help="output mask (.png); in batch mode a folder for NAME.png")
    p.add_argument("--overlay", type=Path, default=None,
                   help="also write an overlay (.png, .jpg or .jpeg); in batch mode a folder "
                   "for NAME_overlay.png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never an input)")
    p.add_argument("--skip-existing", action="store_true",
                   help="batch mode: leave out the images whose outputs all exist (resumes a "
                   "stopped batch)")
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


def _check_outputs(args: argparse.Namespace, image: Path) -> None:
    inputs = [image, args.scribbles]
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


def _check_options(args: argparse.Namespace) -> None:
    if not 0.0 < args.scale <= 1.0:
        raise CLIError(f"--scale {args.scale:g}: want a number in (0, 1]")
    if args.max_grid_pixels < 0:
        raise CLIError(f"--max-grid-pixels {args.max_grid_pixels}: want an integer >= 0")
    if not 0.0 <= args.tol < 1.0:
        raise CLIError(f"--tol {args.tol:g}: want a fraction in [0, 1)")
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing: choose one (replace the existing "
                       "outputs, or leave their images out)")


def _read_pair(image_path: Path, scribble_path: Path, scale: float) -> tuple[Any, Any]:
    """The image and its scribbles, checked against ``scale``; :class:`CLIError` on failure."""
    from rloss.data.io import DataError, read_image
    from rloss.segment import read_scribbles

    with user_errors(DataError, ValueError):
        image = read_image(image_path)
        scribbles = read_scribbles(scribble_path, image.shape[:2])
    _note_depth(image_path)
    h, w = image.shape[:2]
    if round(min(h, w) * scale) < 2:
        raise CLIError(
            f"--scale {scale:g}: too small for this {w}x{h} image (the score grid would "
            f"have under 2 pixels on a side); want --scale >= {min(1.0, 1.5 / min(h, w)):.3g}"
        )
    return image, scribbles


def _segment(args: argparse.Namespace, image: Any, scribbles: Any, device: str,
             progress: bool) -> tuple[Any, float]:
    """:func:`rloss.segment.segment_image` with the command's options: (labels, seconds)."""
    import time

    from rloss.segment import OptimisationDiverged, segment_image

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
            progress=progress,
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
    return labels, time.perf_counter() - start


def _write(mask: Path, overlay_path: Path | None, image: Any, labels: Any) -> None:
    """Write the mask (and overlay); a failed write (disk full, no permission) is a
    :class:`CLIError` naming the file. The writes are atomic, so nothing half-written is left."""
    import numpy as np

    from rloss.data.io import write_image, write_label
    from rloss.viz import overlay

    path = mask
    try:
        write_label(mask, labels.astype(np.uint8))
        if overlay_path is not None:
            path = overlay_path
            write_image(overlay_path, overlay(image, labels, alpha=0.5))
    except OSError as err:
        raise CLIError(f"{path}: could not write it: {err.strerror or err}") from None


def _summary(image: Any, labels: Any, args: argparse.Namespace, seconds: float) -> str:
    import numpy as np

    h, w = image.shape[:2]
    return (f"{w}x{h} px, classes {np.unique(labels).tolist()}, "
            f"{'pCE only' if args.no_crf else 'pCE + DenseCRF'}, {seconds:.1f} s")


def _cmd_segment(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.scribbles.is_dir():
        return _cmd_segment_batch(args)
    if len(args.images) != 1:
        raise CLIError(
            f"--scribbles {args.scribbles}: one scribble file goes with one image, got "
            f"{len(args.images)} images; for several, give --scribbles a folder with NAME.png "
            "or NAME.txt for each image NAME.* (and --out a folder)"
        )
    if args.skip_existing:
        raise CLIError("--skip-existing: applies to batch mode (a --scribbles folder) only; "
                       "for one image, an existing --out is an error unless --overwrite")
    image_path = args.images[0]
    _check_outputs(args, image_path)
    check_scribble_path(args.scribbles)
    device = check_device(args.device)
    image, scribbles = _read_pair(image_path, args.scribbles, args.scale)
    labels, seconds = _segment(args, image, scribbles, device, progress=not args.quiet)
    _write(args.out, args.overlay, image, labels)
    print(f"mask: {args.out}")
    if args.overlay is not None:
        print(f"overlay: {args.overlay}")
    print(_summary(image, labels, args, seconds))
    return 0


@dataclass(frozen=True)
class _Job:
    """One image of a batch: where its scribbles are and where its outputs go."""

    image: Path
    scribbles: Path
    mask: Path
    overlay: Path | None

    @property
    def outputs(self) -> list[Path]:
        return [self.mask] + ([self.overlay] if self.overlay is not None else [])


def _scribbles_for(image: Path, folder: Path) -> Path:
    """``folder/NAME.png`` or ``folder/NAME.txt`` for ``image`` ``NAME.*`` (exactly one)."""
    from rloss._io import resolve_path

    found = [c for c in (folder / f"{image.stem}{s}" for s in BATCH_SCRIBBLE_SUFFIXES)
             if c.is_file()]
    if len(found) > 1:
        raise CLIError(f"--scribbles {folder}: both {found[0].name} and {found[1].name} are "
                       f"there for {image}; keep one")
    if not found:
        names = " or ".join(f"{image.stem}{s}" for s in BATCH_SCRIBBLE_SUFFIXES)
        raise CLIError(f"--scribbles {folder}: no {names} for the image {image}")
    if resolve_path(found[0]) == resolve_path(image):
        raise CLIError(f"--scribbles {folder}: {found[0]} is the image itself; keep the "
                       "scribbles in a folder of their own")
    check_scribble_path(found[0])
    return found[0]


def _batch_folder(path: Path, what: str, suffixes: tuple[str, ...], scribbles: Path) -> None:
    if path.suffix.lower() in suffixes and not path.is_dir():
        raise CLIError(f"{what} {path}: --scribbles {scribbles} is a folder (batch mode), so "
                       f"{what} names a folder for the outputs; got a file name")


def _batch_jobs(args: argparse.Namespace) -> list[_Job]:
    """Every image's job, checked before any work (inputs paired, outputs safe)."""
    _batch_folder(args.out, "--out", MASK_SUFFIXES, args.scribbles)
    if args.overlay is not None:
        _batch_folder(args.overlay, "--overlay", OVERLAY_SUFFIXES, args.scribbles)
    files = image_files(args.images)
    jobs = [
        _Job(
            image=f,
            scribbles=_scribbles_for(f, args.scribbles),
            mask=args.out / f"{f.stem}.png",
            overlay=None if args.overlay is None else args.overlay / f"{f.stem}_overlay.png",
        )
        for f in files
    ]
    from rloss._io import resolve_path

    owner: dict[Path, _Job] = {}
    for job in jobs:
        for out in job.outputs:
            other = owner.setdefault(resolve_path(out), job)
            if other is job:
                continue
            if other.image.stem == job.image.stem:
                raise CLIError(f"{other.image} and {job.image}: two images named "
                               f"{job.image.stem!r}; their masks would be the same file "
                               "(rename one)")
            raise CLIError(f"{other.image} and {job.image}: both would write {out} (a mask "
                           "and an overlay in one folder); rename one image or give "
                           "--overlay another folder")
    inputs = [*args.images, *files, args.scribbles, *(j.scribbles for j in jobs)]
    check_output_dir(args.out, inputs=inputs, outputs=[j.mask for j in jobs], what="--out")
    if args.overlay is not None:
        check_output_dir(args.overlay, inputs=inputs, outputs=[j.overlay for j in jobs],
                         what="--overlay")
    return jobs


def _cmd_segment_batch(args: argparse.Namespace) -> int:
    planned = _batch_jobs(args)
    if args.skip_existing:
        jobs = [j for j in planned if not all(p.exists() for p in j.outputs)]
    else:
        jobs = planned
        existing = [p for j in jobs for p in j.outputs if p.exists()]
        if existing and not args.overwrite:
            raise CLIError(f"--out {args.out}: {len(existing)} output(s) exist, e.g. "
                           f"{existing[0]}; pass --overwrite to replace them or "
                           "--skip-existing to leave their images out")
    device = check_device(args.device)
    for folder in {args.out, args.overlay} - {None}:
        folder.mkdir(parents=True, exist_ok=True)
    argv = list(getattr(args, "argv", None) or [])
    if argv and "--skip-existing" not in argv and "--overwrite" not in argv:
        set_resume_hint(args, "rloss " + shlex.join([*argv, "--skip-existing"]))
    from tqdm.auto import tqdm

    skipped = len(planned) - len(jobs)
    failed: list[Path] = []
    written = 0
    bar = tqdm(jobs, desc="segment", unit="image", disable=args.quiet or not jobs)
    for job in bar:
        try:
            image, scribbles = _read_pair(job.image, job.scribbles, args.scale)
            labels, seconds = _segment(args, image, scribbles, device, progress=False)
        except CLIError as err:
            failed.append(job.image)
            tqdm.write(f"rloss segment: {job.image}: {err}", file=sys.stderr)
            continue
        try:
            _write(job.mask, job.overlay, image, labels)
        except CLIError as err:
            # a write error (disk full, permissions) would hit every later image too: stop,
            # keep what was written and say how to go on
            bar.close()
            if args.skip_existing:
                hint = "run the same command again"
            elif getattr(args, "resume_hint", None):
                hint = f"resume with: {args.resume_hint}"
            else:  # --overwrite: the outputs not yet replaced are older ones
                hint = "run the images not yet done again"
            raise CLIError(f"{err}; stopped after {written} mask(s) written; once fixed, "
                           f"{hint}") from None
        written += 1
        tqdm.write(f"{job.image} -> {job.mask}: {_summary(image, labels, args, seconds)}")
    bar.close()
    print(f"wrote {written} mask(s) to {args.out}"
          + (f", {skipped} image(s) left out (outputs exist)" if skipped else ""))
    if failed:
        print(f"rloss segment: {len(failed)} of {len(jobs)} image(s) failed (see above), "
              f"e.g. {failed[0]}", file=sys.stderr)
        return 1
    return 0
