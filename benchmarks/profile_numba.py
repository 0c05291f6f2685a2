"""CPU-time profile of the numba lattice backend and of the DenseCRF loss around it.

Where does the time go? Prints, for one (N, K, H, W) case (default: the issue-7
case N=12, K=21, 256², sigma_rgb=15, sigma_xy=50), the CPU time
(``time.process_time``, all threads) of:

* the lattice build, by phase (embedding + task-local hashing, merge, offsets,
  blur neighbours, splat reduction lists);
* one filter of K+1 channels, by stage (splat, blur, slice);
* ``Lattice.quadratic_form`` (build included) fused image by image, as the loss runs it,
  and on the batch lattice;
* DenseCRFLoss forward + backward, and the torch operators around the lattice
  (``torch.profiler``, self CPU time);
* with ``--jit``: the first call (import + build + filter + DenseCRF loss on
  both numba paths, 64²) in fresh
  processes with an empty numba cache ("cold", compiles) and then with the
  cache it left ("warm", loads).

CPU time is the number to compare on a shared machine (wall time also counts
waiting for a core). ``--threads 1`` (default) gives a per-thread cost profile.

Usage::

    .venv/bin/python benchmarks/profile_numba.py
    .venv/bin/python benchmarks/profile_numba.py --shape 1 21 256 256 --threads 2 --jit
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

_JIT_SNIPPET = """
import time
t0 = time.perf_counter()
import torch
from rloss.lattice import Lattice, bilateral_features
image = torch.rand(1, 3, 64, 64) * 255
lat = Lattice(bilateral_features(image, 15.0, 10.0), backend="numba")
lat.filter(torch.rand(1, 4, 64, 64))
lat.filter(torch.rand(1, 4, 64, 64, dtype=torch.float64))
from rloss.losses import densecrf_loss
for n in (1, 8):  # the batch-lattice path and the per-image fused path
    probs = torch.rand(n, 4, 64, 64).softmax(1).requires_grad_()
    densecrf_loss(torch.rand(n, 3, 64, 64) * 255, probs, sigma_xy=10.0).backward()
print(time.perf_counter() - t0)
"""


def _cpu_median(fn, repeats: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of ``repeats`` calls after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return 1e3 * statistics.median(cpu), 1e3 * statistics.median(wall)


def profile(shape: tuple[int, int, int, int], repeats: int) -> None:
    import numpy as np
    import torch

    from rloss.lattice import _numba, bilateral_features
    from rloss.lattice._numba import _build
    from rloss.lattice._numba import _filter as F
    from rloss.losses import DenseCRFLoss

    # run.py sits next to this script (the script's folder is on sys.path)
    from run import SIGMA_RGB, SIGMA_XY, synthetic_images

    n, k, h, w = shape
    image = synthetic_images(n, h, w)
    feats = bilateral_features(image, SIGMA_RGB, SIGMA_XY)
    flat = feats.reshape(n, feats.shape[1], -1).transpose(1, 2).contiguous()
    logits = torch.randn(n, k, h, w, generator=torch.Generator().manual_seed(2))
    probs = logits.softmax(1)
    vals = torch.cat([probs, torch.ones(n, 1, h, w)], 1).reshape(n, k + 1, -1).contiguous()

    # build phases, timed in CPU time
    real_time = _build.time
    phases: dict[str, list[float]] = {}

    class _CpuClock:
        perf_counter = staticmethod(time.process_time)

    def full_build():
        """The batch lattice (built lazily: Potts on one block per image never needs it)."""
        lattice = _numba.build(flat)
        lattice.arrays  # noqa: B018 - builds
        return lattice

    _build.time = _CpuClock  # type: ignore[assignment]
    try:
        lat = full_build()
        for _ in range(repeats):
            lat = full_build()
            for key, sec in lat.build_seconds.items():
                phases.setdefault(key, []).append(1e3 * sec)
    finally:
        _build.time = real_time
    print(
        f"case N={n} K={k} {h}x{w}: {lat.num_vertices} vertices, {lat.nblk} block(s)/image, "
        f"{'packed' if lat.packed else 'full'} keys"
    )
    cpu, wall = _cpu_median(full_build, repeats)
    print(f"build: CPU {cpu:.1f} ms (wall {wall:.1f})")
    for key, vals_ms in phases.items():
        print(f"  {key:<11} CPU {statistics.median(vals_ms):7.1f} ms")

    # filter stages
    v = vals.numpy()
    # row V is the zero row that stands in for missing blur neighbours (uninitialised
    # memory there can hold denormals or NaNs, which would slow the blur down)
    # rows padded to the vector width the kernels use (rloss.lattice._numba._simd)
    from rloss.lattice._numba._simd import padded

    lat_a = np.zeros((lat.num_vertices + 1, padded(k + 1)), np.float32)
    lat_b = np.zeros_like(lat_a)
    out = np.empty_like(v)
    cpu, wall = _cpu_median(lambda: lat.apply(vals), repeats)
    print(f"filter of K+1={k + 1} channels: CPU {cpu:.1f} ms (wall {wall:.1f})")
    arrays = lat.arrays
    if lat.direct:
        splat = lambda: F.splat(v, arrays, lat_a)  # noqa: E731
    else:
        buf = np.empty((lat.info.num_slots, padded(k + 1)), np.float32)

        def splat():
            F.splat(v, arrays, buf)
            F.reduce_slots(buf, arrays.ptr, arrays.idx, lat_a)

    stages = {
        "splat": splat,
        "blur": lambda: F.blur(lat_a, lat_b, arrays.nbr, np.float32(0.5)),
        "slice": lambda: F.slice_values(lat_a, arrays, lat.alpha, out),
    }
    for name, fn in stages.items():
        print(f"  {name:<11} CPU {_cpu_median(fn, repeats)[0]:7.1f} ms")

    # Lattice.quadratic_form: fused per image (the loss's path when blocks == 1) vs batch lattice
    from rloss.lattice import Lattice

    roi = torch.ones(n, h, w)

    def potts(prebuilt: bool):
        lattice = Lattice(feats, backend="numba")
        if prebuilt:
            lattice._impl.arrays  # noqa: B018 - builds
        return lattice.quadratic_form(probs, roi, grad_scale=1.0 / n)

    for label, prebuilt in (("per image (fused)", False), ("batch lattice", True)):
        cpu, wall = _cpu_median(lambda prebuilt=prebuilt: potts(prebuilt), repeats)
        print(f"Lattice + quadratic_form, {label}: CPU {cpu:.1f} ms (wall {wall:.1f})")

    # the loss, and the torch operators around the lattice
    loss_fn = DenseCRFLoss(weight=2e-9, sigma_rgb=SIGMA_RGB, sigma_xy=SIGMA_XY, backend="numba")

    def step():
        p = probs.detach().requires_grad_(True)
        loss_fn(image, p).backward()

    cpu, wall = _cpu_median(step, repeats)
    print(f"DenseCRFLoss fwd+bwd (probs given): CPU {cpu:.1f} ms (wall {wall:.1f})")
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    print("  torch operators (self CPU, one step):")
    for e in rows[:10]:
        print(f"    {e.key:<32} {e.self_cpu_time_total / 1e3:7.1f} ms  x{e.count}")


def first_call_times() -> None:
    """First call in a fresh process: empty numba cache (cold), then the cache it left (warm)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm", "warm"):
            out = subprocess.run(
                [sys.executable, "-c", _JIT_SNIPPET],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"first call, {label} cache: {float(out.stdout.strip().splitlines()[-1]):.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[12, 21, 256, 256], metavar="N K H W")
    parser.add_argument("--threads", type=int, default=1, help="numba and torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="also time the first call (cold/warm)")
    args = parser.parse_args(argv)
    import numba
    import torch

    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    profile(tuple(args.shape), args.repeats)
    if args.jit:
        first_call_times()
    return 0


if __name__ == "__main__":
    sys.exit(main())
