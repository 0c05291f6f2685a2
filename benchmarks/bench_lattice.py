"""The lattice benchmark of issue 2: build + filter per backend, median ms and peak memory.

Cases (N, K, H, W) = (1, 21, 256, 256), (12, 21, 256, 256), (1, 21, 512, 512),
(1, 2, 224, 224), (32, 2, 224, 224); sigma_rgb=15, sigma_xy=50. It is the
``filter`` suite of ``benchmarks/run.py`` (same options, e.g. ``--backends numba``,
``--record``)::

    .venv/bin/python benchmarks/bench_lattice.py
"""

from __future__ import annotations

import sys

from run import main  # benchmarks/ is the script's directory, first on sys.path

if __name__ == "__main__":
    sys.exit(main(["--suites", "filter", *sys.argv[1:]]))
