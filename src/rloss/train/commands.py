"""``rloss train``, ``rloss eval`` and ``rloss predict``.

Registration is light (argparse only); handlers import Lightning/smp lazily.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
    p = subparsers.add_parser(
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
    p.add_argument("--run-dir", help="run folder (default runs/<recipe name>)")
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
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "eval",
        help="mIoU and per-class IoU of a checkpoint on full-resolution val images",
    )
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt or RUN/checkpoints/*.ckpt")
    p.add_argument("--data", help="data root to evaluate on (default: the recipe's)")
    p.add_argument(
        "--kind", choices=("voc_scribble", "folder", "synthetic", "acdc"),
        help="data kind of --data (acdc: per-volume 3-D Dice/HD95, rloss.train.volume_eval)",
    )
    p.add_argument("--split", help="val split name (default: the recipe's data.val_split)")
    p.add_argument("--scales", type=_scales, default=[1.0], help="test scales, e.g. 1,0.75,1.25")
    p.add_argument(
        "--flip", action="store_true", help="also average horizontally flipped predictions"
    )
    p.add_argument("--crf", action="store_true", help="DenseCRF post-processing (rloss.crf)")
    p.add_argument(
        "--out", help="metrics JSON (default: next to the checkpoint, eval_metrics.json)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (acdc)")
    p.add_argument("--largest-component", action="store_true",
                   help="acdc: keep each class's largest 3-D connected component")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser("predict", help="segment images into VOC-palette PNGs")
    p.add_argument("--checkpoint", required=True, help="RUN/model.pt or RUN/checkpoints/*.ckpt")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scales", type=_scales, default=[1.0])
    p.add_argument("--flip", action="store_true")
    p.add_argument("--crf", action="store_true")
    p.add_argument("--no-overlay", action="store_true", help="write only the label PNGs")
    p.add_argument("--device")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _cli_error(err: Exception) -> Exception:
    from rloss.cli import CLIError

    return CLIError(str(err))


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
    from rloss.train.api import train
    from rloss.train.models import WeightsUnavailableError

    try:
        result = train(cfg, run_dir=run_dir, progress=not args.no_progress, resume=args.resume)
    except (FileExistsError, WeightsUnavailableError, ConfigError) as err:
        raise _cli_error(err) from err
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
    if args.kind == "acdc":  # acdc dispatch: per-volume Dice/HD95
        from rloss.train.volume_eval import run_cli

        return run_cli(args)
    from rloss.train.api import evaluate, format_iou_table

    data: dict[str, Any] = {}
    if args.data:
        data["root"] = args.data
        if not Path(args.data).expanduser().is_dir():
            raise _cli_error(ValueError(f"--data: directory {args.data!r} does not exist"))
    if args.kind:
        data["kind"] = args.kind
    if args.split:
        data["val_split"] = args.split
    out = (
        Path(args.out)
        if args.out
        else Path(args.checkpoint).expanduser().resolve().parent / "eval_metrics.json"
    )
    try:
        metrics = evaluate(
            args.checkpoint,
            data or None,
            scales=args.scales,
            flip=args.flip,
            crf=True if args.crf else None,
            device=args.device,
            out=out,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise _cli_error(err) from err
    print(format_iou_table(metrics))
    print(f"metrics written to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from rloss.train.api import predict

    try:
        written = predict(
            args.checkpoint,
            args.images,
            args.out,
            scales=args.scales,
            flip=args.flip,
            crf=True if args.crf else None,
            overlay=not args.no_overlay,
            device=args.device,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise _cli_error(err) from err
    print(f"wrote {len(written)} label PNGs to {args.out}")
    return 0
