"""Speed and memory benchmarks of the lattice backends and the DenseCRF loss.

One command runs everything (``make bench``)::

    .venv/bin/python benchmarks/run.py                 # full suite
    .venv/bin/python benchmarks/run.py --quick         # fewer repeats and sizes
    .venv/bin/python benchmarks/run.py --suites filter crf --backends numba
    .venv/bin/python benchmarks/run.py --record        # also prepend to RESULTS.md

Where the time goes (CPU-time profile of the numba build phases, filter stages
and the torch operators of the loss; ``--jit`` adds first-call times with a cold
and a warm numba cache): ``.venv/bin/python benchmarks/profile_numba.py``.

Suites:

* ``filter``: lattice build + one filter of K channels, (N, K, H, W) from issue 2
  (also ``benchmarks/bench_lattice.py``),
  sigma_rgb=15, sigma_xy=50.
* ``crf``: ``rloss.losses.DenseCRFLoss`` forward + backward, float32
  (sigma_xy=50: the reference recipe's 100 at scale 0.5, inputs already at 256²):
  the loss value and its gradient with respect to given softmax probabilities
  (``torch.autograd.grad``). Until 2026-11-25 14:40 the timed region also
  computed the softmax (about 24 ms at N=12) and accumulated the gradient
  into ``probs.grad``; RESULTS.md entries say which definition they used.
* ``step``: one SGD step of a DeepLabV3+ (mobilenet_v2, random weights; batch
  ``--step-batch``, crops ``--step-size``, default 2 x 256² on CPU) with and without the
  DenseCRF term; the ratio is the regularizer's overhead.

``--device cuda`` runs the suites on the GPU (torch backend only; every timed run ends
with ``torch.cuda.synchronize()`` and the peak is ``torch.cuda.max_memory_allocated``);
``benchmarks/gpu_check.sh`` is the one-shot GPU check built on it.
* ``growth``: time vs pixels (64² .. 1024², K=21) and vs K (2 .. 60, 256²), table
  and PNG plot in ``benchmarks/out/``.
* ``crf3d``: ``DenseCRFLoss`` forward + backward on 1-channel volumes ``(1, 1, D, H, W)``,
  K=4 (features x, y, z, I: d=4), ``normalize=True``, ``spacing=(5, 1.5, 1.5)`` mm and
  ``sigma_xy=10`` mm, ``sigma_rgb=15``: 8x128², 16x256², 64x128² voxels (issue 15); the
  table adds ns per voxel, which is flat when the cost grows linearly in voxels.

Method. Every (case, backend) runs in a fresh child process so that one
measurement's allocations and caches do not leak into the next. The child builds
its inputs, runs the workload once (warm-up: numba kernels load from cache, torch
allocator warms up), then times ``--repeats`` runs (wall clock,
``time.perf_counter``) and reports median/min/max, plus the median CPU time of
the timed runs (``time.process_time``, all threads; on a shared machine it is
steadier than wall time, which also counts waiting for a core). Peak extra
memory is the resident-set high-water mark during the timed runs minus the
resident set before them: the child resets the kernel's high-water mark
(``/proc/self/clear_refs``, Linux) and reads ``VmHWM``; where that is
unavailable it reports ``ru_maxrss`` growth, which misses memory reused from
the warm-up. tracemalloc is not used: it
does not see torch's or numba's allocations. Inputs are synthetic piecewise-smooth
colour images (seeded), so runs are comparable across machines.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
RESULTS = HERE / "RESULTS.md"

BACKENDS = ("torch", "numba")
SIGMA_RGB = 15.0
SIGMA_XY = 50.0
FILTER_CASES = [
    (1, 21, 256, 256),
    (12, 21, 256, 256),
    (1, 21, 512, 512),
    (1, 2, 224, 224),
    (32, 2, 224, 224),
]
CRF_CASES = [(12, 21, 256, 256), (1, 21, 256, 256)]
CRF3D_CASES = [(1, 4, 8, 128, 128), (1, 4, 16, 256, 256), (1, 4, 64, 128, 128)]
CRF3D_SPACING = (5.0, 1.5, 1.5)
CRF3D_SIGMA_XY = 10.0
GROWTH_SIDES = [64, 128, 256, 512, 1024]
GROWTH_KS = [2, 5, 10, 21, 40, 60]
GROWTH_K = 21
GROWTH_SIDE = 256
STEP_BATCH = 2
STEP_SIZE = 256
STEP_CLASSES = 21


# ---------------------------------------------------------------- child side


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def synthetic_images(n: int, h: int, w: int, seed: int = 0):
    """``(n, 3, h, w)`` float32 0..255: smooth colour fields, a few flat blobs, mild noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 6, 6, generator=g) * 255
    img = F.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    for i in range(n):
        for _ in range(6):
            cy, cx, ry, rx = torch.rand(4, generator=g).tolist()
            inside = ((yy - cy) / (0.05 + 0.25 * ry)) ** 2 + (
                (xx - cx) / (0.05 + 0.25 * rx)
            ) ** 2 < 1
            colour = torch.rand(3, 1, 1, generator=g) * 255
            img[i] = torch.where(inside, colour, img[i])
    img += 4.0 * torch.randn(n, 3, h, w, generator=g)
    return img.clamp_(0, 255).contiguous()


def synthetic_volume(d: int, h: int, w: int, seed: int = 0):
    """``(1, 1, d, h, w)`` float32 0..255: a smooth 3-D field, a few flat ellipsoids, noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, 3, 6, 6, generator=g) * 255
    vol = F.interpolate(base, size=(d, h, w), mode="trilinear", align_corners=False)
    zz = torch.linspace(0, 1, d).view(d, 1, 1)
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    for _ in range(6):
        cz, cy, cx, rz, ry, rx, level = torch.rand(7, generator=g).tolist()
        inside = ((zz - cz) / (0.1 + 0.4 * rz)) ** 2 + ((yy - cy) / (0.05 + 0.25 * ry)) ** 2 + (
            (xx - cx) / (0.05 + 0.25 * rx)
        ) ** 2 < 1
        vol[0, 0] = torch.where(inside, torch.tensor(level * 255), vol[0, 0])
    vol += 4.0 * torch.randn(vol.shape, generator=g)
    return vol.clamp_(0, 255).contiguous()


def _probs(n: int, k: int, h: int, w: int, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h // 8 + 1, w // 8 + 1, generator=g) * 3
    logits = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear")
    return logits.softmax(1).contiguous()


def _value_and_grad(loss_fn, image, softmax):
    """The timed callable of the loss suites: the loss and its gradient in ``probs``."""
    import torch

    def run():
        probs = softmax.detach().requires_grad_(True)
        loss = loss_fn(image, probs)
        (grad,) = torch.autograd.grad(loss, probs)
        return grad

    return run


def _workload(spec: dict):
    """Return a zero-argument callable running one measured iteration."""
    import torch

    from rloss.lattice import Lattice, bilateral_features

    suite, backend = spec["suite"], spec["backend"]
    dev = torch.device(spec.get("device", "cpu"))
    if suite in ("filter", "growth"):
        n, k, h, w = spec["shape"]
        image = synthetic_images(n, h, w).to(dev)
        values = _probs(n, k, h, w).to(dev)

        def run():
            lat = Lattice(bilateral_features(image, SIGMA_RGB, SIGMA_XY), backend=backend)
            return lat.filter(values)

        return run
    if suite == "crf":
        from rloss.losses import DenseCRFLoss

        n, k, h, w = spec["shape"]
        image = synthetic_images(n, h, w).to(dev)
        loss_fn = DenseCRFLoss(weight=2e-9, sigma_rgb=SIGMA_RGB, sigma_xy=SIGMA_XY, backend=backend)
        logits = torch.randn(n, k, h, w, generator=torch.Generator().manual_seed(2))
        return _value_and_grad(loss_fn, image, logits.softmax(1).to(dev))
    if suite == "crf3d":
        from rloss.losses import DenseCRFLoss

        n, k, d, h, w = spec["shape"]
        image = synthetic_volume(d, h, w).to(dev)
        loss_fn = DenseCRFLoss(weight=1.0, sigma_rgb=SIGMA_RGB, sigma_xy=CRF3D_SIGMA_XY,
                               normalize=True, spacing=CRF3D_SPACING, backend=backend)
        logits = torch.randn(n, k, d // 4 + 1, h // 8 + 1, w // 8 + 1,
                             generator=torch.Generator().manual_seed(2)) * 3
        logits = torch.nn.functional.interpolate(logits, size=(d, h, w), mode="trilinear")
        return _value_and_grad(loss_fn, image, logits.softmax(1).contiguous().to(dev))
    if suite == "step":
        import segmentation_models_pytorch as smp

        from rloss.losses import DenseCRFLoss

        torch.manual_seed(0)
        model = smp.DeepLabV3Plus(
            encoder_name="mobilenet_v2", encoder_weights=None, classes=STEP_CLASSES
        ).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        g = torch.Generator().manual_seed(3)
        n, s = spec.get("step_batch", STEP_BATCH), spec.get("step_size", STEP_SIZE)
        image = synthetic_images(n, s, s)
        x = ((image / 255.0 - 0.45) / 0.225).to(dev)
        labels = torch.randint(0, STEP_CLASSES, (n, s, s), generator=g)
        labels[torch.rand(n, s, s, generator=g) > 0.03] = 255
        image, labels = image.to(dev), labels.to(dev)
        crf = (
            DenseCRFLoss(
                weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, scale_factor=0.5, backend=backend
            )
            if spec["with_crf"]
            else None
        )

        def run():
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
            if crf is not None:
                loss = loss + crf(image, logits.softmax(1))
            loss.backward()
            opt.step()
            return loss

        model.train()
        return run
    raise ValueError(f"unknown suite {suite!r}")


def child_main(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    cuda = spec.get("device", "cpu") == "cuda"
    work = _workload(spec)

    def run():
        out = work()
        if cuda:
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    run()  # warm-up
    first = time.perf_counter() - t0
    import gc

    gc.collect()
    try:  # idle pooled memory would hide in the baseline: the peak must include it
        from rloss.lattice import _pool
    except ImportError:  # older checkouts (before the pool)
        pass
    else:
        _pool.clear()
    base = _rss_kib("VmRSS")
    exact_peak = _reset_peak() and base is not None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu = [], []
    for _ in range(spec["repeats"]):
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del out
    if cuda:
        peak_kib = (torch.cuda.max_memory_allocated() - cuda_base) / 1024
        method = "cuda max_memory_allocated"
    elif exact_peak:
        peak_kib = (_rss_kib("VmHWM") or 0) - base
        method = "VmHWM"
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0
        method = "maxrss"
    return {
        "times_ms": [1e3 * t for t in times],
        "cpu_ms": [1e3 * t for t in cpu],
        "first_ms": 1e3 * first,
        "peak_mib": max(peak_kib, 0) / 1024.0,
        "mem_method": method,
    }


# --------------------------------------------------------------- parent side


def _run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_case(spec: dict) -> str:
    if spec["suite"] == "step":
        b, s = spec.get("step_batch", STEP_BATCH), spec.get("step_size", STEP_SIZE)
        return f"train step B={b} {s}² " + (
            "+DenseCRF" if spec["with_crf"] else "pCE only"
        )
    if spec["suite"] == "crf3d":
        n, k, d, h, w = spec["shape"]
        return f"DenseCRF 3-D fwd+bwd N={n} K={k} {d}x{h}x{w}"
    n, k, h, w = spec["shape"]
    what = {"filter": "build+filter", "crf": "DenseCRF fwd+bwd", "growth": "build+filter"}[
        spec["suite"]
    ]
    return f"{what} N={n} K={k} {h}x{w}"


def _table(rows: list[tuple[dict, dict]]) -> str:
    """Markdown table; ratio = median / fastest median among the backends of that case."""
    best: dict[str, float] = {}
    for spec, res in rows:
        if "times_ms" in res:
            med = statistics.median(res["times_ms"])
            key = _fmt_case(spec)
            best[key] = min(best.get(key, float("inf")), med)
    lines = [
        "| case | backend | median ms | min ms | max ms | CPU ms | peak extra MiB | x fastest |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for spec, res in rows:
        key = _fmt_case(spec)
        if "times_ms" not in res:
            lines.append(
                f"| {key} | {spec['backend']} | – | – | – | – | – | {res.get('error', '?')} |"
            )
            continue
        t = res["times_ms"]
        med = statistics.median(t)
        cpu = f"{statistics.median(res['cpu_ms']):.1f}" if res.get("cpu_ms") else "–"
        lines.append(
            f"| {key} | {spec['backend']} | {med:.1f} | {min(t):.1f} | {max(t):.1f} | {cpu} | "
            f"{res['peak_mib']:.0f} | {med / best[key]:.2f} |"
        )
    return "\n".join(lines)


def _per_voxel(rows: list[tuple[dict, dict]]) -> str:
    """Median ns and peak extra bytes per voxel of each volume case (flat = linear)."""
    lines = ["| case | backend | voxels | median ns / voxel | peak extra B / voxel |",
             "|---|---|---:|---:|---:|"]
    for spec, res in rows:
        if "times_ms" not in res:
            continue
        n, _, d, h, w = spec["shape"]
        vox = n * d * h * w
        lines.append(
            f"| {_fmt_case(spec)} | {spec['backend']} | {vox} | "
            f"{1e6 * statistics.median(res['times_ms']) / vox:.0f} | "
            f"{res['peak_mib'] * 2**20 / vox:.0f} |"
        )
    return "\n".join(lines)


def _gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=False,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _plot(growth: list[tuple[dict, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in BACKENDS:
        px = [
            (s["shape"][2] * s["shape"][3], statistics.median(r["times_ms"]))
            for s, r in growth
            if s["backend"] == backend and s["axis"] == "pixels" and "times_ms" in r
        ]
        ks = [
            (s["shape"][1], statistics.median(r["times_ms"]))
            for s, r in growth
            if s["backend"] == backend and s["axis"] == "K" and "times_ms" in r
        ]
        if px:
            ax1.loglog(*zip(*px), "o-", label=backend)
        if ks:
            ax2.plot(*zip(*ks), "o-", label=backend)
    ax1.set_xlabel(f"pixels (N=1, K={GROWTH_K})")
    ax1.set_ylabel("build + filter, median ms")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    ax2.set_xlabel(f"K (N=1, {GROWTH_SIDE}x{GROWTH_SIDE})")
    ax2.set_ylabel("build + filter, median ms")
    ax2.grid(True, alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=100)
    os.replace(tmp.name, path)
    plt.close(fig)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def _specs(args) -> list[dict]:
    specs: list[dict] = []
    rep = args.repeats
    for suite in args.suites:
        for backend in args.backends:
            base = {
                "suite": suite,
                "backend": backend,
                "repeats": rep,
                "threads": args.threads,
                "device": args.device,
            }
            if suite == "filter":
                cases = FILTER_CASES[:2] + FILTER_CASES[3:4] if args.quick else FILTER_CASES
                specs += [{**base, "shape": list(c)} for c in cases]
            elif suite == "crf":
                specs += [{**base, "shape": list(c)} for c in CRF_CASES]
            elif suite == "crf3d":
                specs += [{**base, "shape": list(c)} for c in CRF3D_CASES]
            elif suite == "step":
                specs += [
                    {
                        **base,
                        "with_crf": flag,
                        "step_batch": args.step_batch,
                        "step_size": args.step_size,
                    }
                    for flag in (False, True)
                ]
            elif suite == "growth":
                sides = GROWTH_SIDES[:4] if args.quick else GROWTH_SIDES
                specs += [{**base, "axis": "pixels", "shape": [1, GROWTH_K, s, s]} for s in sides]
                specs += [
                    {**base, "axis": "K", "shape": [1, k, GROWTH_SIDE, GROWTH_SIDE]}
                    for k in GROWTH_KS
                ]
    if args.cases:
        specs = [s for s in specs if any(c in _fmt_case(s) for c in args.cases)]
    # the training step "without" the regularizer does not depend on the backend
    seen = set()
    out = []
    for s in specs:
        key = (s["suite"], s.get("with_crf"))
        if s["suite"] == "step" and not s["with_crf"]:
            if key in seen:
                continue
            seen.add(key)
            s = {**s, "backend": "-"}
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--suites",
        nargs="+",
        default=["filter", "crf", "step", "growth", "crf3d"],
        choices=["filter", "crf", "step", "growth", "crf3d"],
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        choices=list(BACKENDS),
        help="lattice backends (default: torch and numba on cpu, torch on cuda)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the workloads run"
    )
    parser.add_argument(
        "--step-batch", type=int, default=STEP_BATCH, help="batch of the training-step suite"
    )
    parser.add_argument(
        "--step-size", type=int, default=STEP_SIZE, help="crop side of the training-step suite"
    )
    parser.add_argument(
        "--cases", nargs="+", help="keep only cases whose label contains one of these strings"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the children")
    parser.add_argument("--quick", action="store_true", help="2 repeats, fewer sizes")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for tables and the plot")
    parser.add_argument(
        "--record", action="store_true", help="prepend this run to benchmarks/RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.step_batch < 2 or args.step_size < 32:
        parser.error(  # batch norm in training mode needs two samples
            f"--step-batch must be >= 2 and --step-size >= 32, got {args.step_batch}, "
            f"{args.step_size}"
        )
    if args.backends is None:
        args.backends = ["torch"] if args.device == "cuda" else list(BACKENDS)
    if args.device == "cuda":
        if "numba" in args.backends:
            parser.error("--device cuda: the numba backend is CPU-only; use --backends torch")
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")

    specs = _specs(args)
    rows: list[tuple[dict, dict]] = []
    try:
        from tqdm import tqdm

        it = tqdm(specs, desc="benchmarks", unit="case", file=sys.stderr)
    except ImportError:
        it = specs
    for spec in it:
        rows.append((spec, _run_child(spec, args.timeout)))

    main_rows = [r for r in rows if r[0]["suite"] not in ("growth", "crf3d")]
    growth = [r for r in rows if r[0]["suite"] == "growth"]
    vol_rows = [r for r in rows if r[0]["suite"] == "crf3d"]
    parts = []
    if main_rows:
        parts.append(_table(main_rows))
    if vol_rows:
        parts.append("Volumes (DenseCRF loss value + gradient, 1 channel, d = 4):\n\n"
                     + _table(vol_rows) + "\n\n" + _per_voxel(vol_rows))
    steps = {
        r[0]["with_crf"]: r[1] for r in main_rows if r[0]["suite"] == "step" and "times_ms" in r[1]
    }
    step_lines = []
    if False in steps:
        base = statistics.median(steps[False]["times_ms"])
        for spec, res in main_rows:
            if spec["suite"] == "step" and spec["with_crf"] and "times_ms" in res:
                ratio = statistics.median(res["times_ms"]) / base
                step_lines.append(
                    f"- training step with/without DenseCRF ({spec['backend']}): {ratio:.2f}x"
                )
    if step_lines:
        parts.append("\n".join(step_lines))
    if growth:
        parts.append("Cost growth (build + filter):\n\n" + _table(growth))
        png = args.out / "growth.png"
        _plot(growth, png)
        parts.append(
            f"Plot: `{png.relative_to(HERE.parent) if png.is_relative_to(HERE.parent) else png}`"
        )
    mem = {r[1].get("mem_method") for r in rows if "mem_method" in r[1]}
    report = "\n\n".join(parts)
    print(report)

    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cmd = "python benchmarks/run.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    header = (
        f"## {date}\n\n- machine: {_machine()}\n- command: `{cmd.strip()}`\n- commit: {_commit()}\n"
        + (f"- device: cuda, {_gpu()}\n" if args.device == "cuda" else "")
        + f"- torch threads: {args.threads or 'default'}; "
        f"memory method: {', '.join(sorted(mem)) or '-'}; "
        f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset')}\n"
    )
    entry = header + "\n" + report + "\n"
    _write_atomic(args.out / "latest.md", entry)
    _write_atomic(
        args.out / "latest.json", json.dumps([{"spec": s, "result": r} for s, r in rows], indent=1)
    )
    if args.record:
        old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nNewest first.\n"
        head, sep, rest = old.partition("\n## ")
        new = head.rstrip() + "\n\n" + entry + ("\n## " + rest if sep else "")
        _write_atomic(RESULTS, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
