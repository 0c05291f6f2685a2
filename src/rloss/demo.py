"""``rloss demo``: what the regularizer buys, offline, in minutes on a CPU.

The demo generates the built-in dataset (:func:`rloss.data.demo_scenes.generate_synthetic`:
textured shapes whose boundaries follow colour edges, with sparse scribbles) and trains
the same network with the same schedule three (or four) ways through
:func:`rloss.train.api.train`:

(a) ``pce``: partial cross-entropy on the scribbles;
(b) ``densecrf``: pCE + the DenseCRF loss (the paper's two-phase recipe: phase 2
    fine-tunes the phase-1 pCE model with the regularizer added);
(c) ``full``: cross-entropy on the full masks (the upper bound);
(d) ``ncut`` (``--ncut``): pCE + the Normalized Cut loss, like (b).

Every method gets the same two phases (phase 1 from scratch, phase 2 fine-tuning at a
lower learning rate); (a) simply continues without a regularizer, so (a) and (b) differ
only by the loss.

It then writes a report folder ``OUT/report/``: ``results.md`` and ``results.json`` (mIoU
per method, labelled-pixel fraction, seconds per iteration, and the share of the
(a)→(c) gap closed by (b), ``(b − a) / (c − a)``), ``predictions.png`` (image / scribbles /
prediction per method / ground truth for a few val images), ``curves.png`` (training
loss and val mIoU per epoch), and ``gradient.png`` (the DenseCRF loss gradient on the
pCE model's prediction for one val image, see :func:`rloss.viz.densecrf_gradient_maps`).

Layout of ``OUT``: ``data/`` (the generated dataset), ``runs/<method>/`` (run folders of
:func:`~rloss.train.api.train`), ``report/``, ``demo.json`` (the settings). A finished
run is reused and an interrupted one resumes from its last checkpoint, so re-running
the same command continues where it stopped; a folder holding a demo with other
settings is refused unless ``--overwrite``.

All hyper-parameters are in :data:`DEFAULTS` (and :data:`QUICK` for ``--quick``); they
were tuned on seeds other than the reported ones only through these settings, never by
touching results (see ``docs/demo.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULTS",
    "METHODS",
    "QUICK",
    "aggregate_results",
    "demo_recipes",
    "demo_settings",
    "gap_closed",
    "register",
    "run_demo",
]

#: Method key -> display name, in the order they are trained and reported.
METHODS: dict[str, str] = {
    "pce": "(a) pCE on scribbles",
    "densecrf": "(b) pCE + DenseCRF loss",
    "full": "(c) full supervision",
    "ncut": "(d) pCE + Normalized Cut loss",
}

#: Phase-1 runs (trained from scratch) -> description.
RUNS: dict[str, str] = {
    "pce_phase1": "phase 1: pCE on scribbles, from scratch",
    "full_phase1": "phase 1: full masks, from scratch",
}

#: Default demo settings (a run of a few minutes on 2 CPU cores).
DEFAULTS: dict[str, Any] = {
    "data": {"num_train": 512, "num_val": 32, "size": [64, 64], "scribble_fraction": 0.03},
    "model": {
        "arch": "unet",
        "encoder": "resnet18",
        "encoder_weights": None,
        "kwargs": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]},
    },
    "batch_size": 8,
    "epochs": 15,
    "finetune_epochs": 5,
    "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 1e-4, "schedule": "poly", "power": 0.9},
    "finetune_lr": 0.0005,
    "densecrf": {
        "weight": 0.5,
        "sigma_rgb": 15.0,
        "sigma_xy": 16.0,
        "scale_factor": 0.5,
        "normalize": True,
    },
    "ncut": {"weight": 0.5, "sigma_rgb": 15.0, "sigma_xy": 16.0, "scale_factor": 0.5},
    "figure_images": 4,
    "threads": "auto",
}

#: Overrides for ``--quick`` (well under two minutes; numbers are not meaningful).
QUICK: dict[str, Any] = {
    "data": {"num_train": 8, "num_val": 2, "size": [40, 40], "scribble_fraction": 0.03},
    "batch_size": 4,
    "epochs": 1,
    "finetune_epochs": 1,
    "figure_images": 2,
}


def demo_settings(*, quick: bool = False, seed: int = 0, overrides: Mapping[str, Any] = {}):
    """The demo's settings: :data:`DEFAULTS`, then :data:`QUICK` if ``quick``, then ``overrides``.

    Returns:
        A new nested dict, with ``seed`` and ``quick`` set.
    """
    from rloss.train.config import deep_merge

    s = deep_merge(DEFAULTS, QUICK) if quick else copy.deepcopy(DEFAULTS)
    s = deep_merge(s, overrides)
    s["seed"] = int(seed)
    s["quick"] = bool(quick)
    return s


def _accelerator(device: str) -> str:
    return {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[device]


def demo_recipes(
    settings: Mapping[str, Any],
    data_root: str | Path,
    runs_dir: str | Path,
    *,
    ncut: bool = False,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Training recipes (for :func:`rloss.train.api.train`) of every demo method.

    All methods share the network, data, batch size, augmentation and schedule: phase 1
    trains ``epochs`` epochs from scratch (``pce_phase1`` on scribbles, ``full_phase1`` on
    full masks); phase 2 fine-tunes for ``finetune_epochs`` epochs at ``finetune_lr``:
    (a) ``pce`` continues ``pce_phase1`` with pCE alone, (b) ``densecrf`` continues it with
    pCE + DenseCRF (the paper's two-phase recipe), (d) ``ncut`` with pCE + Normalized Cut,
    and (c) ``full`` continues ``full_phase1`` on the masks. So (a) and (b) differ only by
    the regularizer, not by the number of iterations.

    Args:
        settings: from :func:`demo_settings`.
        data_root: the generated dataset folder.
        runs_dir: parent of the run folders (``init_from`` of (b)/(d) points into it).
        ncut: include method (d).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``{run name: recipe}`` in training order (phase-1 runs first).
    """
    runs_dir = Path(runs_dir)
    base: dict[str, Any] = {
        "seed": int(settings["seed"]),
        "init_from": None,
        "model": copy.deepcopy(settings["model"]),
        "data": {
            "kind": "folder",
            "root": str(data_root),
            "supervision": "scribble",
            "train_split": "train",
            "val_split": "val",
            "crop_size": int(max(settings["data"]["size"])),
            "scale_range": [0.75, 1.25],
            "flip": True,
            "batch_size": int(settings["batch_size"]),
            "val_batch_size": 1,
            "num_workers": 0,
        },
        "loss": {"pce": {"weight": 1.0}},
        "optim": copy.deepcopy(settings["optim"]),
        "trainer": {
            "max_epochs": int(settings["epochs"]),
            "accelerator": _accelerator(device),
            "log_every_n_steps": 1,
            "threads": settings.get("threads", "auto"),
        },
    }
    full1 = copy.deepcopy(base)
    full1["data"]["supervision"] = "full"

    def phase2(phase1: str, supervision: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        r = copy.deepcopy(base)
        r["data"]["supervision"] = supervision
        r["init_from"] = str(runs_dir / phase1 / "model.pt")
        r["trainer"]["max_epochs"] = int(settings["finetune_epochs"])
        r["optim"]["lr"] = float(settings["finetune_lr"])
        r["loss"].update(copy.deepcopy(dict(extra)))
        return r

    recipes = {
        "pce_phase1": base,
        "full_phase1": full1,
        "pce": phase2("pce_phase1", "scribble", {}),
        "densecrf": phase2("pce_phase1", "scribble", {"densecrf": settings["densecrf"]}),
        "full": phase2("full_phase1", "full", {}),
    }
    if ncut:
        recipes["ncut"] = phase2("pce_phase1", "scribble", {"ncut": settings["ncut"]})
    return recipes


# --------------------------------------------------------------------------- running


def _run_done(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not (run_dir / "model.pt").is_file() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("status") == "done" else None


def _train_or_reuse(recipe: Mapping[str, Any], run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train (resuming an interrupted run) unless ``run_dir`` holds a finished run."""
    from rloss.train.api import train

    done = _run_done(run_dir)
    if done is not None:
        return done
    result = train(recipe, run_dir=run_dir, progress=progress, resume=True)
    return {**result.metrics, "history": result.history}


def _labelled_fraction(data_root: Path, split: str = "train") -> float:
    import numpy as np

    from rloss.data.io import read_label

    ids = (data_root / "splits" / f"{split}.txt").read_text("utf-8").split()
    total = labelled = 0
    for name in ids:
        scr = read_label(data_root / "scribbles" / f"{name}.png")
        total += scr.size
        labelled += int(np.count_nonzero(scr != 255))
    return labelled / max(total, 1)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def gap_closed(a: float | None, b: float | None, c: float | None) -> float | None:
    """``(b − a) / (c − a)``: the share of the weak→full gap closed; ``None`` if undefined."""
    if a is None or b is None or c is None or not c - a > 1e-9:
        return None
    return (b - a) / (c - a)


def _history_series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if key in h and _finite(h[key]) is not None]


def _format_table(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    lines = [
        "| method | supervision | mIoU (%) | object IoU (%) | s / iteration |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        miou = "n/a" if r["miou"] is None else f"{100 * r['miou']:.1f}"
        obj = "n/a" if r.get("object_iou") is None else f"{100 * r['object_iou']:.1f}"
        spi = "n/a" if r["sec_per_iter"] is None else f"{r['sec_per_iter']:.3f}"
        lines.append(f"| {r['name']} | {r['supervision']} | {miou} | {obj} | {spi} |")
    gap = summary.get("gap_closed")
    p1 = summary.get("phase1_miou") or {}
    lines.append("")
    if p1:
        fmt = {k: ("n/a" if v is None else f"{100 * v:.1f}") for k, v in p1.items()}
        lines.append(
            f"After phase 1 (from scratch): pCE {fmt.get('pce_phase1', 'n/a')}, "
            f"full supervision {fmt.get('full_phase1', 'n/a')} mIoU (%); phase 2 fine-tunes "
            "each with the loss of its row."
        )
    lines.append(
        f"Labelled pixels in the training scribbles: {100 * summary['labelled_fraction']:.2f}%. "
        "Gap closed by the DenseCRF loss, (b − a) / (c − a): "
        + ("n/a" if gap is None else f"{100 * gap:.0f}%")
        + " in mIoU, "
        + (
            "n/a"
            if summary.get("gap_closed_object_iou") is None
            else f"{100 * summary['gap_closed_object_iou']:.0f}%"
        )
        + " in object IoU (class-agnostic: object vs background)."
    )
    return "\n".join(lines) + "\n"


def _val_items(data_root: Path, n: int) -> list[dict[str, Any]]:
    from rloss.data.io import read_image, read_label

    ids = (data_root / "splits" / "val.txt").read_text("utf-8").split()[:n]
    items = []
    for name in ids:
        items.append(
            {
                "name": name,
                "image": read_image(data_root / "images" / f"{name}.png"),
                "mask": read_label(data_root / "labels" / f"{name}.png"),
                "scribble": read_label(data_root / "scribbles" / f"{name}.png"),
            }
        )
    return items


def _object_iou(model: Any, items: Sequence[Mapping[str, Any]]) -> float | None:
    """Class-agnostic IoU of "object" (any class but background 0) over ``items``.

    Separates boundary quality from shape classification: a pixel counts as correct when
    both the prediction and the truth call it object (whatever the class) or background.
    """
    import numpy as np

    inter = union = 0
    for it in items:
        pred = _predict_logits(model, it["image"]).argmax(0).numpy() != 0
        mask = it["mask"]
        valid = mask != 255
        truth = (mask != 0) & valid
        pred = pred & valid
        inter += int(np.count_nonzero(pred & truth))
        union += int(np.count_nonzero(pred | truth))
    return inter / union if union else None


def _predict_logits(model: Any, image_u8: Any) -> Any:
    import torch

    from rloss.train.api import normalize_image

    x = torch.from_numpy(image_u8).permute(2, 0, 1).float().unsqueeze(0)
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(normalize_image(x.to(dev)))[0].float().cpu()


def _write_figures(
    report: Path,
    data_root: Path,
    runs_dir: Path,
    methods: Sequence[str],
    results: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> dict[str, Path]:
    import torch

    from rloss.train.api import load_model
    from rloss.viz import (
        densecrf_gradient_maps,
        plot_curves,
        plot_gradient_figure,
        plot_prediction_grid,
    )

    items = _val_items(data_root, int(settings["figure_images"]))
    models = {m: load_model(runs_dir / m / "model.pt")[0] for m in methods}
    rows = []
    for it in items:
        row: dict[str, Any] = {"image": it["image"], "scribbles": it["scribble"]}
        for m in methods:
            row[m] = _predict_logits(models[m], it["image"]).argmax(0).numpy()
        row["ground truth"] = it["mask"]
        rows.append(row)
    paths = {
        "predictions": plot_prediction_grid(
            rows,
            ["image", "scribbles", *methods, "ground truth"],
            report / "predictions.png",
            title="val images: prediction per method (colours = classes)",
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
    pce_logits = [_predict_logits(models["pce"], x["image"]) for x in items]
    best = max(range(len(items)), key=lambda i: int((pce_logits[i].argmax(0) != 0).sum()))
    it, logits = items[best], pce_logits[best]
    maps = densecrf_gradient_maps(
        torch.from_numpy(it["image"]).permute(2, 0, 1).float(),
        logits,
        sigma_rgb=float(crf["sigma_rgb"]),
        sigma_xy=float(crf["sigma_xy"]),
        scale_factor=1.0,
        normalize=bool(crf.get("normalize", False)),
    )
    from rloss.data.demo_scenes import SYNTHETIC_CLASSES

    names = list(SYNTHETIC_CLASSES)[: logits.shape[0]]
    paths["gradient"] = plot_gradient_figure(
        it["image"],
        maps,
        report / "gradient.png",
        class_names=names,
        scribbles=it["scribble"],
        title="DenseCRF loss gradient on the pCE model's prediction",
    )
    return paths


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    ncut: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    overrides: Mapping[str, Any] = {},
    log: Any = print,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return the results (also written to ``out/report``).

    Args:
        out: output folder (created).
        quick: the :data:`QUICK` settings (under two minutes; for smoke tests).
        seed: seed of the generated data and of training.
        ncut: also train method (d), pCE + Normalized Cut.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overwrite: replace a demo with other settings found in ``out``.
        progress: progress bars.
        overrides: nested overrides of the settings (see :data:`DEFAULTS`).
        log: called with each progress line (``print`` by default).

    Returns:
        The content of ``report/results.json``: ``methods`` (one dict per method with
        ``miou``, ``per_class_iou``, ``sec_per_iter``, ...), ``labelled_fraction``,
        ``gap_closed``, ``settings``, ``files``.

    Raises:
        FileExistsError: ``out`` holds a demo with other settings and not ``overwrite``.
        ValueError: bad ``device``.
    """
    from rloss.data.demo_scenes import generate_synthetic
    from rloss.train.api import write_json_atomic

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: want 'auto', 'cpu' or 'cuda', got {device!r}")
    out = Path(out)
    settings = demo_settings(quick=quick, seed=seed, overrides=overrides)
    # what determines the results (thread count does not)
    stamp = {"settings": {k: v for k, v in settings.items() if k != "threads"}, "ncut": bool(ncut)}
    stamp_path = out / "demo.json"
    if stamp_path.is_file():
        try:
            old = json.loads(stamp_path.read_text("utf-8"))
        except (OSError, ValueError):
            old = None
        same = old is not None and old.get("settings") == json.loads(json.dumps(stamp["settings"]))
        if not same:
            if not overwrite:
                raise FileExistsError(
                    f"{out}: holds a demo run with other settings; choose another --out or "
                    "pass --overwrite to replace it"
                )
            for sub in ("runs", "report", "data"):
                shutil.rmtree(out / sub, ignore_errors=True)
    elif out.exists() and any(p.name not in ("demo.json",) for p in out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out}: exists and is not an rloss demo folder; choose another --out "
                "(or pass --overwrite to use it anyway)"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, stamp_path)

    d = settings["data"]
    log(f"[data] generating the built-in dataset in {out / 'data'}")
    data_root = generate_synthetic(
        out / "data",
        num_train=int(d["num_train"]),
        num_val=int(d["num_val"]),
        size=(int(d["size"][0]), int(d["size"][1])),
        seed=int(seed),
        scribble_fraction=float(d["scribble_fraction"]),
        overwrite=True,
        progress=progress,
    )
    runs_dir = out / "runs"
    recipes = demo_recipes(settings, data_root, runs_dir, ncut=ncut, device=device)
    order = ["pce", "densecrf", "full"] + (["ncut"] if ncut else [])
    results: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for i, m in enumerate(recipes, start=1):
        log(f"[{i}/{len(recipes)}] {RUNS.get(m) or METHODS[m]}")
        t0 = time.perf_counter()
        results[m] = _train_or_reuse(recipes[m], runs_dir / m, progress)
        results[m]["wall_s"] = time.perf_counter() - t0
        miou = _finite(results[m].get("miou"))
        log(f"      mIoU {'n/a' if miou is None else f'{100 * miou:.1f}%'}")

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    frac = _labelled_fraction(data_root)
    rows = []
    for m in order:
        r = results[m]
        rows.append(
            {
                "method": m,
                "name": METHODS[m],
                "supervision": "full masks" if m == "full" else "scribbles",
                "miou": _finite(r.get("miou")),
                "pixel_acc": _finite(r.get("pixel_acc")),
                "per_class_iou": r.get("per_class_iou", {}),
                "sec_per_iter": _finite(r.get("sec_per_iter")),
                "epochs": settings["epochs"] + settings["finetune_epochs"],
            }
        )
    from rloss.train.api import load_model

    val_items = _val_items(data_root, int(settings["data"]["num_val"]))
    for r in rows:
        model = load_model(runs_dir / r["method"] / "model.pt")[0]
        r["object_iou"] = _object_iou(model, val_items)
    by = {r["method"]: r["miou"] for r in rows}
    by_obj = {r["method"]: r["object_iou"] for r in rows}
    summary = {
        "phase1_miou": {k: _finite(results[k].get("miou")) for k in ("pce_phase1", "full_phase1")},
        "labelled_fraction": frac,
        "gap_closed": gap_closed(by["pce"], by["densecrf"], by["full"]),
        "gap_closed_object_iou": gap_closed(by_obj["pce"], by_obj["densecrf"], by_obj["full"]),
    }
    if ncut:
        summary["gap_closed_ncut"] = gap_closed(by["pce"], by["ncut"], by["full"])
    table = _format_table(rows, summary)
    log("[report] drawing figures")
    files = _write_figures(report, data_root, runs_dir, order, results, settings)
    files_s = {k: str(v) for k, v in files.items()}
    files_s["table_md"] = str(report / "results.md")
    files_s["table_json"] = str(report / "results.json")
    payload = {
        "methods": rows,
        **summary,
        "settings": settings,
        "ncut": bool(ncut),
        "total_wall_s": time.perf_counter() - t_all,
        "files": files_s,
    }
    from rloss.data.io import atomic_write_text

    md = (
        "# rloss demo results\n\n"
        f"Built-in synthetic data, seed {seed}"
        + (" (--quick: numbers not meaningful)" if quick else "")
        + ".\n\n"
        + table
        + "\nFigures: predictions.png, curves.png, gradient.png\n"
    )
    atomic_write_text(report / "results.md", md)
    write_json_atomic(payload, report / "results.json")
    payload["table"] = table
    return payload


def aggregate_results(paths: Sequence[str | Path]) -> str:
    """A markdown table of several demo runs (e.g. seeds): per-seed and mean ± std.

    Args:
        paths: ``OUT/report/results.json`` files (or their ``OUT`` folders).

    Returns:
        Markdown text: one row per method with mIoU per run, mean ± std, mean s/iteration;
        then the gap closed per run and its mean.
    """
    import statistics

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
            cells = ["n/a" if v is None else f"{100 * v:.1f}" for v in vals]
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


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Deprecated: ``rloss demo`` is registered by :mod:`rloss.commands.demo`."""
    import warnings

    from rloss.commands.demo import register as _register

    warnings.warn(
        "rloss.demo.register is deprecated; use rloss.commands.demo.register",
        DeprecationWarning,
        stacklevel=2,
    )
    _register(subparsers)
