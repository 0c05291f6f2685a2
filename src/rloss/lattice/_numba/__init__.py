"""Fast CPU backend of the permutohedral lattice, compiled with numba.

Same lattice as the rloss reference (Krähenbühl's ``permutohedral.cpp`` as
adapted by CRF-as-RNN; see :mod:`rloss.lattice`): elevation with
``scale_i = sqrt(2/3) (d+1) / sqrt((i+1)(i+2))`` (:mod:`rloss.lattice._common`),
rounding to the nearest remainder-0 point, rank and barycentric weights in
float32, d+1 blur passes of ``v + 0.5 (v[n1] + v[n2])`` (a missing neighbour
counts as 0) and slicing with ``alpha = 1 / (1 + 2^-d)``. All loops are
compiled; nothing loops over pixels or channels in Python.

Map of the package (each module's docstring has the details):

============== ==============================================================
``_layout``    tasks: ``N * B`` pixel blocks, ``B`` a function of the shapes
               only (results never depend on the thread count); loop sizes
``_hashtable`` the vertex hash and the open-addressing tables, full and packed
               keys: probe, insert, rehash, written once
``_embed``     elevation, rounding, ranks, barycentric weights (one
               ``embed_block`` for every path); the range pass; key packing
``_build``     the batch build: local numbering, merge, offsets, neighbours,
               CSR; ``LatticeArrays``, the arrays the kernels take
``_simd``      fixed-width vector row operations (LLVM vector IR); rows are
               padded to a multiple of ``LANES`` = 8 channels; 8x8 transposes
``_filter``    splat, reduce, blur, slice (``W v`` for any number of channels)
``_quadratic`` the fused quadratic form ``Σ_k s_kᵀ W (r − s_k)`` and its
               gradient, batch and per image (build to slice in one kernel, one
               ``nogil`` task per image on :func:`._team.run`;
               fewer than 8 images: the same in phases of block tasks)
``lattice``    ``NumbaLattice`` (validation, orchestration) and ``build``
============== ==============================================================

How a build proceeds: in parallel over tasks, pixels are embedded in blocks
of ``EMBED`` pixels laid out coordinate-major (the loops over pixels
vectorise) and their vertices numbered in a task-local table; then, in
parallel over images, task-local vertices are merged into one table per
image (global ids, contiguous per image); blur neighbours are looked up once
and stored. Per pixel the build keeps only the d+1 (task-local id, vertex,
weight) triples that splat and slice reuse. Keys are *packed* into one int64
when the coordinate ranges fit (the usual case; ``BuildOptions(keys=...)``
chooses), else kept in full; both give bitwise identical lattices.

Choices callers can make are in :class:`rloss.lattice.BuildOptions` (key
strategy, the serial threshold, the fused path, the first table size); the
only state carried from one build to the next is the table size hint, an
explicit :class:`rloss.lattice.CapacityHint`. Large arrays come from
:mod:`rloss.lattice._pool`, which reuses the memory of arrays nothing refers
to any more (no page faults through ~200 MB of fresh memory per step).

Kernels are compiled with ``cache=True``: the first call in a new process
loads them from numba's on-disk cache; with an empty cache the first lattice
says once (logger ``rloss.lattice``) that it is compiling. The cache is dropped
when any source of the package changes (a hash stamp in ``__pycache__``), since
numba itself only notices a change to the file that defines a kernel.

Glossary of the short names in the kernels:

* ``N, P, d, dp1``: images, pixels per image, feature dimension, ``d + 1``.
* ``K``/``k``, ``nch``: value channels.
* ``e``, entry: one of a pixel's d+1 vertices, ``e = (n * P + p) * dp1 + r``.
* ``t``, task: a pixel block of one image; ``nblk`` blocks per image.
* ``loc``: task-local vertex id per entry; ``loff[t]``: task ``t``'s first slot.
* slot: a task-local vertex (``loff[t] + loc``); ``lmap``: slot -> image vertex.
* ``vid``, ``obase``: entry's global vertex is ``obase[t] + vid[e]``.
* ``bary``: barycentric weight per entry.
* ``nbr[j, v]``: the two blur neighbours of vertex ``v`` along direction ``j``.
* ``ptr``, ``idx``: CSR vertex -> slots (splat reduction, ``nblk > 1`` only).
* ``gk``, ``hh``: full keys and hashes (full keys); ``hh`` holds the packed
  key itself with packed keys. ``gsrc``: the entry row of a vertex's key.
* ``pbase, plim, pu``: packing of key coordinate ``i``: ``(k[i] - pbase[i]) * pu[i]``.
* ``r0``, ``rk``, ``el``: remainder-0 point, ranks, elevated point.
* ``tcap``, ``toff``: per-image table capacity and offset.
* ``s_*``: per-thread scratch rows of the fused per-image kernel (``slot`` = thread).
* ``W``/``width``: padded row width, a multiple of ``LANES``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _invalidate_stale_cache(package_dir: Path) -> bool:
    """Drop numba's on-disk cache of this package when any of its sources changed.

    numba keys a cached kernel on its own file's timestamp only, so a constant
    that one module imports from another (``_layout.TILE`` in ``_filter``) can
    change under a stale kernel, which then reads out of bounds. One stamp, the
    hash of every source of the package, guards all of them. Returns whether the
    cache was dropped; an unwritable ``__pycache__`` (numba then uses its own
    per-user cache) is left to numba.
    """
    digest = hashlib.sha256()
    for src in sorted(package_dir.glob("*.py")):
        digest.update(src.name.encode())
        digest.update(src.read_bytes())
    stamp = package_dir / "__pycache__" / "rloss-kernels.sha256"
    want = digest.hexdigest()
    try:
        if stamp.read_text() == want:
            return False
    except OSError:
        pass
    try:
        stamp.parent.mkdir(exist_ok=True)
        for cached in list(stamp.parent.glob("*.nbi")) + list(stamp.parent.glob("*.nbc")):
            cached.unlink(missing_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(want)
        os.replace(tmp, stamp)
    except OSError:
        return False
    return True


_invalidate_stale_cache(Path(__file__).resolve().parent)

from rloss.lattice._numba._build import BuildInfo, LatticeArrays  # noqa: E402
from rloss.lattice._numba.lattice import CHECKS_FINITE, NumbaLattice, build  # noqa: E402

__all__ = ["CHECKS_FINITE", "BuildInfo", "LatticeArrays", "NumbaLattice", "build"]
