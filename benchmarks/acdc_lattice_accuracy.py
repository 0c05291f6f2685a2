"""Permutohedral lattice vs the exact Gaussian on 1-channel MRI (3-D features x, y, I) and RGB.

For small crops (at the loss's resolution) of real ACDC slices and of the astronaut
photograph, compares ``Lattice(..).filter`` (numba backend) with ``backend="exact"``, and
the DenseCRF loss (``normalize=True``) value and gradient, over a few bandwidths.

    PYTHONPATH=src python benchmarks/acdc_lattice_accuracy.py [ACDC_ROOT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rloss.data.acdc import AcdcSlices
from rloss.lattice import Lattice, bilateral_features
from rloss.losses import DenseCRFLoss


def _probs(mask: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(mask.clamp(0, k - 1), k).permute(0, 3, 1, 2).double()
    return (3 * onehot + torch.randn(onehot.shape, generator=g, dtype=torch.float64)).softmax(1)


def compare(image: torch.Tensor, probs: torch.Tensor, s_rgb: float, s_xy: float) -> dict:
    feats = bilateral_features(image, sigma_rgb=s_rgb, sigma_xy=s_xy)
    lat = Lattice(feats, backend="numba").filter(probs.float()).double()
    ex = Lattice(feats, backend="exact").filter(probs)
    ratio = (lat / ex).flatten()
    alpha = float((lat * ex).sum() / (lat * lat).sum())  # best scalar fit of lat onto exact
    rel = float((alpha * lat - ex).norm() / ex.norm())
    out = {"ratio_mean": float(ratio.mean()), "ratio_cv": float(ratio.std() / ratio.mean()),
           "rel_err_after_scale": rel}
    grads, vals = [], []
    for backend in ("numba", "exact"):
        p = probs.clone().float().requires_grad_(True) if backend == "numba" else \
            probs.clone().requires_grad_(True)
        loss = DenseCRFLoss(weight=1.0, sigma_rgb=s_rgb, sigma_xy=s_xy, scale_factor=1.0,
                            normalize=True, backend=backend)(image, p)
        loss.backward()
        grads.append(p.grad.double().flatten())
        vals.append(float(loss))
    out["loss_lattice"], out["loss_exact"] = vals
    out["grad_cosine"] = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/acdc_dev")
    torch.manual_seed(0)
    ds = AcdcSlices(root, "21-24", size=128, intensity_scale=255.0)
    # 48 x 48 crops around the heart at half the 128 x 128 training size (the loss's scale)
    mri, mri_mask = [], []
    for i in (0, 5, 10, 15):
        s = ds[i]
        img = torch.nn.functional.interpolate(s["image_raw"][None].double(), scale_factor=0.5)
        m = torch.nn.functional.interpolate(s["mask"][None, None].double(), scale_factor=0.5)
        ys, xs = torch.nonzero(m[0, 0] > 0, as_tuple=True)
        cy, cx = (int(ys.float().mean()), int(xs.float().mean())) if len(ys) else (32, 32)
        y0, x0 = max(0, min(64 - 48, cy - 24)), max(0, min(64 - 48, cx - 24))
        mri.append(img[..., y0:y0 + 48, x0:x0 + 48])
        mri_mask.append(m[0, :, y0:y0 + 48, x0:x0 + 48].long())
    mri_img, mri_m = torch.cat(mri), torch.cat(mri_mask)
    from PIL import Image

    ast = Path(__file__).resolve().parents[1] / "src/rloss/examples/astronaut.png"
    rgb = torch.from_numpy(np.asarray(Image.open(ast).convert("RGB"), np.float64))
    rgb = rgb.permute(2, 0, 1)[None, :, 100:148, 180:228].contiguous()
    # an RGB "mask": 4 intensity quartiles (only to build probabilities with edges)
    gray = rgb.mean(1)
    rgb_m = torch.bucketize(gray, torch.quantile(gray.flatten(), torch.tensor(
        [0.25, 0.5, 0.75], dtype=torch.float64))).long()
    print("| input | sigma_rgb | sigma_xy (px at loss scale) | lattice/exact mean | CV | "
          "rel. error after scale | loss lattice / exact | grad cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for name, img, m in (("MRI 1-ch (x,y,I)", mri_img, mri_m), ("RGB (x,y,R,G,B)", rgb, rgb_m)):
        probs = _probs(m, 4, 0)
        for s_rgb, s_xy in ((15.0, 5.0), (15.0, 2.5), (5.0, 5.0), (30.0, 5.0)):
            r = compare(img, probs, s_rgb, s_xy)
            print(f"| {name} | {s_rgb:g} | {s_xy:g} | {r['ratio_mean']:.3f} | "
                  f"{r['ratio_cv']:.3f} | {r['rel_err_after_scale']:.3f} | "
                  f"{r['loss_lattice']:.4f} / {r['loss_exact']:.4f} | {r['grad_cosine']:.4f} |")


if __name__ == "__main__":
    main()
