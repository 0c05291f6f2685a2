"""``rloss train``, ``rloss eval`` and ``rloss predict``.

Registration is light (argparse only); handlers import Lightning/smp lazily. Outputs are
checked before the model is loaded (:mod:`rloss._io`): ``eval --out`` is never the
checkpoint or another input and replaces an existing file only with ``--overwrite``;
``predict --out`` is never an input folder and no prediction replaces an input image.
Ctrl-C during ``rloss train`` exits with status 130 and prints the command that resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rloss.commands._common import (
    CLIError,
    add_command,
    check_device,
    check_output_dir,
    check_output_file,
    image_files,
    one_line,
    set_resume_hint,
)

__all__ = ["register"]


def _scales(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive scales, got {text!r}")
    return values


class _TrainParser(argparse.ArgumentParser):
    """Accepts ``KEY=VALUE`` overrides anywhere on the line, also after options."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = super().parse_known_args(args, namespace)
        rest = []
        for item in extras:
            if "=" in item and not item.startswith("-"):
                ns.overrides = [*(ns.overrides or []), item]
            else:
                rest.append(item)
        return ns, rest


def register(subparsers: Any) -> None:
    """Add the ``train``, ``eval`` and ``predict`` subcommands."""
    p = add_command(
        subparsers,
        "train",
        help="train a recipe (YAML) with Lightning",
        description=(
            "Train a recipe. Any key can be overridden: --set optim.lr=0.01 or trailing "
            "key=value arguments (YAML-typed values). Scale out with --devices N "
            "--strategy ddp, or under torchrun/SLURM (see docs/training.md)."
        ),
    )
    p.__class__ = _TrainParser
    p.add_argument(
        "config", help="recipe YAML, e.g. configs/voc_scribble/deeplabv3plus_mobilenet_pce.yaml"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. data.root=/data/voc",
    )
    p.add_argument("--run-dir", help="run folder (unset: runs/<recipe name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from last.ckpt"
    )
    p.add_argument("--devices", help="devices per node (int, list or 'auto'); sets trainer.devices")
    p.add_argument("--num-nodes", type=int, help="number of nodes; sets trainer.num_nodes")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp; sets trainer.strategy")
    p.add_argument("--accelerator", help="cpu, gpu, auto...; sets trainer.accelerator")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_train, overrides=[])

    p = add_command(
        subparsers,
        "eval",
        help="mIoU and per-class IoU of a checkpoint on full-resolution val images",
        description="Evaluate a checkpoint on full-resolution validation images and write the "
        "metrics as JSON. --out is never the checkpoint or another input; an existing --out "
        "is replaced only with --overwrite (the default eval_metrics.json next to the "
        "checkpoint is the command's own file and is replaced).",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt or RUN/checkpoints/*.ckpt")
    p.add_argument("--data", help="data root to evaluate on (unset: the recipe's)")
    p.add_argument(
        "--kind",
        choices=("voc_scribble", "folder", "synthetic", "acdc"),
        help="data kind of --data (acdc: per-volume 3-D Dice and HD95 on the WSL4MIS volumes)",
    )
    p.add_argument("--split", help="val split name (unset: the recipe's data.val_split)")
    p.add_argument("--scales", type=_scales, default=[1.0], help="test scales, e.g. 1,0.75,1.25")
    p.add_argument(
        "--flip", action="store_true", help="also average horizontally flipped predictions"
    )
    p.add_argument(
        "--crf",
        nargs="?",
        const=True,
        default=None,
        choices=("2d", "3d"),
        help="mean-field CRF refinement (rloss.meanfield); acdc: '2d' slice by slice "
        "(the default of a bare --crf) or '3d' over the whole volume",
    )
    p.add_argument(
        "--crf-param",
        dest="crf_params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="acdc: a mean-field parameter (rloss.train.volume_eval.ACDC_CRF: sigma_xy, "
        "sigma_rgb, appearance_weight, smoothness_sigma, smoothness_weight, num_iterations, "
        "slice_spacing), repeatable",
    )
    p.add_argument(
        "--out", help="metrics JSON (unset: eval_metrics.json next to the checkpoint)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="acdc: keep each class's largest 3-D connected component",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1... (unset: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_eval)

    p = add_command(
        subparsers,
        "predict",
        help="segment images into VOC-palette PNGs",
        description="Segment images into OUT/<name>.png (VOC palette) and "
        "OUT/<name>_overlay.png. OUT may not be an input folder and no output may replace an "
        "input image; existing outputs are replaced only with --overwrite.",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt or RUN/checkpoints/*.ckpt")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder (not an input folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (never an input)")
    p.add_argument("--scales", type=_scales, default=[1.0], help="test scales, e.g. 1,0.75,1.25")
    p.add_argument("--flip", action="store_true",
                   help="also average horizontally flipped predictions")
    p.add_argument("--crf", action="store_true", help="mean-field CRF refinement (rloss.meanfield)")
    p.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (unset: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_predict)


def _cli_error(err: Exception) -> Exception:
    return CLIError(one_line(err))


def _checkpoint(path: str) -> Path:
    """``--checkpoint`` names an existing file (before anything heavy is imported)."""
    p = Path(path).expanduser()
    if p.is_dir():
        hint = ""
        if (p / "model.pt").is_file():
            hint = f"; did you mean {p / 'model.pt'}?"
        elif (p / "checkpoints").is_dir():
            hint = f"; give a file such as {p / 'checkpoints' / 'last.ckpt'}"
        raise CLIError(f"--checkpoint {path}: is a folder, want a checkpoint file "
                       f"(RUN/model.pt or RUN/checkpoints/*.ckpt){hint}")
    if not p.is_file():
        raise CLIError(f"--checkpoint {path}: file not found")
    return p


@contextlib.contextmanager
def _sigint_seen() -> Iterator[list[bool]]:
    """Record a Ctrl-C (SIGINT) during the block; Lightning turns it into ``exit(1)``."""
    seen = [False]
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (
        signal.SIG_IGN,
        None,
    ):
        yield seen
        return

    def handler(signum, frame):
        seen[0] = True
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    argv = list(getattr(args, "argv", None) or ["train", args.config])
    if not args.run_dir:
        argv += ["--run-dir", str(run_dir)]
    if "--resume" not in argv:
        argv.append("--resume")
    return "rloss " + shlex.join(argv)


def _cmd_train(args: argparse.Namespace) -> int:
    from rloss.train.config import ConfigError, load_config

    overrides = [*args.overrides, *args.sets]
    for flag, key in (
        ("devices", "trainer.devices"),
        ("strategy", "trainer.strategy"),
        ("accelerator", "trainer.accelerator"),
        ("num_nodes", "trainer.num_nodes"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        raise _cli_error(err) from err
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    if run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"--run-dir {run_dir}: is a file; want a folder")
    check_output_dir(run_dir, inputs=[args.config], what="--run-dir")
    from rloss.data.io import DataError
    from rloss.train.api import train
    from rloss.train.models import WeightsUnavailableError

    set_resume_hint(args, _resume_command(args, run_dir))
    try:
        with _sigint_seen() as interrupted:
            result = train(
                cfg, run_dir=run_dir, progress=not args.no_progress, resume=args.resume
            )
    except (FileExistsError, WeightsUnavailableError, ConfigError, DataError) as err:
        raise _cli_error(err) from err
    except SystemExit as err:
        if interrupted[0]:  # Lightning's graceful shutdown after Ctrl-C ends in exit(1)
            raise KeyboardInterrupt from err
        raise
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        from rloss.train.api import format_iou_table

        if result.metrics.get("per_class_iou"):
            print(format_iou_table(result.metrics))
        print(
            f"run folder: {run_dir}  (checkpoint {result.checkpoint}, weights {result.model_file})"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    checkpoint = _checkpoint(args.checkpoint)
    data: dict[str, Any] = {}
    if args.data:
        data["root"] = args.data
        data_root = Path(args.data).expanduser()
        if data_root.exists() and not data_root.is_dir():
            raise CLIError(f"--data {args.data}: is a file; want the dataset folder")
        if not data_root.is_dir():
            raise CLIError(f"--data {args.data}: folder not found")
    if args.kind:
        data["kind"] = args.kind
    if args.split:
        data["val_split"] = args.split
    default_out = checkpoint.resolve().parent / "eval_metrics.json"
    out = Path(args.out) if args.out else default_out
    check_output_file(
        out,
        inputs=[checkpoint, args.data],
        overwrite=args.overwrite or not args.out,
        suffixes=(".json",),
    )
    device = check_device(args.device)
    from rloss.data.io import DataError

    if args.kind != "acdc" and (args.crf == "3d" or args.crf_params):
        raise CLIError("--crf 3d and --crf-param apply to --kind acdc (volumes) only")
    if args.kind == "acdc":  # per-volume 3-D Dice / HD95 (rloss.train.volume_eval)
        from rloss.train.volume_eval import evaluate_checkpoint, format_table

        crf = None if args.crf is None else ("2d" if args.crf is True else args.crf)
        crf_params = _crf_params(args.crf_params)
        if crf_params and crf is None:
            raise CLIError("--crf-param needs --crf 2d or --crf 3d")

        try:
            metrics = evaluate_checkpoint(
                str(checkpoint),
                args.data,
                split=args.split or "val",
                out=out,
                overwrite=True,  # checked above
                device=device,
                progress=not args.no_progress,
                largest=args.largest_component,
                crf=crf,
                crf_params=crf_params,
            )
        except (FileNotFoundError, ValueError, RuntimeError, DataError) as err:
            raise _cli_error(err) from err
        print(format_table(metrics))
        print(f"metrics written to {out}")
        return 0
    from rloss.train.api import evaluate, format_iou_table

    try:
        metrics = evaluate(
            str(checkpoint),
            data or None,
            scales=args.scales,
            flip=args.flip,
            crf=True if args.crf else None,
            device=device,
            out=out,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, RuntimeError, DataError) as err:
        raise _cli_error(err) from err
    print(format_iou_table(metrics))
    print(f"metrics written to {out}")
    return 0


def _crf_params(items: list[str]) -> dict[str, float]:
    """``--crf-param KEY=VALUE`` items as numbers, keys checked against ``ACDC_CRF``."""
    from rloss.train.volume_eval import ACDC_CRF

    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ACDC_CRF:
            raise CLIError(
                f"--crf-param {item!r}: want KEY=VALUE with KEY one of {sorted(ACDC_CRF)}"
            )
        try:
            number = float(value)
        except ValueError:
            raise CLIError(f"--crf-param {item!r}: {value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise CLIError(f"--crf-param {item!r}: want a finite number >= 0")
        out[key] = number
    return out


def _predict_inputs(items: list[str]) -> list[Path]:
    """The image files ``predict`` will read (folders expanded), each checked up front."""
    from rloss._io import InputTooLargeError, check_image_size

    files = image_files(items)
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                check_image_size(im.width, im.height, f)
                mode = im.mode
        except InputTooLargeError as err:
            raise CLIError(str(err)) from None
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise CLIError(f"{f}: not a readable image ({err})") from None
        if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise CLIError(f"{f}: a {mode!r} (16/32-bit or float) image; predict reads 8-bit "
                           "images: convert it to 8 bits first")
    return files


def _cmd_predict(args: argparse.Namespace) -> int:
    checkpoint = _checkpoint(args.checkpoint)
    files = _predict_inputs(args.images)
    out_dir = Path(args.out)
    planned = [out_dir / f"{f.stem}.png" for f in files]
    if not args.no_overlay:
        planned += [out_dir / f"{f.stem}_overlay.png" for f in files]
    check_output_dir(out_dir, inputs=[checkpoint, *args.images, *files], outputs=planned)
    existing = [p for p in planned if p.exists()]
    if existing and not args.overwrite:
        raise CLIError(f"--out {args.out}: {len(existing)} output(s) exist, e.g. "
                       f"{existing[0]}; pass --overwrite to replace them")
    device = check_device(args.device)
    from rloss.train.api import predict

    try:
        written = predict(
            str(checkpoint),
            [str(f) for f in files],
            args.out,
            scales=args.scales,
            flip=args.flip,
            crf=True if args.crf else None,
            overlay=not args.no_overlay,
            device=device,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise _cli_error(err) from err
    print(f"wrote {len(written)} label PNGs to {args.out}")
    return 0
