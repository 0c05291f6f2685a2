"""Wall and CPU time of ``rloss segment`` on a 500x375 photograph, one new process per run.

The test case is the shipped ``coffee.png`` (320x213) resized bicubic to 500x375 (the VOC
size), with its polyline scribbles scaled to match (coordinates rounded; strokes stay
3 pixels wide). Both files are written to ``--work`` (default ``/tmp``:
``coffee500.png``, ``coffee500.txt``). Each variant (a string of extra ``rloss segment``
flags) is run ``--runs`` times, interleaved, as::

    python -m rloss.cli segment coffee500.png --scribbles coffee500.txt --out MASK \\
        --quiet --overwrite [FLAGS]

with the environment of this process (set ``PYTHONPATH`` to the checkout's ``src``).
Prints, per run, the wall time and the child's user and system CPU time
(``resource.getrusage``) with the 1-minute load average before it, then the medians.

With ``--batch N`` each round also runs one batch-mode process on ``N`` copies of the case
(``rloss segment BATCH/img --scribbles BATCH/scr --out BATCH/out``, default flags) and
reports its times divided by ``N``: the per-photograph cost once ``import torch`` is paid
once.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/segment_time.py --runs 5
    PYTHONPATH=src .venv/bin/python benchmarks/segment_time.py --runs 3 --batch 5
    PYTHONPATH=src .venv/bin/python benchmarks/segment_time.py --runs 5 --variant "" \\
        --variant "--threads 1"

The first run after a fresh install compiles nothing for the default (torch) lattice
backend; with ``--variant "--backend numba"`` the first run fills numba's cache (minutes),
so do one run first and discard it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

SIZE = (500, 375)


def make_case(work: Path) -> tuple[Path, Path]:
    """Write ``coffee500.png`` and ``coffee500.txt`` to ``work``; return their paths."""
    import numpy as np
    from PIL import Image

    from rloss.data.io import read_image, write_image

    src = Path(str(resources.files("rloss") / "examples"))
    img = read_image(src / "coffee.png")
    h, w = img.shape[:2]
    sx, sy = SIZE[0] / w, SIZE[1] / h
    big = np.asarray(Image.fromarray(img).resize(SIZE, Image.BICUBIC))
    work.mkdir(parents=True, exist_ok=True)
    png, txt = work / "coffee500.png", work / "coffee500.txt"
    write_image(png, big)
    lines = []
    for line in (src / "coffee_scribbles.txt").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        label, *coords = line.split(",")
        scaled = [round(float(c) * (sx if i % 2 == 0 else sy)) for i, c in enumerate(coords)]
        lines.append(",".join([label.strip(), *map(str, scaled)]))
    txt.write_text("\n".join(lines) + "\n")
    return png, txt


def make_batch(png: Path, txt: Path, work: Path, n: int) -> tuple[Path, Path, Path]:
    """``n`` copies of the case in batch-mode folders: ``work/img``, ``work/scr``, ``work/out``."""
    import shutil

    img, scr, out = work / "img", work / "scr", work / "out"
    for folder in (img, scr):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for i in range(n):
        shutil.copyfile(png, img / f"photo{i}.png")
        shutil.copyfile(txt, scr / f"photo{i}.txt")
    return img, scr, out


def run_once(png: Path, txt: Path, out: Path, flags: list[str]) -> tuple[float, float, float]:
    """(wall, user, sys) seconds of one ``rloss segment`` process (paths: files or folders)."""
    cmd = [
        sys.executable,
        "-m",
        "rloss.cli",
        "segment",
        str(png),
        "--scribbles",
        str(txt),
        "--out",
        str(out),
        "--quiet",
        "--overwrite",
        *flags,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp"), help="where the case is written")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--variant",
        action="append",
        default=None,
        help="extra rloss segment flags (repeatable; default: none)",
    )
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="also time one batch-mode process on N copies, per photograph")
    args = ap.parse_args(argv)
    variants = args.variant if args.variant else [""]
    png, txt = make_case(args.work)
    out = args.work / "coffee500_mask.png"
    batch_name = f"batch of {args.batch}, per photograph"
    if args.batch > 0:
        batch = make_batch(png, txt, args.work / "coffee500_batch", args.batch)
        variants = [*variants, batch_name]
    times: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for i in range(args.runs):
        for v in variants:
            load = os.getloadavg()[0]
            if v == batch_name:
                t = run_once(*batch, [])
                wall, user, sys_ = (x / args.batch for x in t)
            else:
                wall, user, sys_ = run_once(png, txt, out, v.split())
            times[v].append((wall, user, sys_))
            print(
                f"run {i + 1} [{v or 'defaults'}] load {load:.2f}: wall {wall:.2f} s, "
                f"user {user:.2f} s, sys {sys_:.2f} s",
                flush=True,
            )
    for v, rows in times.items():
        med = [statistics.median(r[j] for r in rows) for j in range(3)]
        print(
            f"median of {len(rows)} [{v or 'defaults'}]: wall {med[0]:.2f} s, "
            f"user {med[1]:.2f} s, sys {med[2]:.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
