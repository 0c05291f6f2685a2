"""Permutohedral lattice vs the exact Gaussian on volumes (3-D) and on their slices (2-D).

The same content and the same sigmas, filtered once as a volume ``(1, C, D, H, W)``
(features x, y, z, I: d = 3 + C) and once slice by slice as a batch of images
``(D, C, H, W)`` (features x, y, I: d = 2 + C), each against ``backend="exact"``:

* MRI: a 6 x 32 x 32 crop around the heart of an ACDC development volume (patient 61,
  at half the in-plane resolution), 1 channel (d = 4 vs 3);
* RGB: a 6 x 32 x 32 volume of astronaut crops shifted by 2 pixels per slice, 3 channels
  (d = 6 vs 5).

Isotropic (spacing 1) and anisotropic (slices 3 voxels apart) volumes. Reported: the
lattice/exact ratio of ``W v`` (mean, CV), the relative error after the best global scale
``|a W_lat v - W v| / |W v|`` over ``v`` = 4-class probabilities and ones, and the
DenseCRF loss (``normalize=True``) value and gradient cosine.

    PYTHONPATH=src python benchmarks/volume_lattice_accuracy.py [ACDC_ROOT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from rloss.data.acdc import AcdcVolumes
from rloss.lattice import Lattice, bilateral_features
from rloss.losses import densecrf_loss


def _probs(mask: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``(N, K, *spatial)`` float64 probabilities peaked on ``mask`` ``(N, *spatial)``."""
    g = torch.Generator().manual_seed(seed)
    onehot = torch.nn.functional.one_hot(mask.clamp(0, k - 1), k).movedim(-1, 1).double()
    return (3 * onehot + torch.randn(onehot.shape, generator=g, dtype=torch.float64)).softmax(1)


def compare(image: torch.Tensor, probs: torch.Tensor, s_rgb: float, s_xy: float,
            spacing: tuple[float, ...] | None, backend: str) -> dict:
    feats = bilateral_features(image, s_rgb, s_xy, spacing=spacing)
    ones = torch.ones_like(probs[:, :1])
    vals = torch.cat([probs, ones], 1)
    lat = Lattice(feats, backend=backend).filter(vals.float()).double()
    ex = Lattice(feats, backend="exact").filter(vals)
    ratio = (lat / ex).flatten()
    alpha = float((lat * ex).sum() / (lat * lat).sum())
    rel = float((alpha * lat - ex).norm() / ex.norm())
    out = {"ratio_mean": float(ratio.mean()), "ratio_cv": float(ratio.std() / ratio.mean()),
           "rel": rel}
    grads, losses = [], []
    for b, dt in ((backend, torch.float32), ("exact", torch.float64)):
        p = probs.to(dt).clone().requires_grad_(True)
        loss = densecrf_loss(image, p, weight=1.0, sigma_rgb=s_rgb, sigma_xy=s_xy,
                             normalize=True, backend=b, spacing=spacing)
        loss.backward()
        grads.append(p.grad.double().flatten())
        losses.append(float(loss.detach()))
    out["loss"] = tuple(losses)
    out["cos"] = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    return out


def _mri(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    v = AcdcVolumes(root, "61")[0]
    img = torch.nn.functional.interpolate(v["image"][None].double() * 255, scale_factor=0.5)[0]
    lab = v["label"][:, ::2, ::2]
    zs, ys, xs = torch.nonzero(lab > 0, as_tuple=True)
    cy, cx = int(ys.float().mean()), int(xs.float().mean())
    z0 = max(0, int(zs.float().mean()) - 3)
    y0, x0 = max(0, cy - 16), max(0, cx - 16)
    sl = (slice(z0, z0 + 6), slice(y0, y0 + 32), slice(x0, x0 + 32))
    return img[sl][None, None].contiguous(), lab[sl][None].long().contiguous()


def _rgb() -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    ast = Path(__file__).resolve().parents[1] / "src/rloss/examples/astronaut.png"
    rgb = torch.from_numpy(np.asarray(Image.open(ast).convert("RGB"), np.float64)).permute(2, 0, 1)
    vol = torch.stack([rgb[:, 100:132, 180 + 2 * z: 212 + 2 * z] for z in range(6)], 1)
    gray = vol.mean(0)
    q = torch.quantile(gray.flatten(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    return vol[None].contiguous(), torch.bucketize(gray, q)[None].long()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/acdc_dev")
    torch.manual_seed(0)
    print("| input | backend | sigma_rgb | sigma_xy | spacing | d (3-D / 2-D) | "
          "rel. error 3-D | rel. error 2-D | ratio 3-D (CV) | ratio 2-D (CV) | "
          "loss 3-D lat / exact | grad cos 3-D / 2-D |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (vol, lab) in (("MRI 1-ch", _mri(root)), ("RGB 3-ch", _rgb())):
        probs = _probs(lab, 4, 0)
        c = vol.shape[1]
        slices = vol[0].movedim(1, 0).contiguous()  # (D, C, H, W)
        sprobs = probs[0].movedim(1, 0).contiguous()
        for backend in ("numba", "torch"):
            for s_rgb, s_xy, sp in ((15.0, 5.0, (1.0, 1.0, 1.0)), (15.0, 5.0, (3.0, 1.0, 1.0)),
                                    (15.0, 2.5, (1.0, 1.0, 1.0)), (30.0, 5.0, (1.0, 1.0, 1.0))):
                r3 = compare(vol, probs, s_rgb, s_xy, sp, backend)
                r2 = compare(slices, sprobs, s_rgb, s_xy, None, backend)
                print(f"| {name} | {backend} | {s_rgb:g} | {s_xy:g} | {sp} | {3 + c} / {2 + c} | "
                      f"{r3['rel']:.3f} | {r2['rel']:.3f} | {r3['ratio_mean']:.3f} "
                      f"({r3['ratio_cv']:.3f}) | {r2['ratio_mean']:.3f} ({r2['ratio_cv']:.3f}) | "
                      f"{r3['loss'][0]:.4f} / {r3['loss'][1]:.4f} | "
                      f"{r3['cos']:.4f} / {r2['cos']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
