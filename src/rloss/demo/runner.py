"""Running the demo: generate the data, train every method (reusing finished runs and
resuming interrupted ones), then write the report.

Layout of ``OUT``: ``data/`` (the generated dataset), ``runs/<method>/`` (run folders of
:func:`rloss.train.fit.train`), ``report/``, ``demo.json`` (the settings that determine the
results). Re-running the same command continues where it stopped; a folder holding a demo
with other settings is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rloss.constants import IGNORE_INDEX
from rloss.data.demo_scenes import generate_synthetic
from rloss.data.folder import SegmentationFolder
from rloss.data.io import atomic_write_text
from rloss.demo.recipes import demo_recipes
from rloss.demo.report import (
    finite_or_none,
    format_table,
    gap_closed,
    predict,
    val_items,
    write_figures,
)
from rloss.demo.settings import METHODS, RUNS, demo_settings
from rloss.train.checkpoint import load_model, write_json_atomic
from rloss.train.fit import train
from rloss.train.metrics import object_iou
from rloss.train.run_dir import RunDir

__all__ = ["expected_seconds", "labelled_fraction", "run_demo"]

STAMP_FILE = "demo.json"

#: Measured costs on 2 idle CPU cores (see docs/demo.md): seconds per generated scene,
#: per training iteration of the network (forward + backward + step, incl. validation
#: and logging), the extra factor of an iteration with a regularizer, and fixed overhead
#: (start-up, checkpoints, report).
_COST = {"scene": 0.015, "iteration": 0.08, "regularizer": 1.3, "fixed": 25.0}


def expected_seconds(settings: Mapping[str, Any], *, ncut: bool = False) -> float:
    """Rough wall time of a demo on 2 idle CPU cores, from its iteration counts.

    Example:
        >>> from rloss.demo.settings import demo_settings
        >>> expected_seconds(demo_settings()) < expected_seconds(demo_settings(), ncut=True)
        True
    """
    d = settings["data"]
    per_epoch = math.ceil(int(d["num_train"]) / int(settings["batch_size"]))
    it1 = per_epoch * int(settings["epochs"])
    it2 = per_epoch * int(settings["finetune_epochs"])
    regularized = 1 + int(bool(ncut))
    iterations = 2 * it1 + 2 * it2 + regularized * it2 * _COST["regularizer"]
    scenes = int(d["num_train"]) + int(d["num_val"])
    return _COST["fixed"] + scenes * _COST["scene"] + iterations * _COST["iteration"]


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _no_model_summary() -> Iterator[None]:
    """Hide Lightning's model-summary table (printed once per run: five times a demo)."""
    logger = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    drop = _DropAll()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _train_or_reuse(recipe: Mapping[str, Any], run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train (resuming an interrupted run) unless ``run_dir`` holds a finished run."""
    run = RunDir(run_dir)
    if run.is_done():
        return run.read_metrics()
    with _no_model_summary():
        result = train(recipe, run_dir=run_dir, progress=progress, resume=True)
    return {**result.metrics, "history": result.history}


def labelled_fraction(data_root: str | Path, split: str = "train") -> float:
    """Share of scribbled (not :data:`~rloss.constants.IGNORE_INDEX`) pixels in a split."""
    ds = SegmentationFolder(data_root, split=split)
    total = labelled = 0
    for i in range(len(ds)):
        scr = ds.load_raw(i)["scribble"]
        total += scr.size
        labelled += int(np.count_nonzero(scr != IGNORE_INDEX))
    return labelled / max(total, 1)


def _prepare_out(out: Path, stamp: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder that holds something else."""
    stamp_path = out / STAMP_FILE
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
    elif out.exists() and any(p.name != STAMP_FILE for p in out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out}: exists and is not an rloss demo folder; choose another --out "
                "(or pass --overwrite to use it anyway)"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, stamp_path)


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
        quick: the :data:`~rloss.demo.settings.QUICK` settings (under two minutes; for smoke
            tests).
        seed: seed of the generated data and of training.
        ncut: also train method (d), pCE + Normalized Cut.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        overwrite: replace a demo with other settings found in ``out``.
        progress: progress bars.
        overrides: nested overrides of the settings (see :data:`~rloss.demo.settings.DEFAULTS`).
        log: called with each progress line (``print`` by default).

    Returns:
        The content of ``report/results.json``: ``methods`` (one dict per method with
        ``miou``, ``per_class_iou``, ``sec_per_iter``, ...), ``labelled_fraction``,
        ``gap_closed``, ``settings``, ``files``; plus ``table`` (the markdown table).

    Raises:
        FileExistsError: ``out`` holds a demo with other settings and not ``overwrite``.
        ValueError: bad ``device``.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device: want 'auto', 'cpu' or 'cuda', got {device!r}")
    out = Path(out)
    settings = demo_settings(quick=quick, seed=seed, overrides=overrides)
    # what determines the results (the thread count does not)
    stamp = {"settings": {k: v for k, v in settings.items() if k != "threads"}, "ncut": bool(ncut)}
    _prepare_out(out, stamp, overwrite)

    d = settings["data"]
    minutes = expected_seconds(settings, ncut=ncut) / 60
    log(
        f"[demo] {'quick run' if quick else 'full run'}, seed {seed}: expected about "
        f"{max(1, round(minutes))} min on 2 idle CPU cores (longer on a busy machine; "
        "finished runs in --out are reused)"
    )
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
        miou = finite_or_none(results[m].get("miou"))
        log(f"      mIoU {'n/a' if miou is None else f'{100 * miou:.1f}%'}")

    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    items = val_items(data_root)
    rows = []
    for m in order:
        r = results[m]
        model = load_model(RunDir(runs_dir / m).model_file)[0]
        preds = [predict(model, it["image"]).argmax(0).numpy() for it in items]
        rows.append(
            {
                "method": m,
                "name": METHODS[m],
                "supervision": "full masks" if m == "full" else "scribbles",
                "miou": finite_or_none(r.get("miou")),
                "pixel_acc": finite_or_none(r.get("pixel_acc")),
                "per_class_iou": r.get("per_class_iou", {}),
                "sec_per_iter": finite_or_none(r.get("sec_per_iter")),
                "epochs": settings["epochs"] + settings["finetune_epochs"],
                "object_iou": object_iou(zip(preds, [it["mask"] for it in items])),
            }
        )
    by = {r["method"]: r["miou"] for r in rows}
    by_obj = {r["method"]: r["object_iou"] for r in rows}
    summary: dict[str, Any] = {
        "phase1_miou": {
            k: finite_or_none(results[k].get("miou")) for k in ("pce_phase1", "full_phase1")
        },
        "labelled_fraction": labelled_fraction(data_root),
        "gap_closed": gap_closed(by["pce"], by["densecrf"], by["full"]),
        "gap_closed_object_iou": gap_closed(by_obj["pce"], by_obj["densecrf"], by_obj["full"]),
    }
    if ncut:
        summary["gap_closed_ncut"] = gap_closed(by["pce"], by["ncut"], by["full"])
    table = format_table(rows, summary)
    log("[report] drawing figures")
    files = write_figures(report, data_root, runs_dir, order, results, settings)
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
