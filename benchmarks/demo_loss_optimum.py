"""How good is the DenseCRF loss's own optimum on the demo's val scenes?

Starting from a trained demo model's class scores on each val scene, optimise free
per-pixel scores (no network) for ``--steps`` Adam steps on the demo's phase-2 objective,
pCE on the scene's scribbles + the DenseCRF loss with the demo's settings, and report the
mIoU of the model and of the optimised scores against the ground truth. If the optimum
is close to the ground truth, what limits method (b) of the demo is how far training
moves the network, not the loss. Usage (after ``rloss demo --out DIR``)::

    .venv/bin/python benchmarks/demo_loss_optimum.py DIR [--run pce] [--steps 100]

Measured results: docs/demo.md ("How it was tuned").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from rloss.data.folder import SegmentationFolder
from rloss.demo.report import predict
from rloss.demo.settings import DEFAULTS
from rloss.losses import densecrf_loss, partial_cross_entropy
from rloss.train.checkpoint import load_model
from rloss.train.metrics import ConfusionMatrix, summarize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path, help="an rloss demo --out folder")
    ap.add_argument("--run", default="pce", help="run whose model gives the start (default pce)")
    ap.add_argument("--steps", type=int, default=100, help="Adam steps per scene (default 100)")
    ap.add_argument("--lr", type=float, default=0.1, help="Adam step size on the scores")
    ap.add_argument("--weight", type=float, default=None, help="DenseCRF weight (default: demo)")
    args = ap.parse_args()
    model_file = args.demo / "runs" / args.run / "model.pt"
    if not model_file.is_file():
        ap.error(f"demo: no {model_file} (run `rloss demo --out {args.demo}` first)")
    crf = dict(DEFAULTS["densecrf"])
    if args.weight is not None:
        crf["weight"] = args.weight
    model = load_model(model_file)[0]
    ds = SegmentationFolder(args.demo / "data", split="val")
    k = len(ds.classes)
    before, after = ConfusionMatrix(k), ConfusionMatrix(k)
    torch.set_num_threads(1)
    for i in range(len(ds)):
        raw = ds.load_raw(i)
        scr = torch.from_numpy(raw["scribble"].astype(np.int64))[None]
        image = torch.from_numpy(raw["image"]).permute(2, 0, 1)[None].float()
        start = predict(model, raw["image"])  # (K, H, W) probabilities
        z = start.clamp_min(1e-6).log().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=args.lr)
        for _ in range(args.steps):
            pce = partial_cross_entropy(z[None], scr)
            loss = pce + densecrf_loss(image, z.softmax(0)[None], None, **crf)
            opt.zero_grad()
            loss.backward()
            opt.step()
        mask = torch.from_numpy(raw["mask"].astype(np.int64))
        before.update(start.argmax(0), mask)
        after.update(z.detach().argmax(0), mask)
    print(f"{args.demo}: {len(ds)} val scenes, DenseCRF {crf}, {args.steps} steps")
    for name, cm in ((f"model '{args.run}'", before), ("optimised scores (pCE + DenseCRF)", after)):
        s = summarize(cm.compute(), ds.classes)
        per = ", ".join(f"{c} {100 * v:.1f}" for c, v in s["per_class_iou"].items())
        print(f"{name}: mIoU {100 * s['miou']:.1f} ({per})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
