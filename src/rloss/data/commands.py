"""``rloss data ...`` and ``rloss scribbles ...`` commands.

Registration only builds argparse parsers; the handlers import the data stack when run.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"want a number in (0, 1], got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` and ``scribbles`` command groups to the ``rloss`` parser."""
    # ---- rloss data ...
    data = subparsers.add_parser("data", help="prepare datasets (PASCAL VOC, demo data)",
                                 description="Prepare datasets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _help(data))

    voc = data_sub.add_parser(
        "voc",
        help="check (or download) PASCAL VOC 2012 + SBD masks + scribbles in the rloss layout",
        description="Check an rloss-layout PASCAL VOC 2012 tree and report exactly what is "
        "missing; with --download fetch the missing archives (resumable, checksums verified). "
        "Writes ImageSets/SegmentationAug/{train_aug,val}.txt when their sources are present.",
    )
    voc.add_argument("--root", required=True, help="dataset root folder")
    voc.add_argument("--download", action="store_true",
                     help="download missing archives (default: voc2012, "
                     "segmentation_class_aug, scribbles)")
    voc.add_argument("--sources", default=None,
                     help="comma-separated archives to download instead of the default; "
                     "known: voc2012, segmentation_class_aug, scribbles, sbd, scribblesup_xml")
    voc.add_argument("--keep-archives", action="store_true",
                     help="keep downloaded archives in ROOT/downloads")
    voc.add_argument("--no-progress", action="store_true", help="hide progress bars")
    voc.set_defaults(func=_cmd_voc)

    from rloss.data.acdc_cli import add_parser as add_acdc  # rloss data acdc

    add_acdc(data_sub)

    syn = data_sub.add_parser(
        "synthetic", help="generate the built-in demo dataset (no download)",
        description="Write the generated demo dataset (textured shapes, exact masks, "
        "synthesised scribbles) in the folder layout; same arguments, same files.")
    syn.add_argument("--out", required=True, help="output folder")
    syn.add_argument("--num-train", type=_positive_int, default=200)
    syn.add_argument("--num-val", type=int, default=50)
    syn.add_argument("--size", type=_positive_int, nargs=2, default=(128, 128),
                     metavar=("H", "W"))
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--fraction", type=_fraction, default=0.03,
                     help="scribble labelled-pixel fraction (default 0.03)")
    syn.add_argument("--overwrite", action="store_true",
                     help="replace a generated dataset made with other parameters")
    syn.add_argument("--no-progress", action="store_true", help="hide progress bars")
    syn.set_defaults(func=_cmd_synthetic)

    # ---- rloss scribbles ...
    scr = subparsers.add_parser("scribbles", help="convert or synthesise scribble annotations",
                                description="Convert or synthesise scribble annotations.")
    scr_sub = scr.add_subparsers(dest="scribbles_command", metavar="SUBCOMMAND")
    scr.set_defaults(func=lambda args: _help(scr))

    conv = scr_sub.add_parser(
        "convert",
        help="ScribbleSup XML / text polylines -> label PNGs (255 = unlabelled)",
        description="Rasterise ScribbleSup XML (or 'label,x1,y1,x2,y2,...' text) scribbles "
        "into PNG label maps: width-3 polylines, VOC class indices, 255 unlabelled. Bad files "
        "are reported and the rest converted; the exit status is 1 when any file failed.",
    )
    conv.add_argument("xml_dir", metavar="XML_DIR", help="folder of .xml / .txt scribble files")
    conv.add_argument("--images", metavar="IMG_DIR", default=None,
                      help="image folder (image sizes come from here; otherwise from XML <size>)")
    conv.add_argument("--out", metavar="OUT_DIR", required=True, help="output folder")
    conv.add_argument("--tag-policy", choices=("background", "ignore", "error"),
                      default="background",
                      help="tags outside the 20 VOC classes (PASCAL-Context names): map to "
                      "background (default), drop the stroke, or fail the file")
    conv.add_argument("--size-mismatch", choices=("error", "warn"), default="error",
                      help="XML <size> differs from the image: fail the file (default) or warn "
                      "and use the image size")
    conv.add_argument("--width", type=_positive_int, default=3, help="brush width (default 3)")
    conv.add_argument("--workers", type=int, default=None,
                      help="worker processes (default: up to 8 CPUs; 1 = in-process)")
    conv.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    conv.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    conv.set_defaults(func=_cmd_convert)

    syn2 = scr_sub.add_parser(
        "synth",
        help="synthesise scribbles (or clicks) from full masks",
        description="For every mask PNG, draw a stroke along the skeleton of each region, "
        "away from boundaries, reproducibly (seeded), to a target labelled fraction.",
    )
    syn2.add_argument("mask_dir", metavar="MASK_DIR", help="folder of mask PNGs (255 = void)")
    syn2.add_argument("--out", metavar="OUT_DIR", required=True, help="output folder")
    syn2.add_argument("--fraction", type=_fraction, default=0.03,
                      help="target labelled fraction of the non-void pixels (default 0.03)")
    syn2.add_argument("--seed", type=int, default=0)
    syn2.add_argument("--mode", choices=("scribble", "points"), default="scribble")
    syn2.add_argument("--width", type=_positive_int, default=3, help="brush width (default 3)")
    syn2.add_argument("--margin", type=float, default=4.0,
                      help="distance kept from region boundaries, pixels (default 4)")
    syn2.add_argument("--workers", type=int, default=None)
    syn2.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    syn2.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    syn2.set_defaults(func=_cmd_synth)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _cli_error(message: str) -> Exception:
    from rloss.cli import CLIError

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
    try:
        report = prepare_voc(args.root, download=download, progress=not args.no_progress,
                             keep_archives=args.keep_archives)
    except (DownloadError, DataError, FileExistsError) as err:
        raise _cli_error(str(err)) from err
    print(report.format())
    return 0 if report.ok else 1


def _cmd_synthetic(args: argparse.Namespace) -> int:
    from rloss.data.synthetic import generate_synthetic

    if args.num_val < 0:
        raise _cli_error(f"--num-val: want >= 0, got {args.num_val}")
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
        print(f"{len(summary.failed)} {what} failed (listed above); the others were written",
              file=sys.stderr)
        return 1
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from rloss.data.io import DataError
    from rloss.data.scribbles import convert_directory

    try:
        summary = convert_directory(
            args.xml_dir, args.out, images_dir=args.images, tag_policy=args.tag_policy,
            size_mismatch=args.size_mismatch, overwrite=args.overwrite, workers=args.workers,
            width=args.width, progress=not args.no_progress)
    except DataError as err:
        raise _cli_error(str(err)) from err
    if not summary.results:
        raise _cli_error(f"{args.xml_dir}: no .xml or .txt scribble files found")
    return _report(summary, "files")


def _cmd_synth(args: argparse.Namespace) -> int:
    from rloss.data.io import DataError
    from rloss.data.synth import synthesize_directory

    try:
        summary = synthesize_directory(
            args.mask_dir, args.out, fraction=args.fraction, seed=args.seed, mode=args.mode,
            width=args.width, margin=args.margin, overwrite=args.overwrite,
            workers=args.workers, progress=not args.no_progress)
    except DataError as err:
        raise _cli_error(str(err)) from err
    if not summary.results:
        raise _cli_error(f"{args.mask_dir}: no .png masks found")
    return _report(summary, "masks")
