"""``rloss data ...`` and ``rloss scribbles ...`` commands.

Registration only builds argparse parsers; the handlers import the data stack when run.
Output folders are checked before any work (:func:`rloss._io.check_output_dir`): never an
input folder, and no output replaces an input, not even with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys

from rloss.commands._common import (
    CLIError,
    add_command,
    check_output_dir,
    fraction,
    non_negative_int,
    positive_int,
    set_resume_hint,
    user_errors,
)

__all__ = ["register"]

_positive_int = positive_int
_fraction = fraction


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` and ``scribbles`` command groups to the ``rloss`` parser."""
    # ---- rloss data ...
    data = add_command(subparsers, "data", help="prepare datasets (PASCAL VOC, demo data)",
                                 description="Prepare datasets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _help(data))

    voc = add_command(data_sub,
        "voc",
        help="check (or download) PASCAL VOC 2012 + SBD masks + scribbles in the rloss layout",
        description="Check an rloss-layout PASCAL VOC 2012 tree and report exactly what is "
        "missing; with --download fetch the missing archives (resumable, checksums verified). "
        "Writes ImageSets/SegmentationAug/{train_aug,val}.txt when their sources are present.",
    )
    voc.add_argument("--root", required=True, help="dataset root folder")
    voc.add_argument("--download", action="store_true",
                     help="download missing archives (voc2012, segmentation_class_aug and "
                     "scribbles unless --sources says otherwise)")
    voc.add_argument("--sources", default=None,
                     help="comma-separated archives to download instead of the default; "
                     "known: voc2012, segmentation_class_aug, scribbles, sbd, scribblesup_xml")
    voc.add_argument("--keep-archives", action="store_true",
                     help="keep downloaded archives in ROOT/downloads")
    voc.add_argument("--no-progress", action="store_true", help="hide progress bars")
    voc.set_defaults(func=_cmd_voc)

    from rloss.commands.acdc import add_parser as add_acdc  # rloss data acdc

    add_acdc(data_sub)

    syn = add_command(data_sub,
        "synthetic", help="generate the built-in demo dataset (no download)",
        description="Write the generated demo dataset (textured shapes, exact masks, "
        "synthesised scribbles) in the folder layout; same arguments, same files.")
    syn.add_argument("--out", required=True, help="output folder")
    syn.add_argument("--num-train", type=_positive_int, default=200, help="training images")
    syn.add_argument("--num-val", type=non_negative_int, default=50, help="validation images")
    syn.add_argument("--size", type=_positive_int, nargs=2, default=(128, 128),
                     metavar=("H", "W"), help="image size")
    syn.add_argument("--seed", type=int, default=0, help="seed of the scenes and scribbles")
    syn.add_argument("--fraction", type=_fraction, default=0.03,
                     help="scribble labelled-pixel fraction")
    syn.add_argument("--overwrite", action="store_true",
                     help="replace a generated dataset made with other parameters")
    syn.add_argument("--no-progress", action="store_true", help="hide progress bars")
    syn.set_defaults(func=_cmd_synthetic)

    # ---- rloss scribbles ...
    scr = add_command(subparsers, "scribbles", help="convert or synthesise scribble annotations",
                                description="Convert or synthesise scribble annotations.")
    scr_sub = scr.add_subparsers(dest="scribbles_command", metavar="SUBCOMMAND")
    scr.set_defaults(func=lambda args: _help(scr))

    conv = add_command(scr_sub,
        "convert",
        help="ScribbleSup XML / text polylines -> label PNGs (255 = unlabelled)",
        description="Rasterise ScribbleSup XML (or 'label,x1,y1,x2,y2,...' text) scribbles "
        "into PNG label maps OUT_DIR/<id>.png: width-3 polylines, VOC class indices, 255 "
        "unlabelled. The id is the file name without a _scribble/_scribbles suffix "
        "(2007_000032_scribble.txt -> 2007_000032.png). Bad files are reported and the rest "
        "converted; the exit status is 1 when any file failed. OUT_DIR may not be an input "
        "folder; existing outputs are skipped unless --overwrite.",
    )
    conv.add_argument("xml_dir", metavar="XML_DIR", help="folder of .xml / .txt scribble files")
    conv.add_argument("--images", metavar="IMG_DIR", default=None,
                      help="image folder (image sizes come from here; otherwise from XML <size>)")
    conv.add_argument("--out", metavar="OUT_DIR", required=True, help="output folder")
    conv.add_argument("--tag-policy", choices=("background", "ignore", "error"),
                      default="background",
                      help="tags outside the 20 VOC classes (PASCAL-Context names): map to "
                      "background, drop the stroke, or fail the file")
    conv.add_argument("--size-mismatch", choices=("error", "warn"), default="error",
                      help="XML <size> differs from the image: fail the file or warn "
                      "and use the image size")
    conv.add_argument("--width", type=_positive_int, default=3, help="brush width in pixels")
    conv.add_argument("--workers", type=non_negative_int, default=None,
                      help="worker processes (unset: up to 8 CPUs; 0 or 1 = in-process)")
    conv.add_argument("--overwrite", action="store_true",
                      help="rewrite existing outputs (never an input)")
    conv.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    conv.set_defaults(func=_cmd_convert)

    syn2 = add_command(scr_sub,
        "synth",
        help="synthesise scribbles (or clicks) from full masks",
        description="For every mask PNG, draw a stroke along the skeleton of each region, "
        "away from boundaries, reproducibly (seeded), to a target labelled fraction. OUT_DIR "
        "may not be MASK_DIR; existing outputs are skipped unless --overwrite.",
    )
    syn2.add_argument("mask_dir", metavar="MASK_DIR", help="folder of mask PNGs (255 = void)")
    syn2.add_argument("--out", metavar="OUT_DIR", required=True, help="output folder")
    syn2.add_argument("--fraction", type=_fraction, default=0.03,
                      help="target labelled fraction of the non-void pixels")
    syn2.add_argument("--seed", type=int, default=0, help="random seed")
    syn2.add_argument("--mode", choices=("scribble", "points"), default="scribble",
                      help="strokes along the skeleton, or clicks")
    syn2.add_argument("--width", type=_positive_int, default=3, help="brush width in pixels")
    syn2.add_argument("--margin", type=float, default=4.0,
                      help="distance kept from region boundaries, pixels")
    syn2.add_argument("--workers", type=non_negative_int, default=None,
                      help="worker processes (unset: up to 8 CPUs; 0 or 1 = in-process)")
    syn2.add_argument("--overwrite", action="store_true",
                      help="rewrite existing outputs (never an input mask)")
    syn2.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    syn2.set_defaults(func=_cmd_synth)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _cli_error(message: str) -> Exception:
    return CLIError(message)


def _cmd_voc(args: argparse.Namespace) -> int:
    from rloss.data.download import DownloadError
    from rloss.data.io import DataError
    from rloss.data.voc import VOC_SOURCES, prepare_voc

    download: bool | list[str] = bool(args.download)
    if args.sources:
        download = [s.strip() for s in args.sources.split(",") if s.strip()]
        unknown = [s for s in download if s not in VOC_SOURCES]
        if unknown:
            raise _cli_error(f"--sources: unknown {unknown}; known: {sorted(VOC_SOURCES)}")
    from pathlib import Path

    root = Path(args.root).expanduser()
    if root.exists() and not root.is_dir():
        raise _cli_error(f"--root {args.root}: is a file; want the dataset folder")
    if download:
        check_output_dir(root, what="--root")
    with user_errors(DownloadError, DataError, FileExistsError):
        report = prepare_voc(args.root, download=download, progress=not args.no_progress,
                             keep_archives=args.keep_archives)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from rloss.data.demo_scenes import generate_synthetic

    check_output_dir(args.out)
    try:
        root = generate_synthetic(args.out, num_train=args.num_train, num_val=args.num_val,
                                  size=tuple(args.size), seed=args.seed,
                                  scribble_fraction=args.fraction, overwrite=args.overwrite,
                                  progress=not args.no_progress)
    except (FileExistsError, ValueError) as err:
        raise _cli_error(str(err)) from err
    print(f"synthetic dataset ready at {root} ({args.num_train} train, {args.num_val} val)")
    return 0


def _report(summary, what: str) -> int:
    text = summary.format()
    print(text, file=sys.stderr if not summary.ok else sys.stdout)
    if not summary.ok:
        failed, written = len(summary.failed), summary.count("converted")
        skipped = summary.count("skipped")
        if written == 0 and skipped == 0:
            rest = "nothing was written"
        else:
            rest = f"{written} written" + (f", {skipped} skipped (output exists)"
                                           if skipped else "")
        print(f"{failed} of {len(summary.results)} {what} failed (listed above); {rest}",
              file=sys.stderr)
        return 1
    return 0


def _resume_by_rerun(args: argparse.Namespace) -> None:
    """Without --overwrite existing outputs are skipped, so the same command resumes."""
    if not args.overwrite:
        import shlex

        set_resume_hint(args, "rloss " + shlex.join(list(getattr(args, "argv", None) or [])))


def _cmd_convert(args: argparse.Namespace) -> int:
    from rloss.data.io import DataError
    from rloss.data.scribbles import convert_directory

    _resume_by_rerun(args)
    with user_errors(DataError):
        summary = convert_directory(
            args.xml_dir, args.out, images_dir=args.images, tag_policy=args.tag_policy,
            size_mismatch=args.size_mismatch, overwrite=args.overwrite, workers=args.workers,
            width=args.width, progress=not args.no_progress)
    if not summary.results:
        raise _cli_error(f"{args.xml_dir}: no .xml or .txt scribble files found")
    return _report(summary, "files")


def _cmd_synth(args: argparse.Namespace) -> int:
    from rloss.data.io import DataError
    from rloss.data.scribble_synthesis import synthesize_directory

    _resume_by_rerun(args)
    with user_errors(DataError):
        summary = synthesize_directory(
            args.mask_dir, args.out, fraction=args.fraction, seed=args.seed, mode=args.mode,
            width=args.width, margin=args.margin, overwrite=args.overwrite,
            workers=args.workers, progress=not args.no_progress)
    if not summary.results:
        raise _cli_error(f"{args.mask_dir}: no .png masks found")
    return _report(summary, "masks")
