"""Time of the 3-D DenseCRF loss (value + gradient) against the number of voxels, in-process.

The ``crf3d`` workload of ``benchmarks/run.py`` (1-channel synthetic volume, K = 4,
``sigma_xy=10`` mm, ``spacing=(5, 1.5, 1.5)``, ``normalize=True``) over depths 2..64 at
128², plus 16 x 256²; min of 3 runs after a warm-up, wall and CPU time.

    PYTHONPATH=src python benchmarks/volume_growth.py [--backend numba|torch]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rloss.losses import DenseCRFLoss
from run import CRF3D_SIGMA_XY, CRF3D_SPACING, SIGMA_RGB, synthetic_volume

SIZES = ((2, 128), (8, 128), (16, 128), (32, 128), (64, 128), (16, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="numba", choices=("numba", "torch"))
    backend = ap.parse_args().backend
    loss_fn = DenseCRFLoss(weight=1.0, sigma_rgb=SIGMA_RGB, sigma_xy=CRF3D_SIGMA_XY,
                           normalize=True, spacing=CRF3D_SPACING, backend=backend)
    print("| backend | volume | voxels | min wall ms | min CPU ms | ns / voxel (wall) |")
    print("|---|---|---:|---:|---:|---:|")
    for d, h in SIZES:
        image = synthetic_volume(d, h, h)
        logits = torch.randn(1, 4, d // 4 + 1, h // 8 + 1, h // 8 + 1,
                             generator=torch.Generator().manual_seed(2)) * 3
        soft = torch.nn.functional.interpolate(logits, size=(d, h, h), mode="trilinear")
        soft = soft.softmax(1).contiguous()

        def run(soft=soft, image=image):
            p = soft.detach().requires_grad_(True)
            torch.autograd.grad(loss_fn(image, p), p)

        run()
        wall, cpu = [], []
        for _ in range(3):
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        vox = d * h * h
        print(f"| {backend} | {d}x{h}x{h} | {vox} | {1e3 * min(wall):.0f} | "
              f"{1e3 * min(cpu):.0f} | {1e9 * min(wall) / vox:.0f} |", flush=True)


if __name__ == "__main__":
    main()
