"""Quality and time of :func:`rloss.segment.segment_image` on real photographs.

Two sets of photographs:

* the three shipped examples (``src/rloss/examples``, hand-drawn scribbles, no ground
  truth), at their own size and resized to 500x375 (the VOC size; scribbles resized
  with nearest neighbour): masks are written to ``--out-dir`` and, with ``--ref-dir``,
  compared with the masks of an earlier run (pixel agreement);
* held out: ``../shared/data/msrc_partial`` (three MSRC-21 photographs with dense
  label maps, void = black; skipped when absent, never copied into the repo), at their
  own size and with the long side resized to 500: scribbles are synthesised from the
  label map (:func:`rloss.data.scribble_synthesis.synthesize_scribbles`, 3% of the
  pixels, ``--seeds``), and the mask is scored by IoU against the label map (void
  pixels ignored), per image and as the mean over classes and images (mIoU).

Usage::

    .venv/bin/python benchmarks/segment_quality.py --out-dir /tmp/segq/new
    .venv/bin/python benchmarks/segment_quality.py --out-dir /tmp/segq/old \\
        --set steps=200 scale=0.5 lr=0.01 schedule=constant max_pixels=0 tol=0
    .venv/bin/python benchmarks/segment_quality.py --out-dir /tmp/segq/new --ref-dir /tmp/segq/old

``--set KEY=VALUE`` passes keyword arguments to ``segment_image`` (numbers are parsed).
Prints one line per run (wall time of ``segment_image``) and writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = ("astronaut", "chelsea", "coffee")
MSRC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "msrc_partial"


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def _resize(img: np.ndarray, lab: np.ndarray, size: tuple[int, int]):
    """Image bicubic, labels nearest, to ``size`` = (W, H)."""
    big = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
    return big, np.asarray(Image.fromarray(lab).resize(size, Image.NEAREST))


def shipped_cases(sizes: list[str]):
    """(name, image, scribbles, ground truth None) for the shipped examples."""
    from rloss.data.io import read_image
    from rloss.segment import read_scribbles

    d = Path(str(resources.files("rloss") / "examples"))
    for name in EXAMPLES:
        img = read_image(d / f"{name}.png")
        scr = read_scribbles(d / f"{name}_scribbles.txt", img.shape[:2])
        if "native" in sizes:
            yield f"{name}", img, scr, None
        if "500" in sizes:
            big, s = _resize(img, scr, (500, 375))
            yield f"{name}500", big, s, None


def msrc_ground_truth(path: Path) -> np.ndarray:
    """MSRC colour label map -> (H, W) uint8 class indices (colours in sorted order), 255 void."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
    out = np.full(codes.shape, 255, np.uint8)
    for i, c in enumerate(sorted(int(c) for c in np.unique(codes) if c != 0)):
        out[codes == c] = i
    return out


def msrc_cases(sizes: list[str], seeds: list[int]):
    """(name, image, synthesised scribbles, ground truth) for the msrc_partial photographs."""
    from rloss.data.io import read_image
    from rloss.data.scribble_synthesis import synthesize_scribbles

    if not MSRC.is_dir():
        print(f"note: {MSRC} not found; skipping the held-out photographs", file=sys.stderr)
        return
    for i in (1, 2, 3):
        img = read_image(MSRC / f"im{i}.png")
        gt = msrc_ground_truth(MSRC / f"anno{i}.png")
        variants = []
        if "native" in sizes:
            variants.append((f"msrc{i}", img, gt))
        if "500" in sizes:
            h, w = gt.shape
            size = (500, round(500 * h / w)) if w >= h else (round(500 * w / h), 500)
            variants.append((f"msrc{i}_500", *_resize(img, gt, size)))
        for name, im, g in variants:
            for seed in seeds:
                scr = synthesize_scribbles(g, fraction=0.03, seed=seed)
                yield f"{name}_s{seed}", im, scr, g


def iou_per_class(pred: np.ndarray, gt: np.ndarray) -> dict[int, float]:
    valid = gt != 255
    out = {}
    for c in np.unique(gt[valid]):
        p, g = (pred == c) & valid, gt == c
        out[int(c)] = float((p & g).sum() / max(1, (p | g).sum()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--ref-dir", type=Path, default=None, help="masks of an earlier run")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sizes", nargs="+", default=["native", "500"], choices=["native", "500"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=["shipped", "msrc"], choices=["shipped", "msrc"])
    args = ap.parse_args(argv)

    from rloss.data.io import read_label, write_label
    from rloss.segment import segment_image

    kwargs = {}
    for item in args.set:
        key, _, val = item.partition("=")
        kwargs[key] = _value(val)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    if "shipped" in args.only:
        cases += list(shipped_cases(args.sizes))
    if "msrc" in args.only:
        cases += list(msrc_cases(args.sizes, args.seeds))
    rows = []
    for name, img, scr, gt in cases:
        start = time.perf_counter()
        labels = segment_image(img, scr, **kwargs)
        elapsed = time.perf_counter() - start
        mask_path = args.out_dir / f"{name}.png"
        write_label(mask_path, labels.astype(np.uint8))
        row = {"name": name, "size": f"{img.shape[1]}x{img.shape[0]}", "seconds": elapsed}
        if gt is not None:
            row["iou"] = iou_per_class(labels, gt)
            row["mean_iou"] = float(np.mean(list(row["iou"].values())))
        if args.ref_dir is not None and (args.ref_dir / f"{name}.png").is_file():
            ref = read_label(args.ref_dir / f"{name}.png")
            row["agreement"] = float((ref == labels).mean())
        rows.append(row)
        extra = " ".join(f"{k}={row[k]:.4f}" for k in ("mean_iou", "agreement") if k in row)
        print(f"{name:16s} {row['size']:8s} {elapsed:6.2f} s {extra}", flush=True)
    summary: dict = {"kwargs": kwargs, "rows": rows}
    for group, pred in (
        ("msrc_native", lambda r: "mean_iou" in r and "_500" not in r["name"]),
        ("msrc_500", lambda r: "mean_iou" in r and "_500" in r["name"]),
    ):
        sel = [r for r in rows if pred(r)]
        if sel:
            summary[f"{group}_miou"] = float(np.mean([r["mean_iou"] for r in sel]))
    for group, pred in (
        ("shipped_native", lambda r: "mean_iou" not in r and not r["name"].endswith("500")),
        ("shipped_500", lambda r: "mean_iou" not in r and r["name"].endswith("500")),
    ):
        sel = [r for r in rows if pred(r) and "agreement" in r]
        if sel:
            summary[f"{group}_agreement"] = float(np.mean([r["agreement"] for r in sel]))
    for key in sorted(k for k in summary if k.endswith(("_miou", "_agreement"))):
        print(f"{key}: {summary[key]:.4f}")
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
