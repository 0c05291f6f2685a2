"""Fast CPU backend of the permutohedral lattice, compiled with numba.

Same lattice as the rloss reference (Krähenbühl's ``permutohedral.cpp`` as
adapted by CRF-as-RNN; see :mod:`rloss.lattice`): elevation with
``scale_i = sqrt(2/3) (d+1) / sqrt((i+1)(i+2))``, rounding to the nearest
remainder-0 point, rank and barycentric weights in float32, d+1 blur passes of
``v + 0.5 (v[n1] + v[n2])`` (a missing neighbour counts as 0) and slicing with
``alpha = 1 / (1 + 2^-d)``.

How the work is laid out (all loops are compiled; nothing loops over pixels
or channels in Python):

* **Tasks.** The pixels of the batch are cut into ``N * B`` tasks, ``B``
  contiguous pixel blocks per image, ``B`` a function of ``(N, P)`` only
  (one block per image when the batch alone keeps the threads busy). The
  numerical result therefore never depends on the number of threads.
* **Build.** In parallel over tasks, pixels are elevated, rounded, ranked and
  given barycentric weights in blocks of ``_EMBED`` pixels laid out
  coordinate-major, with branch-free arithmetic so that the loops over pixels
  vectorise (the float32 operations are those of the reference, in the same
  order). Each distinct simplex (remainder-0 point + ranks) is hashed once per
  task; only a simplex not seen before in the task hashes its d+1 vertices
  into the task-local open-addressing table, walking from vertex to vertex
  (each step adds ``(1, ..., 1) - (d+1) e_j`` to the key and a constant to its
  polynomial hash). Table slots hold the id and the
  hash's high bits, so a probe reads one cache line; a candidate is accepted
  only after a full key comparison (the d integer coordinates; the image is
  implicit because tables never span images). Then, in parallel over images,
  the task-local vertices are merged into one table per image, giving global
  vertex ids (contiguous per image). Blur neighbours are looked up once, in
  parallel over vertices, and stored (the hash of a neighbour is the vertex's
  polynomial hash plus a constant per direction: no rehashing of keys). Per
  pixel the build keeps only the d+1 (task-local id, vertex, weight) triples
  that splat and slice reuse (int32 ids relative to a per-task base, float32
  weights); with one task per image the vertex is the task-local id.
* **Packed keys** (the usual case). When the coordinate ranges, bounded from
  the per-dimension feature ranges, fit in ``_PACK_BITS`` bits, each vertex key
  is packed into one int64 and the tables hold (packed key, id) pairs: a probe
  is one load and one compare, the d+1 probes of a simplex are independent, a
  blur neighbour's key is the vertex's packed key plus or minus a constant, and
  no simplex table is needed (``_build_local_packed``). The kernel checks every
  remainder-0 point against the packed range; if one is out, the build reruns on
  the full-key path above, so keys never collide silently. Both paths give
  bitwise identical lattices.
* **Filter** ``(N, C, P)``: values live as ``(vertices, C)`` rows, class index
  innermost, all C channels in one pass. Splat scatters each pixel into its
  task's private rows (race-free); with ``B > 1`` the private rows are summed
  per vertex through a precomputed vertex -> slots list in a fixed order
  (deterministic). Splat and slice move pixels in tiles of ``_TILE``, turning
  the ``(C, tile)`` block of the ``(N, C, P)`` tensor into ``(tile, C)`` rows in
  cache, so both the tensor and the lattice rows are read and written
  contiguously. Blur and slice are parallel over vertices and pixels.

* **Potts** (:meth:`NumbaLattice.potts`, behind
  :meth:`rloss.lattice.Lattice.potts` and the DenseCRF loss): the splat reads
  ``probs`` and ``roi`` and forms the ``K + 1`` channels ``[probs * roi, roi]``
  tile by tile, and the slice contracts ``[W S, W roi]`` straight into the
  per-image energy and the gradient. No ``(N, K + 1, P)`` tensor is written
  and no elementwise pass over one follows.
* **Memory**: large arrays come from :mod:`rloss.lattice._pool`, which reuses
  the memory of arrays nothing refers to any more, so that a training step
  does not page-fault its way through some 200 MB of fresh memory.

Kernels are compiled with ``cache=True``: the first call in a new process
loads them from numba's on-disk cache instead of compiling.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from rloss.lattice import _pool

__all__ = ["CHECKS_FINITE", "NumbaLattice", "build"]

#: :func:`build` itself rejects NaN/Inf features (in its range pass), so
#: :class:`rloss.lattice.Lattice` skips its own check for this backend.
CHECKS_FINITE = True

#: A task (pixel block) never has fewer pixels than this, unless the image does.
_MIN_BLOCK = 4096
#: Split images into blocks until the batch has at least this many tasks.
_MIN_TASKS = 8
#: Rows processed per parallel chunk in vertex loops (amortises scratch allocation).
_CHUNK = 2048
#: Pixels embedded together, coordinate-major, so that the inner loops vectorise.
_EMBED = 64
#: Pixels per tile in splat and slice (transposes (C, tile) <-> (tile, C) in cache).
_TILE = 16
#: Initial capacity of a task-local hash table (a power of two; it grows by doubling).
_TABLE0 = 4096
#: Batches with fewer pixels run on one thread: below this, the cost of waking
#: and synchronising threads (several ms per parallel region on a busy machine)
#: exceeds the work. The results do not depend on the thread count.
_SERIAL_PIXELS = 32768
#: Low 32 bits of a hash table entry: the id (see ``_tag``).
_ID_MASK = np.int64(0xFFFFFFFF)
#: Largest |elevated coordinate| accepted: keys and their neighbours must fit int32.
_MAX_COORD = 2.0**30
#: Vertex keys are packed into one int64 when their coordinate ranges need at most
#: this many bits (else the full-key path runs; set to 0 to force it).
_PACK_BITS = 62


#: Most task-local vertices of the last packed build (sizes the next build's tables).
_LAST_PER_TASK = [_TABLE0 // 4]


def _blocks_per_image(n: int, p: int) -> int:
    """Pixel blocks per image: a function of the shapes only (thread-count independent)."""
    if n >= _MIN_TASKS:
        return 1
    want = -(-_MIN_TASKS // n)
    return max(1, min(want, p // _MIN_BLOCK))


@njit(cache=True)
def _task_pixels(t, nblk, npix):
    """Image ``n`` and pixel range ``p0 .. p1`` of task ``t`` (``nblk`` blocks per image)."""
    blk = (npix + nblk - 1) // nblk
    n = t // nblk
    p0 = (t % nblk) * blk
    return n, p0, min(npix, p0 + blk)


#: Multiplier of the polynomial part of the vertex hash (see ``_raw``).
_MUL = 2654435761


@njit(cache=True)
def _raw(key, d):
    """Polynomial part of the vertex hash, ``sum_i key[i] * _MUL^(d-1-i)`` (mod 2^64).

    Linear in the key: the hash of a neighbouring vertex (key + a fixed step) is
    ``_mix(raw + raw(step))``, one addition (see ``_steps``).
    """
    h = np.int64(0)
    for i in range(d):
        h = h * np.int64(_MUL) + np.int64(key[i])
    return h


@njit(cache=True)
def _mix(h):
    """Finalizer of the vertex hash."""
    h ^= h >> 29
    h *= np.int64(0x5851F42D4C957F2D)
    h ^= h >> 32
    return h


@njit(cache=True)
def _hash(key, d):
    return _mix(_raw(key, d))


@njit(cache=True)
def _steps(d):
    """``pw[i] = _MUL^(d-1-i)`` (``pw[d] = 0``, the implicit coordinate) and
    ``ones = sum_i pw[i]``: raw hash of the step ``(1, ..., 1) - (d+1) e_j`` is
    ``ones - (d+1) pw[j]``."""
    pw = np.zeros(d + 1, np.int64)
    p = np.int64(1)
    for i in range(d - 1, -1, -1):
        pw[i] = p
        p = p * np.int64(_MUL)
    ones = np.int64(0)
    for i in range(d):
        ones += pw[i]
    return pw, ones


@njit(cache=True)
def _tag(h):
    """Hash table slot entry = ``_tag(hash) | id``: the hash's high bits, checked before
    the full key (one cache line per probe); -1 = empty (tags are non-negative)."""
    return ((h >> 33) & np.int64(0x7FFFFFFF)) << 32


@njit(cache=True)
def _hash2(a, b, d):
    """Hash of the simplex key (``a[:d]`` remainder-0 point, ``b[:d]`` ranks)."""
    h = np.int64(0)
    for i in range(d):
        h = h * np.int64(2654435761) + np.int64(a[i])
        h = h * np.int64(40503) + np.int64(b[i])
    h ^= h >> 29
    h *= np.int64(0x5851F42D4C957F2D)
    h ^= h >> 32
    return h


@njit(cache=True)
def _embed_block(feats, scale, n, q0, nb, e_first, el, r0, rk, sm, ssum, vr, bary):
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
    for j in range(d, 0, -1):
        sc = scale[j - 1]
        fj = np.float32(j)
        for b in range(nb):
            cf = feats[n, q0 + b, j - 1] * sc
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


@njit(parallel=True, cache=True)
def _build_local(feats, scale, nblk, loc, bary, gk, hh, nloc, sk):
    """Embed every pixel and dedupe its vertices per task.

    Writes per entry ``e = pixel * (d+1) + r``: ``loc[e]`` task-local vertex id
    and ``bary[e]`` weight; per task-local vertex ``lid`` of task ``t``, its key
    ``gk[ebase + lid]`` and hash ``hh[ebase + lid]`` (``ebase`` = first entry of
    the task); ``nloc[t]`` = number of task-local vertices.

    Pixels are embedded in blocks of ``_EMBED`` with the per-coordinate work laid
    out ``(coordinate, pixel)`` so the inner loops run over pixels (vectorisable).
    Each distinct simplex (remainder-0 point and ranks) is hashed once per task
    (``sk`` holds the simplex keys, indexed from the task's first pixel); only a
    new simplex hashes its d+1 vertices. Keys are compared in full: no collision
    goes unnoticed.
    """
    n_img, npix, d = feats.shape
    dp1 = d + 1
    ntask = n_img * nblk
    nb_max = _EMBED
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        ebase = (n * npix + p0) * dp1
        sbase = n * npix + p0
        el = np.empty((dp1, nb_max), np.float32)
        r0 = np.empty((dp1, nb_max), np.int32)
        rk = np.empty((dp1, nb_max), np.int32)
        sm = np.empty(nb_max, np.float32)
        ssum = np.empty(nb_max, np.int32)
        vr = np.empty((dp1, nb_max), np.float32)
        ka = np.empty(d, np.int32)
        kb = np.empty(d, np.int32)
        key = np.empty(d, np.int32)
        prev_a = np.empty(d, np.int32)
        prev_b = np.empty(d, np.int32)
        perm = np.empty(dp1, np.int32)
        pw, ones = _steps(d)
        have_prev = False
        prev_e = 0
        cap = _TABLE0
        table = np.full(cap, -1, np.int64)
        cnt = 0
        scap = _TABLE0
        stable = np.full(scap, -1, np.int64)
        shh = np.empty(p1 - p0, np.int64)
        sfirst = np.empty(p1 - p0, np.int64)
        scnt = 0
        for q0 in range(p0, p1, nb_max):
            nb = min(nb_max, p1 - q0)
            _embed_block(
                feats, scale, n, q0, nb, (n * npix + q0) * dp1, el, r0, rk, sm, ssum, vr, bary
            )
            for b in range(nb):
                p = q0 + b
                e0 = (n * npix + p) * dp1
                for i in range(d):
                    ka[i] = r0[i, b]
                    kb[i] = rk[i, b]
                # same simplex as the previous pixel: reuse its vertex ids unhashed
                if have_prev:
                    diff = np.int32(0)
                    for i in range(d):
                        diff |= (ka[i] ^ prev_a[i]) | (kb[i] ^ prev_b[i])
                    if diff == 0:
                        for r in range(dp1):
                            loc[e0 + r] = loc[prev_e + r]
                        prev_e = e0
                        continue
                have_prev = True
                for i in range(d):
                    prev_a[i] = ka[i]
                    prev_b[i] = kb[i]
                prev_e = e0
                # a simplex seen before in this task: copy its vertex ids
                hs = _hash2(ka, kb, d)
                smask = scap - 1
                slot = hs & smask
                found = -1
                tag = _tag(hs)
                while True:
                    ent = stable[slot]
                    if ent < 0:
                        break
                    sid = ent & _ID_MASK
                    same = (ent & ~_ID_MASK) == tag
                    if same:
                        diff = np.int32(0)
                        for i in range(d):
                            diff |= (sk[sbase + sid, i] ^ ka[i]) | (sk[sbase + sid, d + i] ^ kb[i])
                        same = diff == 0
                    if same:
                        found = sid
                        break
                    slot = (slot + 1) & smask
                if found >= 0:
                    src = sfirst[found]
                    for r in range(dp1):
                        loc[e0 + r] = loc[src + r]
                    continue
                # a new simplex: remember it, then hash its d+1 vertices
                sid = scnt
                stable[slot] = tag | sid
                for i in range(d):
                    sk[sbase + sid, i] = ka[i]
                    sk[sbase + sid, d + i] = kb[i]
                shh[sid] = hs
                sfirst[sid] = e0
                scnt += 1
                if 2 * scnt > scap:
                    scap *= 2
                    smask = scap - 1
                    stable = np.full(scap, -1, np.int64)
                    for q in range(scnt):
                        slot = shh[q] & smask
                        while stable[slot] >= 0:
                            slot = (slot + 1) & smask
                        stable[slot] = _tag(shh[q]) | q
                # the d+1 vertex keys of this simplex: vertex 0 is the remainder-0
                # point, vertex r+1 = vertex r + (1, ..., 1) - (d+1) e_j with j the
                # coordinate of rank d - r (key and polynomial hash updated in place)
                for i in range(dp1):
                    perm[i] = d
                for i in range(d):
                    perm[kb[i]] = i
                for i in range(d):
                    key[i] = ka[i]
                raw = _raw(key, d)
                for r in range(dp1):
                    if r > 0:
                        j = perm[d - r + 1]
                        for i in range(d):
                            key[i] += 1
                        if j < d:
                            key[j] -= dp1
                        raw += ones - dp1 * pw[j]
                    h = _mix(raw)
                    mask = cap - 1
                    slot = h & mask
                    tag = _tag(h)
                    while True:
                        ent = table[slot]
                        if ent < 0:
                            lid = cnt
                            table[slot] = tag | lid
                            for i in range(d):
                                gk[ebase + lid, i] = key[i]
                            hh[ebase + lid] = h
                            cnt += 1
                            break
                        lid = ent & _ID_MASK
                        same = (ent & ~_ID_MASK) == tag
                        if same:
                            diff = np.int32(0)
                            for i in range(d):
                                diff |= gk[ebase + lid, i] ^ key[i]
                            same = diff == 0
                        if same:
                            break
                        slot = (slot + 1) & mask
                    loc[e0 + r] = lid
                    if 2 * cnt > cap:  # grow: rehash the stored hashes
                        cap *= 2
                        mask = cap - 1
                        table = np.full(cap, -1, np.int64)
                        for q in range(cnt):
                            slot = hh[ebase + q] & mask
                            while table[slot] >= 0:
                                slot = (slot + 1) & mask
                            table[slot] = _tag(hh[ebase + q]) | q
        nloc[t] = cnt


@njit(cache=True)
def _find(table, toff, cap, gk, gsrc, gbase, key, h, d):
    """Global id of ``key`` in one image's table, or -1."""
    mask = cap - 1
    slot = h & mask
    tag = _tag(h)
    while True:
        ent = table[toff + slot]
        if ent < 0:
            return -1
        gid = ent & _ID_MASK
        if (ent & ~_ID_MASK) != tag:
            slot = (slot + 1) & mask
            continue
        src = gsrc[gbase + gid]
        same = True
        for i in range(d):
            if gk[src, i] != key[i]:
                same = False
                break
        if same:
            return gid
        slot = (slot + 1) & mask


@njit(parallel=True, cache=True)
def _build_merge(npix, dp1, nblk, gk, hh, nloc, loff, table, toff, tcap, lmap, gsrc, vcount):
    """Merge task-local vertices into one table per image (parallel over images).

    ``lmap[slot]`` = image-local global id of task-local slot ``loff[t] + lid``;
    ``gsrc[loff[n*nblk] + gid]`` = row of ``gk`` holding that vertex's key.
    """
    d = dp1 - 1
    n_img = vcount.shape[0]
    blk = (npix + nblk - 1) // nblk
    for n in prange(n_img):
        base = toff[n]
        cap = tcap[n]
        mask = cap - 1
        for i in range(cap):
            table[base + i] = -1
        gbase = loff[n * nblk]
        cnt = 0
        for b in range(nblk):
            t = n * nblk + b
            ebase = (n * npix + b * blk) * dp1
            for lid in range(nloc[t]):
                src = ebase + lid
                h = hh[src]
                slot = h & mask
                tag = _tag(h)
                while True:
                    ent = table[base + slot]
                    if ent < 0:
                        gid = cnt
                        table[base + slot] = tag | gid
                        gsrc[gbase + gid] = src
                        cnt += 1
                        break
                    gid = ent & _ID_MASK
                    other = gsrc[gbase + gid]
                    same = (ent & ~_ID_MASK) == tag
                    if same:
                        for i in range(d):
                            if gk[other, i] != gk[src, i]:
                                same = False
                                break
                    if same:
                        break
                    slot = (slot + 1) & mask
                lmap[loff[t] + lid] = gid
        vcount[n] = cnt


@njit(parallel=True, cache=True)
def _build_offsets(npix, dp1, nblk, loc, loff, lmap, voff, off):
    """Per entry: ``off`` = global vertex of the global slot ``loff[t] + loc`` (B > 1 only)."""
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        lo = loff[t]
        vo = voff[n]
        for e in range((n * npix + p0) * dp1, (n * npix + p1) * dp1):
            off[e] = vo + lmap[lo + loc[e]]


@njit(parallel=True, cache=True)
def _build_csr(nblk, nloc, loff, lmap, voff, ptr, idx):
    """Vertex -> contributing slots, in task order (for the deterministic splat reduction)."""
    n_img = voff.shape[0] - 1
    for n in prange(n_img):
        v0 = voff[n]
        nv = voff[n + 1] - v0
        start = np.zeros(nv + 1, np.int64)
        for b in range(nblk):
            t = n * nblk + b
            for lid in range(nloc[t]):
                start[lmap[loff[t] + lid] + 1] += 1
        start[0] = loff[n * nblk]
        for g in range(nv):
            start[g + 1] += start[g]
            ptr[v0 + g + 1] = start[g + 1]
        for b in range(nblk):
            t = n * nblk + b
            for lid in range(nloc[t]):
                s = loff[t] + lid
                g = lmap[s]
                idx[start[g]] = s
                start[g] += 1


@njit(parallel=True, cache=True)
def _build_neighbours(dp1, voff, gk, hh, gsrc, loff, nblk, table, toff, tcap, nbr):
    """``nbr[j, v] = (n1, n2)``: blur neighbours along direction j; missing -> V (a zero row)."""
    d = dp1 - 1
    n_img = voff.shape[0] - 1
    nvert = voff[n_img]
    nchunk = (nvert + _CHUNK - 1) // _CHUNK
    pw, ones = _steps(d)
    for c in prange(nchunk):
        k0 = np.empty(d, np.int32)
        k1 = np.empty(d, np.int32)
        k2 = np.empty(d, np.int32)
        n = 0
        for v in range(c * _CHUNK, min(nvert, (c + 1) * _CHUNK)):
            while voff[n + 1] <= v:
                n += 1
            gbase = loff[n * nblk]
            src = gsrc[gbase + v - voff[n]]
            for i in range(d):
                k0[i] = gk[src, i]
            raw = _raw(k0, d)
            for j in range(dp1):
                for i in range(d):
                    k1[i] = k0[i] - 1
                    k2[i] = k0[i] + 1
                if j < d:
                    k1[j] = k0[j] + d
                    k2[j] = k0[j] - d
                step = ones - dp1 * pw[j]
                g1 = _find(table, toff[n], tcap[n], gk, gsrc, gbase, k1, _mix(raw - step), d)
                g2 = _find(table, toff[n], tcap[n], gk, gsrc, gbase, k2, _mix(raw + step), d)
                nbr[j, v, 0] = nvert if g1 < 0 else voff[n] + g1
                nbr[j, v, 1] = nvert if g2 < 0 else voff[n] + g2


@njit(cache=True)
def _pmix(pk):
    """Hash of a packed key for the (key, id) tables: bits 32.. of ``pk * odd constant``."""
    return (pk * np.int64(-7046029254386353131)) >> 32


@njit(cache=True)
def _local_packed_task(feats, scale, n, p0, p1, e_first, loc, bary, hh, pbase, plim, pu, table):
    """Embed pixels ``p0 .. p1`` of image ``n`` and number their vertices (packed keys).

    Pixel ``p``'s d+1 entries are ``e_first + (p - p0) * (d+1) + r``: ``loc`` gets
    the vertex's local id, ``bary`` its weight; ``hh[lid]`` = the packed key of
    local vertex ``lid``. ``table`` holds ``(packed key, id)`` pairs (its content
    on entry does not matter; a power-of-two number of slots). Returns
    ``(count, table)``: the number of vertices (-1 when a remainder-0 point is
    outside the packable range) and the table, regrown when it filled past 1/4.

    Per block of ``_EMBED`` pixels the packed keys of all d+1 vertices are
    computed first, branch-free over pixels (vertex r of a simplex is the
    remainder-0 point plus ``r (1, ..., 1)`` minus ``d+1`` along every coordinate
    of rank above ``d - r``); then they are looked up one after the other. A
    pixel in the same simplex as the previous one copies its ids unhashed.
    """
    d = feats.shape[2]
    dp1 = d + 1
    nb_max = _EMBED
    el = np.empty((dp1, nb_max), np.float32)
    r0 = np.empty((dp1, nb_max), np.int32)
    rk = np.empty((dp1, nb_max), np.int32)
    sm = np.empty(nb_max, np.float32)
    ssum = np.empty(nb_max, np.int32)
    vr = np.empty((dp1, nb_max), np.float32)
    keys = np.empty((dp1, nb_max), np.int64)
    same = np.empty(nb_max, np.bool_)
    prev = np.full(2 * d, -1, np.int32)  # remainder-0 point and ranks of the last pixel
    cnt = 0
    pones = np.int64(0)
    for i in range(d):
        pones += pu[i]
    table[:] = -1
    cap = table.shape[0] // 2
    prev_e = -1
    for q0 in range(p0, p1, nb_max):
        nb = min(nb_max, p1 - q0)
        eq = e_first + (q0 - p0) * dp1
        _embed_block(feats, scale, n, q0, nb, eq, el, r0, rk, sm, ssum, vr, bary)
        # keys of every vertex, and whether any remainder-0 point is out of range
        out = np.int32(0)
        for b in range(nb):
            keys[0, b] = 0
        for i in range(d):
            base = pbase[i]
            lim = plim[i]
            unit = pu[i]
            for b in range(nb):
                f = np.int64(r0[i, b]) - base
                out |= np.int32(f < 2 * dp1) | np.int32(f >= lim)
                keys[0, b] += f * unit
        if out:
            return -1, table
        for r in range(1, dp1):
            for b in range(nb):
                keys[r, b] = keys[0, b] + r * pones
            for i in range(d):
                step = dp1 * pu[i]
                for b in range(nb):
                    keys[r, b] -= step * np.int64(rk[i, b] > d - r)
        # same simplex as the previous pixel (remainder-0 point and ranks equal)
        for b in range(nb):
            diff = np.int32(0)
            if b == 0:
                for i in range(d):
                    diff |= (r0[i, 0] ^ prev[i]) | (rk[i, 0] ^ prev[d + i])
            else:
                for i in range(d):
                    diff |= (r0[i, b] ^ r0[i, b - 1]) | (rk[i, b] ^ rk[i, b - 1])
            same[b] = diff == 0
        for i in range(d):
            prev[i] = r0[i, nb - 1]
            prev[d + i] = rk[i, nb - 1]
        for b in range(nb):
            e0 = eq + b * dp1
            if same[b] and prev_e >= 0:
                for r in range(dp1):
                    loc[e0 + r] = loc[prev_e + r]
                prev_e = e0
                continue
            prev_e = e0
            for r in range(dp1):
                pk = keys[r, b]
                mask = cap - 1
                slot = _pmix(pk) & mask
                while True:
                    k0 = table[2 * slot]
                    if k0 == pk:
                        lid = table[2 * slot + 1]
                        break
                    if k0 < 0:
                        lid = cnt
                        table[2 * slot] = pk
                        table[2 * slot + 1] = lid
                        hh[lid] = pk
                        cnt += 1
                        break
                    slot = (slot + 1) & mask
                loc[e0 + r] = lid
                if 4 * cnt > cap:  # grow: rehash the stored keys (load <= 1/4)
                    cap *= 2
                    mask = cap - 1
                    table = np.full(2 * cap, -1, np.int64)
                    for q in range(cnt):
                        a = hh[q]
                        slot = _pmix(a) & mask
                        while table[2 * slot] >= 0:
                            slot = (slot + 1) & mask
                        table[2 * slot] = a
                        table[2 * slot + 1] = q
    return cnt, table


@njit(parallel=True, cache=True)
def _build_local_packed(feats, scale, nblk, loc, bary, hh, nloc, pbase, plim, pu, tables):
    """``_build_local`` with packed keys (see ``_pack_params``), one task per pixel block.

    A vertex key ``k`` (d coordinates) is stored as ``sum_i (k[i] - pbase[i]) * pu[i]``
    (one int64; ``hh`` holds it instead of the hash). Table slots hold
    ``(packed key, id)`` pairs: a probe is one load and one compare, and the d+1
    probes of a simplex do not depend on each other (the packed keys are walked
    arithmetically), so they overlap. There is no simplex table: with probes
    this cheap, looking up the d+1 vertices of each simplex change directly is
    faster than a table of simplices, which outgrows the L2 cache. A
    remainder-0 point outside the packable range sets ``nloc[t] = -1`` (the
    caller then rebuilds with the full-key kernel). Task ``t`` starts with the
    table ``tables[t]`` (sized by the caller from the previous build so that it
    rarely has to grow).
    """
    n_img, npix, d = feats.shape
    dp1 = d + 1
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        ebase = (n * npix + p0) * dp1
        cnt, _ = _local_packed_task(
            feats, scale, n, p0, p1, ebase, loc, bary, hh[ebase:], pbase, plim, pu, tables[t]
        )
        nloc[t] = cnt


@njit(parallel=True, cache=True)
def _build_merge_packed(npix, dp1, nblk, hh, nloc, loff, table, toff, tcap, lmap, gsrc, vcount):
    """``_build_merge`` with packed keys (``hh`` = packed key; slots = (key, id) pairs)."""
    n_img = vcount.shape[0]
    blk = (npix + nblk - 1) // nblk
    for n in prange(n_img):
        base = 2 * toff[n]
        cap = tcap[n]
        mask = cap - 1
        for i in range(2 * cap):
            table[base + i] = -1
        gbase = loff[n * nblk]
        cnt = 0
        for b in range(nblk):
            t = n * nblk + b
            ebase = (n * npix + b * blk) * dp1
            for lid in range(nloc[t]):
                src = ebase + lid
                pk = hh[src]
                slot = _pmix(pk) & mask
                while True:
                    k0 = table[base + 2 * slot]
                    if k0 == pk:
                        gid = table[base + 2 * slot + 1]
                        break
                    if k0 < 0:
                        gid = cnt
                        table[base + 2 * slot] = pk
                        table[base + 2 * slot + 1] = gid
                        gsrc[gbase + gid] = src
                        cnt += 1
                        break
                    slot = (slot + 1) & mask
                lmap[loff[t] + lid] = gid
        vcount[n] = cnt


@njit(cache=True)
def _find_packed(table, base, cap, pk):
    """Id of packed key ``pk`` in one image's (key, id) table, or -1."""
    mask = cap - 1
    slot = _pmix(pk) & mask
    while True:
        k0 = table[base + 2 * slot]
        if k0 == pk:
            return table[base + 2 * slot + 1]
        if k0 < 0:
            return -1
        slot = (slot + 1) & mask


@njit(parallel=True, cache=True)
def _build_neighbours_packed(dp1, voff, hh, gsrc, loff, nblk, table, toff, tcap, pu, nbr):
    """``_build_neighbours`` with packed keys: neighbour key = key -/+ a constant.

    Neighbourhood is symmetric (``u = v + step_j`` exactly when ``v = u - step_j``),
    so only the ``+`` neighbour is looked up: finding ``u`` for ``v`` also sets
    ``v`` as ``u``'s ``-`` neighbour (half the probes; every ``nbr[j, u, 0]`` is
    written by at most one ``v``, so threads never race).
    """
    d = dp1 - 1
    n_img = voff.shape[0] - 1
    nvert = voff[n_img]
    nchunk = (nvert + _CHUNK - 1) // _CHUNK
    pones = np.int64(0)
    for i in range(d):
        pones += pu[i]
    for c in prange(nchunk):
        for v in range(c * _CHUNK, min(nvert, (c + 1) * _CHUNK)):
            for j in range(dp1):
                nbr[j, v, 0] = nvert
    for c in prange(nchunk):
        n = 0
        for v in range(c * _CHUNK, min(nvert, (c + 1) * _CHUNK)):
            while voff[n + 1] <= v:
                n += 1
            gbase = loff[n * nblk]
            pk = hh[gsrc[gbase + v - voff[n]]]
            base = 2 * toff[n]
            for j in range(dp1):
                g2 = _find_packed(table, base, tcap[n], pk + pones - dp1 * pu[j])
                if g2 < 0:
                    nbr[j, v, 1] = nvert
                else:
                    nbr[j, v, 1] = voff[n] + g2
                    nbr[j, voff[n] + g2, 0] = v


@njit(cache=True)
def _scatter_tile(tmp, nb, e_first, dp1, lo, loc, bary, buf):
    """Add the ``(nb, C)`` tile ``tmp`` (pixels from entry ``e_first`` on) to the
    rows ``lo + loc[e]`` of ``buf``, weighted (class index innermost, vectorised)."""
    nch = tmp.shape[1]
    for b in range(nb):
        e0 = e_first + b * dp1
        for r in range(dp1):
            s = lo + loc[e0 + r]
            w = bary[e0 + r]
            for k in range(nch):
                buf[s, k] += w * tmp[b, k]


@njit(parallel=True, cache=True)
def _splat(vals, dp1, nblk, loc, bary, loff, buf):
    """Scatter each pixel's C values into its task's rows of ``buf`` (zeroed here):
    row ``loff[t] + loc[e]`` (``loc`` holds task-local ids).

    Pixels go in tiles of ``_TILE``: the tile's ``(C, tile)`` input is read row
    by row (contiguous) into a ``(tile, C)`` scratch, then each pixel adds its C
    values to d+1 rows (class index innermost, vectorised).
    """
    _, nch, npix = vals.shape
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        lo = loff[t]
        buf[lo : loff[t + 1]] = 0.0
        tmp = np.empty((_TILE, nch), vals.dtype)
        for q0 in range(p0, p1, _TILE):
            nb = min(_TILE, p1 - q0)
            for k in range(nch):
                for b in range(nb):
                    tmp[b, k] = vals[n, k, q0 + b]
            _scatter_tile(tmp, nb, (n * npix + q0) * dp1, dp1, lo, loc, bary, buf)


@njit(cache=True)
def _splat_masked_range(probs, roi, n, p0, p1, e_first, dp1, lo, loc, bary, buf, tmp, stats):
    """Splat ``[probs * roi, roi]`` of pixels ``p0 .. p1`` of image ``n`` (entries from
    ``e_first``) into rows ``lo + loc[e]`` of ``buf``; ``tmp`` is ``(_TILE, K + 1)``.

    While the values pass through, folds the probability checks into ``stats``
    (float64, 4): ``[0]`` min and ``[1]`` max of ``probs``, ``[2]`` the largest
    ``|sum_k probs_k - 1|`` over pixels with ``roi > 0``, ``[3]`` a sum that is
    NaN exactly when some value is NaN or infinite (then a pixel sum is).
    """
    k = probs.shape[1]
    dt = probs.dtype
    psum = np.empty(_TILE, dt)
    pmin = np.empty(_TILE, dt)
    pmax = np.empty(_TILE, dt)
    for q0 in range(p0, p1, _TILE):
        nb = min(_TILE, p1 - q0)
        for b in range(nb):
            tmp[b, k] = roi[n, q0 + b]
            x = probs[n, 0, q0 + b]
            psum[b] = x
            pmin[b] = x
            pmax[b] = x
            tmp[b, 0] = x * tmp[b, k]
        for c in range(1, k):
            for b in range(nb):
                x = probs[n, c, q0 + b]
                tmp[b, c] = x * tmp[b, k]
                psum[b] += x
                pmin[b] = x if x < pmin[b] else pmin[b]
                pmax[b] = x if x > pmax[b] else pmax[b]
        for b in range(nb):
            sb = np.float64(psum[b])
            stats[3] += sb - sb
            stats[0] = min(stats[0], np.float64(pmin[b]))
            stats[1] = max(stats[1], np.float64(pmax[b]))
            if tmp[b, k] > 0:
                stats[2] = max(stats[2], abs(sb - 1.0))
        _scatter_tile(tmp, nb, e_first + (q0 - p0) * dp1, dp1, lo, loc, bary, buf)


@njit(cache=True)
def _stats_init(stats):
    """Start values of the ``stats`` rows of ``_splat_masked_range``."""
    for t in range(stats.shape[0]):
        stats[t, 0] = np.inf
        stats[t, 1] = -np.inf
        stats[t, 2] = 0.0
        stats[t, 3] = 0.0


@njit(parallel=True, cache=True)
def _splat_masked(probs, roi, stats, dp1, nblk, loc, bary, loff, buf):
    """``_splat`` of the ``K + 1`` channels ``[probs * roi, roi]`` without forming them.

    ``probs`` is ``(N, K, P)``, ``roi`` ``(N, P)``; the products are those the
    caller would compute (same rounding), so the result equals ``_splat`` of the
    concatenation bit for bit. ``stats[t]`` gets task ``t``'s probability
    statistics (see ``_splat_masked_range``).
    """
    _, k, npix = probs.shape
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        lo = loff[t]
        buf[lo : loff[t + 1]] = 0.0
        tmp = np.empty((_TILE, k + 1), probs.dtype)
        e_first = (n * npix + p0) * dp1
        _splat_masked_range(probs, roi, n, p0, p1, e_first, dp1, lo, loc, bary, buf, tmp, stats[t])


@njit(parallel=True, cache=True)
def _reduce(buf, ptr, idx, out):
    """``out[v] = sum of buf[idx[ptr[v]:ptr[v+1]]]`` (fixed order); ``out[V] = 0``."""
    nvert = ptr.shape[0] - 1
    nch = buf.shape[1]
    nchunk = (nvert + _CHUNK - 1) // _CHUNK
    for c in prange(nchunk):
        for v in range(c * _CHUNK, min(nvert, (c + 1) * _CHUNK)):
            for k in range(nch):
                out[v, k] = 0.0
            for i in range(ptr[v], ptr[v + 1]):
                s = idx[i]
                for k in range(nch):
                    out[v, k] += buf[s, k]
    for k in range(nch):
        out[nvert, k] = 0.0


@njit(cache=True)
def _blur_rows(src, dst, nbr, j, v0, v1, half):
    """Rows ``v0 .. v1`` of blur pass ``j``: ``dst[v] = src[v] + half (src[n1] + src[n2])``."""
    nch = src.shape[1]
    for v in range(v0, v1):
        n1 = nbr[j, v, 0]
        n2 = nbr[j, v, 1]
        for k in range(nch):
            dst[v, k] = src[v, k] + half * (src[n1, k] + src[n2, k])


@njit(parallel=True, cache=True)
def _blur(a, b, nbr, half):
    """d+1 passes ``new = old + half * (old[n1] + old[n2])``.

    Returns 0 when the result is in ``a``, 1 when it is in ``b``.
    """
    dp1 = nbr.shape[0]
    nvert = nbr.shape[1]
    nch = a.shape[1]
    nchunk = (nvert + _CHUNK - 1) // _CHUNK
    for k in range(nch):
        b[nvert, k] = 0.0
    for j in range(dp1):
        src = a if j % 2 == 0 else b
        dst = b if j % 2 == 0 else a
        for c in prange(nchunk):
            _blur_rows(src, dst, nbr, j, c * _CHUNK, min(nvert, (c + 1) * _CHUNK), half)
    return dp1 % 2


@njit(cache=True)
def _gather_tile(lat, nb, e_first, dp1, ob, off, bary, alpha, acc):
    """``acc[b, :] = sum_r (alpha * bary) * lat[ob + off[e], :]`` for the ``nb`` pixels
    whose entries start at ``e_first`` (class index innermost, vectorised)."""
    nch = acc.shape[1]
    for b in range(nb):
        e0 = e_first + b * dp1
        v = ob + off[e0]
        w = bary[e0] * alpha
        for k in range(nch):
            acc[b, k] = w * lat[v, k]
        for r in range(1, dp1):
            v = ob + off[e0 + r]
            w = bary[e0 + r] * alpha
            for k in range(nch):
                acc[b, k] += w * lat[v, k]


@njit(parallel=True, cache=True)
def _slice(lat, dp1, nblk, off, obase, bary, alpha, out):
    """``out[n, :, p] = sum_r (alpha * bary) * lat[vertex_r]``, ``vertex_r = obase[t] + off[e]``.

    Pixels go in tiles of ``_TILE``: each pixel's C outputs are accumulated in a
    ``(tile, C)`` scratch from d+1 contiguous rows (class index innermost), then
    the tile is written out row by row (contiguous).
    """
    n_img, nch, npix = out.shape
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        ob = obase[t]
        acc = np.empty((_TILE, nch), out.dtype)
        for q0 in range(p0, p1, _TILE):
            nb = min(_TILE, p1 - q0)
            _gather_tile(lat, nb, (n * npix + q0) * dp1, dp1, ob, off, bary, alpha, acc)
            for k in range(nch):
                for b in range(nb):
                    out[n, k, q0 + b] = acc[b, k]


@njit(cache=True)
def _channel_dot_range(lat, ch, dp1, off, ob, bary, alpha, roi, n, p0, p1, e_first):
    """``sum_p roi[n, p] * (W v)[ch, p]`` over pixels ``p0 .. p1`` (float64)."""
    total = 0.0
    for p in range(p0, p1):
        e0 = e_first + (p - p0) * dp1
        x = bary[e0] * alpha * lat[ob + off[e0], ch]
        for r in range(1, dp1):
            x += bary[e0 + r] * alpha * lat[ob + off[e0 + r], ch]
        total += roi[n, p] * x
    return total


@njit(parallel=True, cache=True)
def _slice_channel_dot(lat, ch, dp1, nblk, off, obase, bary, alpha, roi, part):
    """``part[t] = sum_p roi[p] * (W v)[ch, p]`` over task ``t``'s pixels (float64)."""
    n_img, npix = roi.shape
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        e_first = (n * npix + p0) * dp1
        part[t] = _channel_dot_range(
            lat, ch, dp1, off, obase[t], bary, alpha, roi, n, p0, p1, e_first
        )


@njit(cache=True)
def _potts_range(lat, dp1, off, ob, bary, alpha, probs, roi, n, p0, p1, e_first, c, want, grad):
    """Slice and contract pixels ``p0 .. p1`` of image ``n`` (see ``_slice_potts``);
    returns their energy (float64)."""
    k = probs.shape[1]
    two = probs.dtype.type(2.0)
    acc = np.empty((_TILE, k + 1), probs.dtype)
    total = 0.0
    for q0 in range(p0, p1, _TILE):
        nb = min(_TILE, p1 - q0)
        _gather_tile(lat, nb, e_first + (q0 - p0) * dp1, dp1, ob, off, bary, alpha, acc)
        tile = probs.dtype.type(0.0)
        for j in range(k):
            for b in range(nb):
                r = roi[n, q0 + b]
                wr = acc[b, k]
                ws = acc[b, j]
                tile += probs[n, j, q0 + b] * r * (wr - ws)
                if want:
                    grad[n, j, q0 + b] = c * r * (wr - two * ws)
        total += tile
    return total


@njit(parallel=True, cache=True)
def _slice_potts(lat, dp1, nblk, off, obase, bary, alpha, probs, roi, coef, want, grad, part):
    """Slice ``[W S, W roi]`` and contract it on the fly (no ``(N, K+1, P)`` output).

    With ``S = probs * roi``, per pixel: ``e = sum_k S_k (W roi - (W S)_k)`` is
    summed into ``part[t]`` (float64 per tile), and when ``want`` the gradient
    ``grad[n, k, p] = coef[n] * roi_p * ((W roi)_p - 2 (W S)_kp)`` is written.
    """
    n_img, _, npix = probs.shape
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = _task_pixels(t, nblk, npix)
        e_first = (n * npix + p0) * dp1
        part[t] = _potts_range(
            lat, dp1, off, obase[t], bary, alpha, probs, roi, n, p0, p1, e_first,
            coef[n], want, grad,
        )  # fmt: skip


@njit(cache=True)
def _neighbours_local(hh, cnt, table, pu, nbr):
    """Blur neighbours of one image's ``cnt`` vertices from its local ``(key, id)`` table.

    As ``_build_neighbours_packed``: only ``v + step_j`` is looked up; finding it
    also records ``v`` as its ``- step_j`` neighbour. Missing neighbours -> ``cnt``.
    """
    dp1 = nbr.shape[0]
    d = dp1 - 1
    cap = table.shape[0] // 2
    pones = np.int64(0)
    for i in range(d):
        pones += pu[i]
    for j in range(dp1):
        for v in range(cnt):
            nbr[j, v, 0] = cnt
    for v in range(cnt):
        pk = hh[v]
        for j in range(dp1):
            g2 = _find_packed(table, 0, cap, pk + pones - dp1 * pu[j])
            if g2 < 0:
                nbr[j, v, 1] = cnt
            else:
                nbr[j, v, 1] = g2
                nbr[j, g2, 0] = v


@njit(parallel=True, cache=True)
def _potts_fused(
    feats, scale, pbase, plim, pu, alpha, probs, roi, normalize, grad_scale, want,
    grad, part, volume, stats, counts, s_loc, s_bary, s_hh, s_table, s_nbr, s_lat_a, s_lat_b,
):  # fmt: skip
    """Build, splat, blur and slice one image per task, never forming a batch lattice.

    Each image's entries, keys, table, neighbours and lattice rows live in the
    scratch row ``s_*[thread]`` of the thread that runs it, so they stay in that
    core's cache from the build to the slice. The vertex numbering and every
    floating-point operation are those of the batch path with one block per
    image (``_build_local_packed`` ... ``_slice_potts``): results are identical.

    ``counts[n]`` = the image's vertex count; -1 when a key is outside the
    packable range (nothing else done for that image). When the count does not
    fit the scratch rows (``s_lat_a.shape[1] - 1``), the image is left for the
    caller to rerun with larger ones. ``stats[n]`` gets the image's probability
    statistics (see ``_splat_masked_range``).
    """
    n_img, npix, d = feats.shape
    dp1 = d + 1
    k = probs.shape[1]
    rows = s_lat_a.shape[1]
    half = probs.dtype.type(0.5)
    tiny = np.finfo(probs.dtype).tiny
    for n in prange(n_img):
        tid = numba.get_thread_id()
        loc, bary, hh = s_loc[tid], s_bary[tid], s_hh[tid]
        cnt, table = _local_packed_task(
            feats, scale, n, 0, npix, 0, loc, bary, hh, pbase, plim, pu, s_table[tid]
        )
        counts[n] = cnt
        if cnt < 0 or cnt + 1 > rows:
            continue
        nbr = s_nbr[tid]
        _neighbours_local(hh, cnt, table, pu, nbr)
        lat_a, lat_b = s_lat_a[tid], s_lat_b[tid]
        lat_a[: cnt + 1] = 0.0
        tmp = np.empty((_TILE, k + 1), probs.dtype)
        _splat_masked_range(probs, roi, n, 0, npix, 0, dp1, 0, loc, bary, lat_a, tmp, stats[n])
        lat_b[cnt] = 0.0
        for j in range(dp1):
            if j % 2 == 0:
                _blur_rows(lat_a, lat_b, nbr, j, 0, cnt, half)
            else:
                _blur_rows(lat_b, lat_a, nbr, j, 0, cnt, half)
        lat = lat_b if dp1 % 2 == 1 else lat_a
        vol = 1.0
        if normalize:
            vol = _channel_dot_range(lat, k, dp1, loc, 0, bary, alpha, roi, n, 0, npix, 0)
            vol = max(vol, tiny)
        c = probs.dtype.type(grad_scale / vol)
        part[n] = _potts_range(
            lat, dp1, loc, 0, bary, alpha, probs, roi, n, 0, npix, 0, c, want, grad
        )
        volume[n] = vol


def _stats_summary(stats: np.ndarray) -> tuple[float, float, float, bool]:
    """Reduce per-task ``stats`` rows (``_splat_masked_range``) to ``(min, max, err, finite)``."""
    finite = bool(np.isfinite(stats[:, 3]).all())
    return float(stats[:, 0].min()), float(stats[:, 1].max()), float(stats[:, 2].max()), finite


class _Threads:
    """Run numba kernels on one thread for small problems (restores the setting after)."""

    def __init__(self, num_pixels: int) -> None:
        self.serial = num_pixels < _SERIAL_PIXELS
        self.before = 0

    def __enter__(self) -> None:
        if self.serial:
            self.before = numba.get_num_threads()
            numba.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.serial:
            numba.set_num_threads(self.before)


def _scales(d: int) -> np.ndarray:
    inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
    return np.array([inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)], np.float32)


#: Pixels per block of the range pass (block rows are read as one contiguous run).
_RANGE_BLOCK = 64


@njit(parallel=True, cache=True)
def _ranges(f):
    """Per-dimension minimum and maximum of ``f`` ``(N, P, d)``: ``(2, d)`` float32 (row 0:
    min); all NaN when ``f`` holds a NaN or an infinity (``x - x`` is NaN exactly then).

    Each image is read as consecutive runs of ``_RANGE_BLOCK * d`` values folded
    element-wise into running minima, maxima and ``x - x`` sums (no reduction
    inside the loop, so it vectorises); the lanes are reduced per dimension at the end.
    """
    n_img, npix, d = f.shape
    run = _RANGE_BLOCK * d
    part = np.empty((n_img, 2, d), np.float32)
    nonfinite = np.zeros(n_img, np.bool_)
    for n in prange(n_img):
        flat = f[n].reshape(npix * d)
        mn = np.empty(run, np.float32)
        mx = np.empty(run, np.float32)
        z = np.zeros(run, np.float32)
        for j in range(run):
            x = flat[j % d]  # pixel 0, dimension j mod d
            mn[j] = x
            mx[j] = x
        full = (npix // _RANGE_BLOCK) * run
        for start in range(0, full, run):
            for j in range(run):
                x = flat[start + j]
                z[j] += x - x
                mn[j] = x if x < mn[j] else mn[j]
                mx[j] = x if x > mx[j] else mx[j]
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
    out = part[0].copy()
    for n in range(1, n_img):
        for i in range(d):
            out[0, i] = min(out[0, i], part[n, 0, i])
            out[1, i] = max(out[1, i], part[n, 1, i])
    if nonfinite.any():
        out[:] = np.nan
    return out


def _pack_params(lo: np.ndarray, hi: np.ndarray, scale: np.ndarray) -> tuple | None:
    """Packing of vertex keys into one int64, or None when they do not fit in ``_PACK_BITS``.

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
        if shift > _PACK_BITS:
            return None
    return pbase, plim, pu


def _first_table_capacity(entries: int) -> int:
    """Slots of a task's first hash table: 4x the vertex count the last build needed
    per task (load <= 1/4, so it rarely grows), at most 4x the task's entries; a
    power of two (the probe mask)."""
    want = max(min(4 * _LAST_PER_TASK[0], 4 * entries), _TABLE0)
    return 1 << (want - 1).bit_length()


def _pow2_at_least(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    while True:
        small = out < x
        if not small.any():
            return out
        out[small] *= 2


#: Attributes of the batch lattice (built lazily, see ``NumbaLattice._ensure_built``).
_BUILT_ATTRS = frozenset(
    {"packed", "build_seconds", "direct", "num_vertices", "num_slots", "loff", "loc", "vid",
     "obase", "bary", "nbr", "ptr", "idx"}
)  # fmt: skip


class NumbaLattice:
    """A lattice over a batch of ``N`` images of ``P`` pixels with ``d``-dim features.

    Made by :func:`build`, which validates the features and measures their
    ranges; the batch lattice itself is built on first use (:meth:`apply`, a
    second :meth:`potts`, or reading one of its attributes). The first
    :meth:`potts` on a lattice with one pixel block per image instead runs
    build-to-slice image by image (``_potts_fused``) and keeps nothing; a
    lattice used again is built once and reused.

    Attributes:
        num_vertices: lattice vertices over the whole batch (images never share one).
    """

    def __init__(self, features: Tensor) -> None:
        f = features.numpy()
        n_img, npix, d = f.shape
        dp1 = d + 1
        with _Threads(n_img * npix):
            rng = _ranges(f)
        scale = _scales(d)
        if not np.isfinite(rng).all():
            raise ValueError("features contains NaN or Inf values")
        fmax = float(np.abs(rng).max())
        if 2.0 * d * fmax * float(scale[0]) + 2 * dp1 >= _MAX_COORD:
            raise ValueError(
                f"features reach |f| = {fmax:.3g}: lattice coordinates would overflow int32; "
                "use larger sigmas (features are pixel values divided by their bandwidth)"
            )
        nent = n_img * npix * dp1
        if nent >= 2**31 - 1:
            raise ValueError(
                f"features of shape {tuple(f.shape)} are too large for one lattice "
                f"({nent} pixel-vertex entries, at most 2**31 - 1): split the batch"
            )
        self.batch, self.num_pixels, self.dim = n_img, npix, d
        self.nblk = _blocks_per_image(n_img, npix)
        self.alpha = np.float32(1.0 / (1.0 + 2.0**-d))
        self._f, self._scale = f, scale
        self._pack = _pack_params(rng[0], rng[1], scale)
        # the batch lattice is built on first use: Potts on one block per image
        # runs fused per image (see ``_potts_fused``) and never needs it
        self._built = False
        self._fused_once = False

    def __getattr__(self, name: str) -> object:
        # attributes of the batch lattice: build it on first access
        if name in _BUILT_ATTRS and not self.__dict__.get("_built", True):
            self._ensure_built()
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _ensure_built(self) -> None:
        if not self._built:
            with _Threads(self.batch * self.num_pixels):
                self._build(self._f)
            self._built = True
            del self._f

    def _build(self, f: np.ndarray) -> None:
        n_img, npix, d = f.shape
        dp1 = d + 1
        scale = self._scale
        nent = n_img * npix * dp1
        clock = [time.perf_counter()]
        nblk = self.nblk
        ntask = n_img * nblk
        blk_entries = -(-npix // nblk) * dp1
        loc = _pool.empty(nent, np.int32)
        bary = _pool.empty(nent, np.float32)
        # worst-case sized, but only the rows of real task-local vertices are
        # ever written (untouched pages of a large np.empty cost no memory)
        hh = _pool.empty(nent, np.int64)
        nloc = np.zeros(ntask, np.int32)
        pack = self._pack
        if pack is not None:
            pbase, plim, pu = pack
            cap0 = _first_table_capacity(blk_entries)
            tables = _pool.empty((ntask, 2 * cap0), np.int64)
            _build_local_packed(f, scale, nblk, loc, bary, hh, nloc, pbase, plim, pu, tables)
            del tables
            _LAST_PER_TASK[0] = max(int(nloc.max()), 1)
            if (nloc < 0).any():  # a key out of the packable range: full keys
                pack = None
        if pack is None:
            gk = _pool.empty((nent, d), np.int32)
            sk = _pool.empty((n_img * npix, 2 * d), np.int32)  # simplex keys (touched rows only)
            _build_local(f, scale, nblk, loc, bary, gk, hh, nloc, sk)
            del sk
        #: Whether vertex keys were packed into one int64 (diagnostics/tests).
        self.packed = pack is not None
        clock.append(time.perf_counter())

        loff = np.zeros(ntask + 1, np.int64)
        np.cumsum(nloc, out=loff[1:])
        nslot = int(loff[-1])
        per_img = loff[nblk::nblk] - loff[:-1:nblk]
        tcap = _pow2_at_least(np.maximum(4 * per_img, 16))
        toff = np.zeros(n_img + 1, np.int64)
        np.cumsum(tcap, out=toff[1:])
        lmap = _pool.empty(nslot, np.int32)
        gsrc = _pool.empty(nslot, np.int64)
        vcount = np.zeros(n_img, np.int64)
        if self.packed:
            table = _pool.empty(2 * int(toff[-1]), np.int64)
            _build_merge_packed(
                npix, dp1, nblk, hh, nloc, loff, table, toff, tcap, lmap, gsrc, vcount
            )
        else:
            table = _pool.empty(int(toff[-1]), np.int64)
            _build_merge(npix, dp1, nblk, gk, hh, nloc, loff, table, toff, tcap, lmap, gsrc, vcount)
        clock.append(time.perf_counter())

        voff = np.zeros(n_img + 1, np.int64)
        np.cumsum(vcount, out=voff[1:])
        nvert = int(voff[-1])
        self.direct = nblk == 1
        if self.direct:
            # one task per image: task-local ids are the image's vertex ids, in
            # order, so the global vertex is the task's first slot + the local id
            off, obase = loc, loff[:-1]
        else:
            off, obase = _pool.empty(nent, np.int32), np.zeros(ntask, np.int64)
            _build_offsets(npix, dp1, nblk, loc, loff, lmap, voff, off)
        clock.append(time.perf_counter())

        nbr = _pool.empty((dp1, nvert, 2), np.int32)
        if self.packed:
            _build_neighbours_packed(dp1, voff, hh, gsrc, loff, nblk, table, toff, tcap, pu, nbr)
        else:
            _build_neighbours(dp1, voff, gk, hh, gsrc, loff, nblk, table, toff, tcap, nbr)
            del gk
        del hh, table, gsrc
        clock.append(time.perf_counter())

        if not self.direct:
            self.ptr = np.zeros(nvert + 1, np.int64)
            self.idx = _pool.empty(nslot, np.int32)
            _build_csr(nblk, nloc, loff, lmap, voff, self.ptr, self.idx)
        clock.append(time.perf_counter())
        #: Wall seconds of the build phases (profiling aid).
        self.build_seconds = dict(
            zip(("local", "merge", "offsets", "neighbours", "csr"), np.diff(clock).tolist())
        )
        self.num_vertices = nvert
        self.num_slots = nslot
        self.loff = loff
        self.loc = loc
        #: per entry, the global vertex minus ``obase[task]`` (int32)
        self.vid = off
        self.obase = obase
        self.bary = bary
        self.nbr = nbr

    @property
    def off(self) -> np.ndarray:
        """Global vertex of each pixel-vertex entry: ``(N * P * (d+1),)`` int32 (a copy
        when one task per image; diagnostics only, the filter reads ``vid + obase``)."""
        if not self.direct:
            return self.vid
        per = self.num_pixels * (self.dim + 1)
        base = self.obase.astype(np.int32)[:, None]
        return (self.vid.reshape(self.batch, per) + base).reshape(-1)

    def __repr__(self) -> str:
        return (
            f"NumbaLattice(batch={self.batch}, pixels={self.num_pixels}, dim={self.dim}, "
            f"vertices={self.num_vertices})"
        )

    def apply(self, values: Tensor) -> Tensor:
        """Filter ``values``.

        Args:
            values: ``(N, C, P)`` float32 or float64 contiguous CPU tensor.

        Returns:
            ``(N, C, P)`` tensor of the same dtype: float32 values are computed in
            float32, float64 values in float64.
        """
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        want = (self.batch, "C", self.num_pixels)
        if values.dim() != 3 or values.shape[0] != self.batch or values.shape[2] != self.num_pixels:
            raise ValueError(f"values must have shape {want}, got {tuple(values.shape)}")
        if values.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"values must be float32 or float64, got {values.dtype}")
        if values.device.type != "cpu":
            raise ValueError(
                f"values must be on the CPU for the numba backend, got {values.device}"
            )
        if values.shape[1] == 0:
            raise ValueError(f"values must have at least one channel, got {tuple(values.shape)}")
        vals = values.detach().contiguous().numpy()
        with _Threads(self.batch * self.num_pixels):
            return self._apply(vals, values)

    def _splat_blur(self, splat, args: tuple, nch: int, dt: np.dtype) -> np.ndarray:
        """Splat with ``splat(*args, dp1, nblk, loc, bary, loff, rows)``, then blur."""
        dp1 = self.dim + 1
        nvert = self.num_vertices
        lat_a = _pool.empty((nvert + 1, nch), dt)
        if self.direct:
            splat(*args, dp1, self.nblk, self.loc, self.bary, self.loff, lat_a)
            lat_a[nvert] = 0.0
        else:
            buf = _pool.empty((self.num_slots, nch), dt)
            splat(*args, dp1, self.nblk, self.loc, self.bary, self.loff, buf)
            _reduce(buf, self.ptr, self.idx, lat_a)
            del buf
        lat_b = _pool.empty(lat_a.shape, dt)
        which = _blur(lat_a, lat_b, self.nbr, dt.type(0.5))
        return lat_b if which == 1 else lat_a

    def potts(
        self, probs: Tensor, roi: Tensor, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor | None, tuple[float, float, float, bool]]:
        """Fused Potts energy: see :meth:`rloss.lattice.Lattice.potts`.

        Args:
            probs: ``(N, K, P)`` float32/float64 contiguous CPU tensor.
            roi: ``(N, P)`` tensor of the same dtype.
            normalize: divide by ``roi^T W roi`` per image.
            grad_scale: factor of the gradient, or ``None`` for no gradient.

        Returns:
            ``(energy (N,), grad (N, K, P) or None, stats)`` in ``probs``'s
            dtype (energies are summed in float64); ``stats`` = ``(min, max,
            largest |sum_k probs - 1| where roi > 0, all finite)`` of ``probs``,
            folded into the splat at no extra pass.
        """
        p = probs.detach().contiguous().numpy()
        r = roi.detach().contiguous().numpy()
        want = grad_scale is not None
        if not self._built and not self._fused_once and self.nblk == 1 and self._pack is not None:
            # once: a lattice used again is worth building (and keeping)
            self._fused_once = True
            fused = self._potts_fused(p, r, normalize, grad_scale)
            if fused is not None:
                return fused
        self._ensure_built()
        dt = p.dtype
        n_img, k, _ = p.shape
        dp1 = self.dim + 1
        ntask = n_img * self.nblk
        with _Threads(self.batch * self.num_pixels):
            stats = np.empty((ntask, 4))
            _stats_init(stats)
            lat = self._splat_blur(_splat_masked, (p, r, stats), k + 1, dt)
            volume = np.ones(n_img)
            if normalize:
                part = np.empty(ntask)
                _slice_channel_dot(
                    lat, k, dp1, self.nblk, self.vid, self.obase, self.bary, self.alpha, r, part
                )
                volume = np.maximum(part.reshape(n_img, self.nblk).sum(1), np.finfo(dt).tiny)
            coef = (float(grad_scale or 0.0) / volume).astype(dt)
            grad = _pool.empty(p.shape if want else (1, 1, 1), dt)
            part = np.empty(ntask)
            _slice_potts(
                lat, dp1, self.nblk, self.vid, self.obase, self.bary, self.alpha,
                p, r, coef, want, grad, part,
            )  # fmt: skip
        energy = torch.from_numpy((part.reshape(n_img, self.nblk).sum(1) / volume).astype(dt))
        return energy, torch.from_numpy(grad) if want else None, _stats_summary(stats)

    def _potts_fused(
        self, p: np.ndarray, r: np.ndarray, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor | None, tuple[float, float, float, bool]] | None:
        """:meth:`potts` image by image (``_potts_fused``); None if keys do not pack."""
        f = self._f
        n_img, npix, d = f.shape
        dp1 = d + 1
        k = p.shape[1]
        dt = p.dtype
        want = grad_scale is not None
        pbase, plim, pu = self._pack
        # scratch rows per thread (ids < NUMBA_NUM_THREADS); only touched pages
        # cost memory, and the pool keeps them between calls
        slots = numba.config.NUMBA_NUM_THREADS
        nent = npix * dp1
        cap0 = _first_table_capacity(nent)
        rows = min(nent, max(2 * _LAST_PER_TASK[0], _TABLE0)) + 1
        counts = np.empty(n_img, np.int64)
        stats = np.empty((n_img, 4))
        part = np.empty(n_img)
        volume = np.ones(n_img)
        grad = _pool.empty(p.shape if want else (1, 1, 1), dt)
        s_loc = _pool.empty((slots, nent), np.int32)
        s_bary = _pool.empty((slots, nent), np.float32)
        s_hh = _pool.empty((slots, nent), np.int64)
        s_table = _pool.empty((slots, 2 * cap0), np.int64)
        with _Threads(n_img * npix):
            for _ in range(2):  # a second pass only if the rows were too few
                s_nbr = _pool.empty((slots, dp1, rows, 2), np.int32)
                s_lat_a = _pool.empty((slots, rows, k + 1), dt)
                s_lat_b = _pool.empty((slots, rows, k + 1), dt)
                _stats_init(stats)
                _potts_fused(
                    f, self._scale, pbase, plim, pu, self.alpha, p, r, bool(normalize),
                    float(grad_scale or 0.0), want, grad, part, volume, stats, counts,
                    s_loc, s_bary, s_hh, s_table, s_nbr, s_lat_a, s_lat_b,
                )  # fmt: skip
                if (counts < 0).any():
                    return None
                _LAST_PER_TASK[0] = max(int(counts.max()), 1)
                if counts.max() + 1 <= rows:
                    break
                rows = int(counts.max()) + 1
        energy = torch.from_numpy((part / volume).astype(dt))
        return energy, torch.from_numpy(grad) if want else None, _stats_summary(stats)

    def _apply(self, vals: np.ndarray, values: Tensor) -> Tensor:
        self._ensure_built()
        dt = vals.dtype
        dp1 = self.dim + 1
        lat = self._splat_blur(_splat, (vals,), vals.shape[1], dt)
        # pooled memory (see _pool): no first-touch page faults on a 70 MB output
        out = _pool.empty(vals.shape, dt)
        _slice(lat, dp1, self.nblk, self.vid, self.obase, self.bary, self.alpha, out)
        return torch.from_numpy(out)


def build(features: Tensor) -> NumbaLattice:
    """Build the lattice for a batch of per-pixel features.

    Args:
        features: ``(N, P, d)`` float32 contiguous CPU tensor: each pixel's
            feature vector, already divided by its bandwidths.

    Returns:
        A :class:`NumbaLattice` whose ``apply`` filters ``(N, C, P)`` values.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3 or min(features.shape) == 0:
        raise ValueError(
            f"features must be a non-empty (N, P, d) tensor, got {tuple(features.shape)}"
        )
    if features.dtype != torch.float32:
        raise ValueError(f"features must be float32, got {features.dtype}")
    if features.device.type != "cpu":
        raise ValueError(
            f"features must be on the CPU for the numba backend, got {features.device}"
        )
    return NumbaLattice(features.detach().contiguous())
