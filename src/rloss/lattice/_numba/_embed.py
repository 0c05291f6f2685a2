"""Embedding of features into the lattice: elevation, rounding, ranks, barycentric weights;
the range pass that validates features; and the packing of vertex keys into one int64.

``embed_block`` is the only place pixels are embedded: every build path (full
keys, packed keys, fused per image) calls it, so they embed bit for bit alike.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rloss._threads import lattice_threads
from rloss.lattice._common import elevation_scales
from rloss.lattice._numba import _team
from rloss.lattice._numba._simd import LANES, vfold

#: Vertex keys are packed into one int64 when their coordinate ranges need at most
#: this many bits (else the full-key path runs).
PACK_BITS = 62
#: Pixels per block of the range pass (block rows are read as one contiguous run).
RANGE_BLOCK = 64


def scales(d: int) -> np.ndarray:
    """The ``(d,)`` float32 elevation scales (:func:`rloss.lattice._common.elevation_scales`)."""
    return np.array(elevation_scales(d), np.float32)


@njit(cache=True)
def embed_block(feats, scale, n, q0, nb, e_first, el, r0, rk, sm, ssum, vr, bary):
    """Embed pixels ``q0 .. q0+nb`` of image ``n`` into the lattice (one block).

    Writes the rounded remainder-0 point ``r0``, the ranks ``rk`` (both
    ``(d+1, nb)``) and the pixels' barycentric weights into ``bary`` (pixel
    ``q0 + b`` at entries ``e_first + b * (d+1) ...``); ``el``,
    ``sm``, ``ssum`` and ``vr`` are scratch. Shared by both build kernels so
    that the packed and the full-key paths embed bit for bit alike.
    """
    d = feats.shape[2]
    dp1 = d + 1
    down = np.float32(1.0 / dp1)
    upf = np.float32(dp1)
    # elevate onto the hyperplane sum(x) = 0 in R^(d+1)
    for b in range(nb):
        sm[b] = 0.0
        ssum[b] = 0
    fb = feats[n, q0 : q0 + nb]  # a view: indices provably >= 0, no wraparound code
    for j in range(d, 0, -1):
        sc = scale[j - 1]
        fj = np.float32(j)
        for b in range(nb):
            cf = fb[b, j - 1] * sc
            el[j, b] = sm[b] - fj * cf
            sm[b] += cf
    for b in range(nb):
        el[0, b] = sm[b]
    # nearest remainder-0 point (branch-free, so that it vectorises)
    for i in range(dp1):
        for b in range(nb):
            e = el[i, b]
            v = down * e
            cv = np.float32(np.ceil(v))
            fv = np.float32(np.floor(v))
            up = np.int32(cv * upf - e < e - fv * upf)
            qi = np.int32(fv) + up * (np.int32(cv) - np.int32(fv))
            r0[i, b] = qi * dp1
            ssum[b] += qi
            rk[i, b] = 0
    # rank of each coordinate's differential (ties go to the later coordinate)
    for i in range(d):
        for j in range(i + 1, dp1):
            for b in range(nb):
                lt = np.int32(el[i, b] - np.float32(r0[i, b]) < el[j, b] - np.float32(r0[j, b]))
                rk[i, b] += lt
                rk[j, b] += 1 - lt
    # back onto the plane
    for i in range(dp1):
        for b in range(nb):
            x = rk[i, b] + ssum[b]
            wrap = np.int32(x < 0) - np.int32(x > d)
            rk[i, b] = x + wrap * dp1
            r0[i, b] += wrap * dp1
    # barycentric coordinates: with vr[m] = the differential of rank d - m
    # (one per m, rk is a permutation), bary[m] = vr[m] - vr[m - 1] and
    # bary[0] = vr[0] + 1 - vr[d]; the same roundings as the reference's
    # scatter (x + 0 is exact)
    for m in range(dp1):
        for b in range(nb):
            vr[m, b] = 0.0
    for i in range(dp1):
        for m in range(dp1):
            dm = d - m
            for b in range(nb):
                vi = (el[i, b] - np.float32(r0[i, b])) * down
                vr[m, b] += vi if rk[i, b] == dm else np.float32(0.0)
    for b in range(nb):
        e0 = e_first + b * dp1
        bary[e0] = np.float32(np.float64(vr[0, b]) + (1.0 + np.float64(-vr[d, b])))
        for m in range(1, dp1):
            bary[e0 + m] = vr[m, b] - vr[m - 1, b]


@njit(cache=True, nogil=True)
def ranges_image(n, slot, f, part, nonfinite):
    """Minimum and maximum per dimension of image ``n`` of ``f`` ``(N, P, d)`` into
    ``part[n]`` ``(2, d)``; ``nonfinite[n]``: whether it holds a NaN or an infinity
    (``x - x`` is NaN exactly then). Releases the GIL (a task of :func:`ranges`).

    The image is read as consecutive runs of ``RANGE_BLOCK * d`` values folded
    element-wise into running minima, maxima and ``x - x`` sums, ``LANES`` at a time
    (:func:`~._simd.vfold`: numba's loop vectoriser left this loop scalar, 4.4 ms
    for 12 images of 256² on one thread); the lanes are reduced per dimension at the end.
    """
    npix, d = f.shape[1], f.shape[2]
    run = RANGE_BLOCK * d
    flat = f[n].reshape(npix * d)
    mn = np.empty(run, np.float32)
    mx = np.empty(run, np.float32)
    z = np.zeros(run, np.float32)
    for j in range(run):
        x = flat[j % d]  # pixel 0, dimension j mod d
        mn[j] = x
        mx[j] = x
    full = (npix // RANGE_BLOCK) * run
    for start in range(0, full, run):
        for j in range(0, run, LANES):  # RANGE_BLOCK is a multiple of LANES
            vfold(mn, mx, z, j, flat, start + j)
    for j in range(full, npix * d):  # the last partial run
        x = flat[j]
        i = j % d
        z[i] += x - x
        mn[i] = x if x < mn[i] else mn[i]
        mx[i] = x if x > mx[i] else mx[i]
    bad = False
    for i in range(d):
        part[n, 0, i] = mn[i]
        part[n, 1, i] = mx[i]
    for j in range(run):
        i = j % d
        bad |= z[j] != z[j]
        part[n, 0, i] = min(part[n, 0, i], mn[j])
        part[n, 1, i] = max(part[n, 1, i], mx[j])
    nonfinite[n] = bad


@njit(cache=True, nogil=True)
def ranges_image_team(nthreads, hdr, args):
    _team.team(ranges_image, nthreads, hdr, args)


def ranges(f: np.ndarray, nthreads: int | None = None) -> np.ndarray:
    """Per-dimension minimum and maximum of ``f`` ``(N, P, d)``: ``(2, d)`` float32 (row 0:
    min); all NaN when ``f`` holds a NaN or an infinity. One task per image
    (:func:`ranges_image`, :func:`._team.run` on ``nthreads``; ``None``:
    :func:`rloss._threads.lattice_threads`)."""
    n_img, _, d = f.shape
    part = np.empty((n_img, 2, d), np.float32)
    nonfinite = np.zeros(n_img, np.bool_)
    if nthreads is None:
        nthreads = lattice_threads()
    _team.run(ranges_image_team, ranges_image, n_img, nthreads, (f, part, nonfinite))
    if nonfinite.any():
        return np.full((2, d), np.nan, np.float32)
    return np.stack([part[:, 0].min(0), part[:, 1].max(0)])


def pack_params(lo: np.ndarray, hi: np.ndarray, scale: np.ndarray) -> tuple | None:
    """Packing of vertex keys into one int64, or None when they do not fit in ``PACK_BITS``.

    Bounds each elevated coordinate by interval arithmetic on the per-dimension
    feature ranges, widened by a margin (rounding, the simplex's vertices and
    their blur neighbours stay within a few ``d+1`` of it). Coordinate ``i`` of a
    key is stored as ``(k[i] - pbase[i])`` in its own bit field (``pu[i]`` = the
    field's unit; ``pu[d] = 0`` for the implicit coordinate). The kernel still
    checks every remainder-0 point against ``plim`` and falls back if one is out.
    """
    d = scale.shape[0]
    dp1 = d + 1
    lo = lo.astype(np.float64) * scale.astype(np.float64)
    hi = hi.astype(np.float64) * scale.astype(np.float64)
    margin = 4 * dp1 + 4
    pbase = np.empty(d, np.int64)
    plim = np.empty(d, np.int64)
    pu = np.zeros(dp1, np.int64)
    shift = 0
    for i in range(d):
        # el[i] = sum_{k >= i} cf[k] - i * cf[i - 1], cf[k] = f[k] * scale[k]
        e_lo, e_hi = lo[i:].sum(), hi[i:].sum()
        if i > 0:
            e_lo -= i * hi[i - 1]
            e_hi -= i * lo[i - 1]
        base = math.floor(e_lo) - margin
        width = math.ceil(e_hi) + margin - base + 1
        bits = int(width).bit_length()
        pbase[i] = base
        plim[i] = (1 << bits) - 2 * dp1
        pu[i] = 1 << shift
        shift += bits
        if shift > PACK_BITS:
            return None
    return pbase, plim, pu
