"""``rloss visualize-gradient`` and ``rloss visualize-segment``: figures for the README.

``visualize-gradient``: softmax maps and the DenseCRF loss gradient for one image.

Scores come either from a trained checkpoint (``--checkpoint``, loaded with
:func:`rloss.train.api.load_model`) or, without one, from
:func:`rloss.segment.segment_image` fitted to the image's scribbles with pCE only
(``--scribbles`` required): that shows where the DenseCRF loss would push a
prediction that ignores colour edges.

``visualize-segment``: ``rloss segment`` on the shipped photographs
(``src/rloss/examples``), pCE only and pCE + DenseCRF, one figure (rows = photographs;
columns = image + scribbles, the two masks as overlays with their contours).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rloss.commands._common import (
    CLIError,
    add_command,
    check_device,
    check_output_file,
    positive_float,
    positive_int,
)

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rloss visualize-gradient`` to the ``rloss`` command (argparse only; light)."""
    p = add_command(
        subparsers,
        "visualize-gradient",
        help="plot the softmax and the DenseCRF loss gradient for one image",
        description=(
            "For one image, plot the softmax map of each class and the gradient of the "
            "DenseCRF loss with respect to the scores (logits), with colour bars. Scores "
            "come from --checkpoint, or, without one, from a per-image pCE-only fit to "
            "--scribbles (rloss segment --no-crf)."
        ),
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="model.pt or *.ckpt of a run")
    p.add_argument("--image", type=Path, required=True, help="RGB image")
    p.add_argument(
        "--scribbles",
        type=Path,
        default=None,
        help="index PNG (255 unlabelled) or 'label,x1,y1,...' .txt; drawn on the figure, "
        "and required without --checkpoint",
    )
    p.add_argument("--out", type=Path, required=True, help="output figure (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--sigma-rgb", type=positive_float, default=15.0,
                   help="colour bandwidth of the DenseCRF kernel (0..255 units)")
    p.add_argument(
        "--sigma-xy",
        type=positive_float,
        default=None,
        help="spatial bandwidth in pixels (unset: 100 with a checkpoint, the reference; 40 "
        "for the per-image fit)",
    )
    p.add_argument("--scale-factor", type=positive_float, default=1.0,
                   help="resolution of the DenseCRF loss, in (0, 1]")
    p.add_argument("--normalize", action="store_true", help="normalised DenseCRF loss")
    p.add_argument("--steps", type=positive_int, default=100, help="steps of the per-image fit")
    p.add_argument(
        "--max-classes",
        type=positive_int,
        default=6,
        help="with more classes than this, plot only those present in the prediction",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    p.set_defaults(func=_cmd_visualize_gradient)
    _register_segment(subparsers)


#: The shipped photographs (``src/rloss/examples/<name>.png`` + ``<name>_scribbles.txt``).
EXAMPLES: tuple[str, ...] = ("astronaut", "chelsea", "coffee")


def _register_segment(subparsers: argparse._SubParsersAction) -> None:
    from rloss.segment import DEFAULTS

    p = add_command(
        subparsers,
        "visualize-segment",
        help="figure: rloss segment on the shipped photographs, pCE only vs pCE + DenseCRF",
        description=(
            "Run rloss segment (default settings) on the shipped example photographs twice, "
            "with --no-crf and with the DenseCRF loss, and write one figure: one row per "
            "photograph; columns: image + scribbles, pCE-only mask, pCE + DenseCRF mask "
            "(colours blended over the image, contours in white). Prints each run's time "
            "and how many pixels the two masks disagree on."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output figure (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--examples", nargs="+", choices=EXAMPLES, default=list(EXAMPLES),
                   help="which shipped photographs, in row order")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"],
                   help="optimisation steps of each run (as rloss segment --steps)")
    p.add_argument("--threads", type=positive_int, default=DEFAULTS["threads"],
                   help="torch CPU threads (as rloss segment --threads)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N)")
    p.add_argument("--compress", action="store_true",
                   help="write a 256-colour palette PNG (about 4x smaller; as in docs/img)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_visualize_segment)


def _cmd_visualize_segment(args: argparse.Namespace) -> int:
    import time
    from importlib import resources

    import numpy as np

    from rloss.data.io import read_image
    from rloss.segment import read_scribbles, segment_image
    from rloss.viz import plot_segment_figure

    check_output_file(args.out, inputs=[], overwrite=args.overwrite, suffixes=(".png",))
    device = check_device(args.device)
    folder = Path(str(resources.files("rloss") / "examples"))
    rows = []
    for name in args.examples:
        image = read_image(folder / f"{name}.png")
        scribbles = read_scribbles(folder / f"{name}_scribbles.txt", image.shape[:2])
        row = {"name": name, "image": image, "scribbles": scribbles}
        for key, weight in (("pce", 0.0), ("crf", None)):
            start = time.perf_counter()
            kwargs = {} if weight is None else {"crf_weight": weight}
            row[key] = segment_image(
                image, scribbles, steps=args.steps, device=device, threads=args.threads,
                progress=not args.quiet, **kwargs,
            )
            row[f"{key}_s"] = time.perf_counter() - start
        differ = float(np.mean(row["pce"] != row["crf"]))
        print(
            f"{name}: {image.shape[1]}x{image.shape[0]} px, pCE only {row['pce_s']:.1f} s, "
            f"pCE + DenseCRF {row['crf_s']:.1f} s, masks differ on {100 * differ:.1f}% of "
            "the pixels"
        )
        rows.append(row)
    title = "rloss segment: pCE only vs pCE + DenseCRF (shipped photographs)"
    plot_segment_figure(rows, args.out, title=title)
    if args.compress:  # re-written in place, atomically: the file is whole at every moment
        import io

        from PIL import Image

        from rloss._io import atomic_write_bytes

        with Image.open(args.out) as im:
            small = im.convert("RGB").quantize(256, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=True)
        atomic_write_bytes(args.out, buf.getvalue())
    print(f"figure: {args.out}")
    return 0


def _cmd_visualize_gradient(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from rloss.commands.segment import check_scribble_path
    from rloss.data.io import DataError, read_image
    from rloss.segment import read_scribbles, segment_image
    from rloss.viz import densecrf_gradient_maps, plot_gradient_figure

    if args.checkpoint is None and args.scribbles is None:
        raise CLIError("give --checkpoint, or --scribbles to fit scores to the image")
    if not 0.0 < args.scale_factor <= 1.0:
        raise CLIError(f"--scale-factor {args.scale_factor:g}: want a number in (0, 1]")
    check_output_file(
        args.out,
        inputs=[args.image, args.scribbles, args.checkpoint],
        overwrite=args.overwrite,
        suffixes=(".png",),
    )
    if args.scribbles is not None:
        check_scribble_path(args.scribbles)
    if args.checkpoint is not None and args.checkpoint.is_dir():
        raise CLIError(f"--checkpoint {args.checkpoint}: is a folder, want a checkpoint file "
                       "(RUN/model.pt or RUN/checkpoints/*.ckpt)")
    device = check_device(args.device)
    try:
        image = read_image(args.image)
        scribbles = (
            read_scribbles(args.scribbles, image.shape[:2]) if args.scribbles is not None else None
        )
    except (DataError, ValueError) as err:
        raise CLIError(str(err)) from None
    image_t = torch.from_numpy(image).permute(2, 0, 1).float()
    class_labels = None
    if args.checkpoint is not None:
        from rloss.train.api import load_model, normalize_image

        if not args.checkpoint.is_file():
            raise CLIError(f"--checkpoint {args.checkpoint}: file not found")
        try:
            model, config = load_model(args.checkpoint, map_location=device)
        except (ValueError, RuntimeError, KeyError, OSError) as err:
            raise CLIError(f"--checkpoint {args.checkpoint}: {err}") from None
        with torch.no_grad():
            logits = model(normalize_image(image_t.unsqueeze(0).to(device)))[0].float().cpu()
        names = list(config.get("classes") or [])
        sigma_xy = 100.0 if args.sigma_xy is None else args.sigma_xy
    else:
        assert scribbles is not None
        try:
            _, probs, values = segment_image(
                image,
                scribbles,
                crf_weight=0.0,
                steps=args.steps,
                device=device,
                return_probs=True,
            )
        except ValueError as err:
            raise CLIError(str(err)) from None
        if probs.shape[0] < 2:
            raise CLIError("the scribbles hold a single class; need at least two")
        logits = torch.log(probs.clamp_min(1e-6))
        class_labels = values
        names = [f"label {v}" for v in values]
        sigma_xy = 40.0 if args.sigma_xy is None else args.sigma_xy
    try:
        maps = densecrf_gradient_maps(
            image_t,
            logits,
            sigma_rgb=args.sigma_rgb,
            sigma_xy=sigma_xy,
            scale_factor=args.scale_factor,
            normalize=args.normalize,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    if len(names) != logits.shape[0]:
        names = [f"class {i}" for i in range(logits.shape[0])]
    if scribbles is not None and class_labels is None:
        scribbles = np.where(scribbles < logits.shape[0], scribbles, 255)
    present = torch.unique(maps["prediction"]).tolist()
    channels = present[: args.max_classes] if logits.shape[0] > args.max_classes else None
    plot_gradient_figure(
        image,
        maps,
        args.out,
        channels=channels,
        class_names=names,
        class_labels=class_labels,
        scribbles=scribbles,
        title=f"DenseCRF loss gradient (sigma_rgb={args.sigma_rgb:g}, sigma_xy={sigma_xy:g})",
    )
    print(f"figure: {args.out}")
    return 0
