"""The demo's report: the results table, cross-seed aggregation and the figures.

Predictions go through the library's own inference (:func:`rloss.train.inference.predict_probs`)
and the validation images through its dataset (:class:`rloss.data.folder.SegmentationFolder`),
so the report measures exactly what ``rloss eval`` and training validation measure.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rloss.constants import IGNORE_INDEX
from rloss.data.demo_scenes import SYNTHETIC_CLASSES
from rloss.data.folder import SegmentationFolder
from rloss.train.checkpoint import load_model
from rloss.train.inference import normalize_image, predict_probs
from rloss.train.run_dir import RunDir
from rloss.viz import (
    _figure,
    densecrf_gradient_maps,
    overlay,
    plot_curves,
    plot_gradient_figure,
    save_figure,
)

#: Flat 768-int palette of the demo figures: bright class colours that show on any image.
DEMO_PALETTE: list[int] = (
    [0, 0, 0, 255, 64, 64, 64, 255, 64, 64, 176, 255, 255, 224, 0]
    + [128] * (3 * 250)
    + [255, 255, 255]
)

__all__ = [
    "DEMO_PALETTE",
    "aggregate_results",
    "finite_or_none",
    "format_table",
    "gap_closed",
    "plot_contour_grid",
    "predict",
    "val_items",
    "write_figures",
]


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else ``None`` (for JSON-able tables)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def gap_closed(a: float | None, b: float | None, c: float | None) -> float | None:
    """``(b − a) / (c − a)``: the share of the weak→full gap closed; ``None`` if undefined.

    Example:
        >>> round(gap_closed(0.5, 0.6, 0.7), 6)
        0.5
        >>> gap_closed(0.5, 0.6, 0.5) is None
        True
    """
    if a is None or b is None or c is None or not c - a > 1e-9:
        return None
    return (b - a) / (c - a)


def val_items(data_root: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """The first ``n`` raw validation samples (``image`` uint8 HWC, ``mask``, ``scribble``)."""
    ds = SegmentationFolder(data_root, split="val")
    count = len(ds) if n is None else min(int(n), len(ds))
    return [ds.load_raw(i) for i in range(count)]


def predict(model: nn.Module, image_u8: np.ndarray) -> torch.Tensor:
    """``(K, H, W)`` float32 CPU probabilities of ``model`` for one uint8 ``(H, W, 3)`` image."""
    x = torch.from_numpy(np.ascontiguousarray(image_u8)).permute(2, 0, 1).float().unsqueeze(0)
    dev = next(model.parameters()).device
    return predict_probs(model, normalize_image(x.to(dev)))[0].cpu()


def _history_series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if key in h and finite_or_none(h[key]) is not None]


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def format_table(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """The markdown results table of one demo run (one row per method, then the summary)."""
    lines = [
        "| method | supervision | mIoU (%) | object IoU (%) | s / iteration |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        spi = "n/a" if r["sec_per_iter"] is None else f"{r['sec_per_iter']:.3f}"
        lines.append(
            f"| {r['name']} | {r['supervision']} | {_pct(r['miou'])} | "
            f"{_pct(r.get('object_iou'))} | {spi} |"
        )
    p1 = summary.get("phase1_miou") or {}
    lines.append("")
    if p1:
        lines.append(
            f"After phase 1 (from scratch): pCE {_pct(p1.get('pce_phase1'))}, "
            f"full supervision {_pct(p1.get('full_phase1'))} mIoU (%); phase 2 fine-tunes "
            "each with the loss of its row."
        )
    lines.append(
        f"Labelled pixels in the training scribbles: {100 * summary['labelled_fraction']:.2f}%. "
        "Gap closed by the DenseCRF loss, (b − a) / (c − a): "
        f"{_pct(summary.get('gap_closed'), 0)}% in mIoU, "
        f"{_pct(summary.get('gap_closed_object_iou'), 0)}% in object IoU "
        "(class-agnostic: object vs background)."
    )
    return "\n".join(lines) + "\n"


def plot_contour_grid(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    path: str | Path,
    *,
    class_names: Sequence[str],
    truth: str = "ground truth",
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """A grid of the image with label maps drawn as region outlines, one row per sample.

    Every label-map column shows the image, objects lightly tinted with their class colours,
    with the outline of each object class region drawn in its colour; the prediction
    columns also show the outline of the ``truth`` column as a thin white dashed line, so
    one sees at a glance where a prediction stops short of or overshoots the object (the
    image's colour edge).

    Args:
        rows: one mapping per sample: ``"image"`` (``(H, W, 3)`` uint8) and, per other
            column, an ``(H, W)`` integer label map (255 = unlabelled); a column whose name
            starts with ``"scribbles"`` is drawn as strokes over the image.
        columns: keys to show, in order (titles of the first row); ``"image"`` shows the
            image alone.
        path: output ``.png``, written atomically.
        class_names: names of the classes, index = label value (for the legend).
        truth: the column whose outline is drawn over the others.
        title: optional figure title.
        dpi: resolution.

    Returns:
        ``path``.
    """
    from matplotlib.patches import Patch

    if not rows or not columns:
        raise ValueError(f"rows and columns must be non-empty, got {len(rows)} and {len(columns)}")
    pal = np.asarray(DEMO_PALETTE, dtype=np.float64).reshape(256, 3) / 255.0
    h, w = np.asarray(rows[0]["image"]).shape[:2]
    cell = 1.9
    fig, axes = _figure(
        len(rows), len(columns), (cell * len(columns), cell * h / max(w, 1) * len(rows) + 0.7)
    )

    def outline(ax: Any, labels: np.ndarray, color: Any = None, **style: Any) -> None:
        for c in np.unique(labels):
            if c != 0 and c != IGNORE_INDEX:
                ax.contour((labels == c).astype(np.float32), levels=[0.5],
                           colors=[pal[int(c)] if color is None else color], **style)

    for r, row in enumerate(rows):
        image = np.asarray(row["image"])
        gt = np.asarray(row[truth]) if truth in row else None
        for c, col in enumerate(columns):
            ax = axes[r, c]
            if col == "image":
                ax.imshow(image, interpolation="nearest")
            else:
                lab = np.asarray(row[col])
                if col.startswith("scribble"):
                    ax.imshow(overlay(image, lab, alpha=1.0, palette=DEMO_PALETTE),
                              interpolation="nearest")
                else:
                    tint = np.where(lab == 0, IGNORE_INDEX, lab)  # background untinted
                    ax.imshow(overlay(image, tint, alpha=0.3, palette=DEMO_PALETTE),
                              interpolation="nearest")
                    outline(ax, lab, linewidths=1.8)
                    if gt is not None and col != truth:
                        outline(ax, gt, color="white", linewidths=0.9, linestyles="dashed")
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=9)
    handles = [Patch(color=pal[i], label=n) for i, n in enumerate(class_names) if i > 0]
    handles.append(Patch(facecolor="none", edgecolor="0.4", linestyle="dashed",
                         label=f"{truth} outline"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def write_figures(
    report: Path,
    data_root: Path,
    runs_dir: Path,
    methods: Sequence[str],
    results: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> dict[str, Path]:
    """``predictions.png``, ``curves.png`` and ``gradient.png`` in ``report``; their paths."""
    items = val_items(data_root, int(settings["figure_images"]))
    models = {m: load_model(RunDir(runs_dir / m).model_file)[0] for m in methods}
    probs = {m: [predict(models[m], it["image"]) for it in items] for m in methods}
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"image": it["image"], "scribbles": it["scribble"]}
        for m in methods:
            row[m] = probs[m][i].argmax(0).numpy()
        row["ground truth"] = it["mask"]
        rows.append(row)
    paths = {
        "predictions": plot_contour_grid(
            rows,
            ["image", "scribbles", *methods, "ground truth"],
            report / "predictions.png",
            class_names=SYNTHETIC_CLASSES,
            title="val images: outline of each predicted object (colour = class); "
            "dashed: ground truth",
        )
    }
    series: dict[str, dict[str, list[float]]] = {"training loss": {}, "val mIoU": {}}
    for m in methods:
        first = "full_phase1" if m == "full" else "pce_phase1"
        hist = list(results[first].get("history") or []) + list(results[m].get("history") or [])
        series["training loss"][m] = _history_series(hist, "train/loss")
        series["val mIoU"][m] = _history_series(hist, "val/miou")
    n1 = len(results["pce_phase1"].get("history") or [])
    paths["curves"] = plot_curves(
        series,
        report / "curves.png",
        title=f"phase 1: epochs 1-{n1}; phase 2 (fine-tuning, regularizer added): after",
    )
    crf = settings["densecrf"]
    # the val image on which the pCE model predicts the most object pixels
    best = max(range(len(items)), key=lambda i: int((probs["pce"][i].argmax(0) != 0).sum()))
    it, p = items[best], probs["pce"][best]
    maps = densecrf_gradient_maps(
        torch.from_numpy(np.ascontiguousarray(it["image"])).permute(2, 0, 1).float(),
        p.clamp_min(1e-30).log(),  # log-probabilities are logits of the same softmax
        sigma_rgb=float(crf["sigma_rgb"]),
        sigma_xy=float(crf["sigma_xy"]),
        scale_factor=1.0,
        normalize=bool(crf.get("normalize", False)),
    )
    paths["gradient"] = plot_gradient_figure(
        it["image"],
        maps,
        report / "gradient.png",
        class_names=list(SYNTHETIC_CLASSES)[: p.shape[0]],
        scribbles=it["scribble"],
        title="DenseCRF loss gradient on the pCE model's prediction",
    )
    return paths


def aggregate_results(paths: Sequence[str | Path]) -> str:
    """A markdown table of several demo runs (e.g. seeds): per-seed and mean ± std.

    Args:
        paths: ``OUT/report/results.json`` files (or their ``OUT`` folders).

    Returns:
        Markdown text: one row per method with mIoU per run, mean ± std, mean s/iteration;
        then the gap closed per run and its mean.
    """
    runs = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "report" / "results.json"
        runs.append(json.loads(p.read_text("utf-8")))
    if not runs:
        raise ValueError("paths: want at least one results.json, got none")
    seeds = [r["settings"]["seed"] for r in runs]
    head = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | s / iter |"
    lines = [head, "|---|" + "---:|" * (len(seeds) + 2)]

    def ms(values: list[float]) -> str:
        if not values:
            return "n/a"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    for key, label, gap_key in (
        ("miou", "mIoU", "gap_closed"),
        ("object_iou", "object IoU", "gap_closed_object_iou"),
    ):
        if not any(key in m for m in runs[0]["methods"]):
            continue
        for i, row in enumerate(runs[0]["methods"]):
            vals = [r["methods"][i].get(key) for r in runs]
            cells = [_pct(v) for v in vals]
            spi = [r["methods"][i]["sec_per_iter"] for r in runs if r["methods"][i]["sec_per_iter"]]
            lines.append(
                f"| {label}: {row['name']} | "
                + " | ".join(cells)
                + f" | {ms([100 * v for v in vals if v is not None])} | "
                + (f"{statistics.mean(spi):.3f}" if spi else "n/a")
                + " |"
            )
        gaps = [r.get(gap_key) for r in runs]
        cells = ["n/a" if g is None else f"{100 * g:.0f}%" for g in gaps]
        lines.append(
            f"| {label}: gap closed (b − a)/(c − a) | "
            + " | ".join(cells)
            + f" | {ms([100 * g for g in gaps if g is not None])} (%) | |"
        )
    frac = statistics.mean(r["labelled_fraction"] for r in runs)
    lines.append("")
    lines.append(
        f"mIoU in % on the val split; labelled pixels in the scribbles: {100 * frac:.2f}%."
    )
    return "\n".join(lines) + "\n"
