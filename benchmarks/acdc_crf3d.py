"""Does 3-D mean-field refinement beat slice-wise 2-D refinement on ACDC volumes?

Predicts every development volume once with a trained ACDC network
(:func:`rloss.train.volume_eval.predict_volume_probs`), then refines the same
probabilities with :func:`rloss.train.volume_eval.refine_volume` in three variants:
``2d`` (slice by slice), ``3d`` with an assumed slice spacing of 3.3 in-plane voxels
(5 mm / 1.5 mm) and ``3d`` with 6.5 (10 mm / 1.5 mm; the files carry no spacing).
Each variant gets the same small grid (``sigma_xy`` x ``appearance_weight``); the best
setting per variant is chosen by mean Dice on the tuning patients (default 61-65) and
reported on the other patients (default 66-70), which took no part in the choice, and
on all of them. Dice / HD95 as ``rloss eval --kind acdc`` (HD95 in voxels).

    PYTHONPATH=src python benchmarks/acdc_crf3d.py ROOT RUN/model.pt --out crf3d.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rloss._io import write_json_atomic
from rloss.data.acdc import AcdcVolumes, parse_patients
from rloss.train.checkpoint import load_model
from rloss.train.volume_eval import (
    ACDC_CRF,
    predict_volume_probs,
    refine_volume,
    summarize,
    volume_metrics,
)

SIGMA_XY = (5.0, 15.0)
APPEARANCE = (2.0, 5.0)
VARIANTS = (("2d", None), ("3d", 3.3), ("3d", 6.5))


def _score(preds: dict[str, Any], labels: dict[str, Any], names: list[str]) -> dict[str, Any]:
    rows = [volume_metrics(preds[n], labels[n]) for n in names]
    return summarize(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("checkpoint")
    ap.add_argument("--tune", default="61-65", help="patients the setting is chosen on")
    ap.add_argument("--test", default="66-70", help="patients it is reported on")
    ap.add_argument("--out", help="JSON of every setting's scores")
    ap.add_argument("--sigma-xy", type=float, nargs="+", default=list(SIGMA_XY))
    ap.add_argument("--appearance-weight", type=float, nargs="+", default=list(APPEARANCE))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model, cfg = load_model(args.checkpoint, map_location="cpu")
    model.eval()
    size = int((cfg.get("data") or {}).get("crop_size") or 256)
    scale = float((cfg.get("data") or {}).get("intensity_scale") or 255.0)
    tune_ids, test_ids = parse_patients(args.tune), parse_patients(args.test)
    vols = AcdcVolumes(args.root, sorted(set(tune_ids) | set(test_ids)))
    probs, images, labels, patient = {}, {}, {}, {}
    t0 = time.perf_counter()
    for i in range(len(vols)):
        v = vols[i]
        probs[v["name"]] = predict_volume_probs(model, v["image"], size)
        images[v["name"]] = v["image"].float() * scale
        labels[v["name"]] = v["label"].numpy()
        patient[v["name"]] = int(v["patient"])
    print(f"predicted {len(probs)} volumes in {time.perf_counter() - t0:.0f} s", flush=True)
    tune = [n for n in probs if patient[n] in tune_ids]
    test = [n for n in probs if patient[n] in test_ids]
    every = tune + test

    results: list[dict[str, Any]] = []
    base = {n: p.argmax(0).numpy() for n, p in probs.items()}
    results.append({"variant": "none", "tune": _score(base, labels, tune),
                    "test": _score(base, labels, test), "all": _score(base, labels, every)})
    grid = list(itertools.product(VARIANTS, args.sigma_xy, args.appearance_weight))
    for k, ((mode, sd), sxy, wa) in enumerate(grid):
        params = {"sigma_xy": sxy, "appearance_weight": wa}
        if sd is not None:
            params["slice_spacing"] = sd
        t = time.perf_counter()
        preds = {n: refine_volume(images[n], probs[n], mode, params).argmax(0).numpy()
                 for n in every}
        row = {"variant": mode if sd is None else f"3d (sd={sd:g})", "params": params,
               "tune": _score(preds, labels, tune), "test": _score(preds, labels, test),
               "all": _score(preds, labels, every), "seconds": time.perf_counter() - t}
        results.append(row)
        print(f"[{k + 1}/{len(grid)}] {row['variant']:<12} sigma_xy={sxy:<4g} w_a={wa:<3g} "
              f"tune Dice {row['tune']['mean_dice']:.4f}  test Dice {row['test']['mean_dice']:.4f}"
              f"  ({row['seconds']:.0f} s)", flush=True)

    print("\n| variant | chosen on tune | tune Dice | test Dice | test HD95 | all Dice | "
          "all HD95 | all RV / Myo / LV Dice |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ["none", "2d", "3d (sd=3.3)", "3d (sd=6.5)"]:
        rows = [r for r in results if r["variant"] == name]
        best = max(rows, key=lambda r: r["tune"]["mean_dice"])
        chosen = ", ".join(f"{k} {v:g}" for k, v in best.get("params", {}).items()
                           if k != "slice_spacing") or "-"
        a = best["all"]
        print(f"| {name} | {chosen} | {best['tune']['mean_dice']:.4f} | "
              f"{best['test']['mean_dice']:.4f} | {best['test']['mean_hd95']:.2f} | "
              f"{a['mean_dice']:.4f} | {a['mean_hd95']:.2f} | "
              f"{a['dice']['RV']:.3f} / {a['dice']['Myo']:.3f} / {a['dice']['LV']:.3f} |")
    if args.out:
        fixed = {k: v for k, v in ACDC_CRF.items() if k not in ("sigma_xy", "appearance_weight")}
        write_json_atomic({"checkpoint": args.checkpoint, "fixed": fixed, "results": results},
                          Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
