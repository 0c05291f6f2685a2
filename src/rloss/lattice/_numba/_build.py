"""Building the batch lattice: local vertex numbering, merge, offsets, neighbours, CSR.

Phases (each a parallel kernel; :func:`build_arrays` runs them in order):

1. **local**, parallel over tasks: embed every pixel (:func:`~._embed.embed_block`)
   and number its d+1 vertices in a task-local table. Two strategies:

   * packed keys (``local_packed_task``, the usual case): the d+1 packed keys
     of a simplex are walked arithmetically and looked up directly;
   * full keys (``build_local_full``): each distinct simplex is hashed once
     per task in a simplex table, and only a new simplex hashes its d+1
     vertices (key and polynomial hash updated in place from vertex to vertex).

   They differ because the cost model differs (a packed probe is one compare,
   so a simplex table, which outgrows the L2 cache, does not pay), but both use
   the same embedding and the table primitives of :mod:`._hashtable`, and they
   number vertices identically (first seen, first numbered).
2. **merge**, parallel over images (``build_merge``, one kernel for both
   strategies): task-local vertices -> one table per image, giving global ids.
3. **offsets** (more than one task per image only): per entry, the global vertex.
4. **neighbours**, parallel over vertices: the two blur neighbours along each
   of the d+1 directions (``build_neighbours_full`` / ``build_neighbours_packed``;
   with packed keys a neighbour's key is the key plus or minus a constant and
   only one of the two is looked up, the other set by symmetry).
5. **CSR** (more than one task per image only): vertex -> contributing
   task-local slots, in task order, for the deterministic splat reduction.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from rloss.lattice import _pool
from rloss.lattice._numba._embed import embed_block
from rloss.lattice._numba._hashtable import (
    full_probe,
    full_rehash,
    hash_steps,
    mix,
    packed_insert,
    packed_probe,
    packed_rehash,
    raw_hash,
    simplex_hash,
    tag,
)
from rloss.lattice._numba._layout import CHUNK, EMBED, task_pixels


class LatticeArrays(NamedTuple):
    """The per-pixel and per-vertex arrays of a built batch lattice (what the kernels take).

    ``e = (n * P + p) * (d+1) + r`` indexes pixel ``p``'s r-th vertex entry.
    """

    #: Blocks (tasks) per image.
    nblk: int
    #: ``(N*P*(d+1),)`` int32: the entry's task-local vertex id.
    loc: np.ndarray
    #: ``(N*P*(d+1),)`` float32: the entry's barycentric weight.
    bary: np.ndarray
    #: ``(tasks + 1,)`` int64: first task-local slot of each task (``loff[-1]`` = slots).
    loff: np.ndarray
    #: ``(N*P*(d+1),)`` int32: the entry's global vertex minus ``obase[task]``
    #: (``loc`` itself with one task per image).
    vid: np.ndarray
    #: ``(tasks,)`` int64: vertex base of each task.
    obase: np.ndarray
    #: ``(d+1, V, 2)`` int32: blur neighbours; V (a zero row) when missing.
    nbr: np.ndarray
    #: ``(V+1,)`` int64 and ``(slots,)`` int32: vertex -> slots (CSR); empty when
    #: one task per image (the splat then writes vertex rows directly).
    ptr: np.ndarray
    idx: np.ndarray
    #: ``(N+1,)`` int64: image ``n``'s vertices are ``voff[n] .. voff[n+1]``.
    voff: np.ndarray


class BuildInfo(NamedTuple):
    """What a build found out (diagnostics and the capacity hint)."""

    #: Whether vertex keys were packed into one int64.
    packed: bool
    #: Vertices over the whole batch.
    num_vertices: int
    #: Task-local vertex slots over all tasks.
    num_slots: int
    #: Most task-local vertices of one task of the packed local phase (None if it did not run).
    most_per_task: int | None
    #: Wall seconds per phase.
    seconds: dict


def first_table_capacity(entries: int, per_task_hint: int, min_table: int) -> int:
    """Slots of a task's first hash table: 4x the vertex count a recent build needed
    per task (load <= 1/4, so it rarely grows), at most 4x the task's entries, at
    least ``min_table``; a power of two (the probe mask)."""
    want = max(min(4 * per_task_hint, 4 * entries), min_table)
    return 1 << (want - 1).bit_length()


def pow2_at_least(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    while True:
        small = out < x
        if not small.any():
            return out
        out[small] *= 2


# --------------------------------------------------------------------------- local


@njit(parallel=True, cache=True)
def build_local_full(feats, scale, nblk, loc, bary, gk, hh, nloc, sk, table0):
    """Embed every pixel and number its vertices per task, full keys.

    Writes per entry ``e = pixel * (d+1) + r``: ``loc[e]`` task-local vertex id
    and ``bary[e]`` weight; per task-local vertex ``lid`` of task ``t``, its key
    ``gk[ebase + lid]`` and hash ``hh[ebase + lid]`` (``ebase`` = first entry of
    the task); ``nloc[t]`` = number of task-local vertices.

    Each distinct simplex (remainder-0 point and ranks) is hashed once per task
    (``sk`` holds the simplex keys, indexed from the task's first pixel); only a
    new simplex hashes its d+1 vertices. Keys are compared in full: no collision
    goes unnoticed. Both tables start with ``table0`` slots and double at load 1/2.
    """
    n_img, npix, d = feats.shape
    dp1 = d + 1
    ntask = n_img * nblk
    nb_max = EMBED
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        ebase = (n * npix + p0) * dp1
        sbase = n * npix + p0
        el = np.empty((dp1, nb_max), np.float32)
        r0 = np.empty((dp1, nb_max), np.int32)
        rk = np.empty((dp1, nb_max), np.int32)
        sm = np.empty(nb_max, np.float32)
        ssum = np.empty(nb_max, np.int32)
        vr = np.empty((dp1, nb_max), np.float32)
        kab = np.empty(2 * d, np.int32)  # simplex key: remainder-0 point, then ranks
        key = np.empty(d, np.int32)
        perm = np.empty(dp1, np.int32)
        pw, ones = hash_steps(d)
        have_prev = False
        prev_e = 0
        cap = table0
        table = np.full(cap, -1, np.int64)
        cnt = 0
        scap = table0
        stable = np.full(scap, -1, np.int64)
        shh = np.empty(p1 - p0, np.int64)
        sfirst = np.empty(p1 - p0, np.int64)
        scnt = 0
        for q0 in range(p0, p1, nb_max):
            nb = min(nb_max, p1 - q0)
            embed_block(
                feats, scale, n, q0, nb, (n * npix + q0) * dp1, el, r0, rk, sm, ssum, vr, bary
            )
            for b in range(nb):
                p = q0 + b
                e0 = (n * npix + p) * dp1
                # same simplex as the previous pixel: reuse its vertex ids unhashed
                if have_prev:
                    diff = np.int32(0)
                    for i in range(d):
                        diff |= (r0[i, b] ^ kab[i]) | (rk[i, b] ^ kab[d + i])
                    if diff == 0:
                        for r in range(dp1):
                            loc[e0 + r] = loc[prev_e + r]
                        prev_e = e0
                        continue
                have_prev = True
                for i in range(d):
                    kab[i] = r0[i, b]
                    kab[d + i] = rk[i, b]
                prev_e = e0
                # a simplex seen before in this task: copy its vertex ids
                hs = simplex_hash(kab, kab[d:], d)
                found, slot = full_probe(stable, 0, scap - 1, hs, sk, None, sbase, kab, 2 * d)
                if found >= 0:
                    src = sfirst[found]
                    for r in range(dp1):
                        loc[e0 + r] = loc[src + r]
                    continue
                # a new simplex: remember it, then hash its d+1 vertices
                sid = scnt
                stable[slot] = tag(hs) | sid
                for i in range(2 * d):
                    sk[sbase + sid, i] = kab[i]
                shh[sid] = hs
                sfirst[sid] = e0
                scnt += 1
                if 2 * scnt > scap:
                    scap *= 2
                    stable = full_rehash(scap, shh, scnt)
                # the d+1 vertex keys of this simplex: vertex 0 is the remainder-0
                # point, vertex r+1 = vertex r + (1, ..., 1) - (d+1) e_j with j the
                # coordinate of rank d - r (key and polynomial hash updated in place)
                for i in range(dp1):
                    perm[i] = d
                for i in range(d):
                    perm[kab[d + i]] = i
                for i in range(d):
                    key[i] = kab[i]
                raw = raw_hash(key, d)
                for r in range(dp1):
                    if r > 0:
                        j = perm[d - r + 1]
                        for i in range(d):
                            key[i] += 1
                        if j < d:
                            key[j] -= dp1
                        raw += ones - dp1 * pw[j]
                    h = mix(raw)
                    lid, slot = full_probe(table, 0, cap - 1, h, gk, None, ebase, key, d)
                    if lid < 0:
                        lid = cnt
                        table[slot] = tag(h) | lid
                        for i in range(d):
                            gk[ebase + lid, i] = key[i]
                        hh[ebase + lid] = h
                        cnt += 1
                    loc[e0 + r] = lid
                    if 2 * cnt > cap:  # grow: rehash the stored hashes
                        cap *= 2
                        table = full_rehash(cap, hh[ebase:], cnt)
        nloc[t] = cnt


@njit(cache=True)
def local_packed_task(feats, scale, n, p0, p1, e_first, loc, bary, hh, pbase, plim, pu, table):
    """Embed pixels ``p0 .. p1`` of image ``n`` and number their vertices (packed keys).

    Pixel ``p``'s d+1 entries are ``e_first + (p - p0) * (d+1) + r``: ``loc`` gets
    the vertex's local id, ``bary`` its weight; ``hh[lid]`` = the packed key of
    local vertex ``lid``. ``table`` holds ``(packed key, id)`` pairs (its content
    on entry does not matter; a power-of-two number of slots). Returns
    ``(count, table)``: the number of vertices (-1 when a remainder-0 point is
    outside the packable range) and the table, regrown when it filled past 1/4.

    Per block of ``EMBED`` pixels the packed keys of all d+1 vertices are
    computed first, branch-free over pixels (vertex r of a simplex is the
    remainder-0 point plus ``r (1, ..., 1)`` minus ``d+1`` along every coordinate
    of rank above ``d - r``); then they are looked up one after the other. A
    pixel in the same simplex as the previous one copies its ids unhashed.
    """
    d = feats.shape[2]
    dp1 = d + 1
    nb_max = EMBED
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
        embed_block(feats, scale, n, q0, nb, eq, el, r0, rk, sm, ssum, vr, bary)
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
                lid, slot = packed_probe(table, 0, cap - 1, pk)
                if lid < 0:
                    lid = cnt
                    packed_insert(table, 0, slot, pk, lid)
                    hh[lid] = pk
                    cnt += 1
                loc[e0 + r] = lid
                if 4 * cnt > cap:  # grow: rehash the stored keys (load <= 1/4)
                    cap *= 2
                    table = packed_rehash(cap, hh, cnt)
    return cnt, table


@njit(parallel=True, cache=True)
def build_local_packed(feats, scale, nblk, loc, bary, hh, nloc, pbase, plim, pu, tables):
    """``local_packed_task`` for every task in parallel.

    A vertex key ``k`` (d coordinates) is stored as ``sum_i (k[i] - pbase[i]) * pu[i]``
    (one int64; ``hh`` holds it instead of the hash). A remainder-0 point outside
    the packable range sets ``nloc[t] = -1`` (the caller then rebuilds with full
    keys). Task ``t`` starts with the table ``tables[t]``.
    """
    n_img, npix, d = feats.shape
    dp1 = d + 1
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        ebase = (n * npix + p0) * dp1
        cnt, _ = local_packed_task(
            feats, scale, n, p0, p1, ebase, loc, bary, hh[ebase:], pbase, plim, pu, tables[t]
        )
        nloc[t] = cnt


# --------------------------------------------------------------------------- merge


@njit(parallel=True, cache=True)
def build_merge(packed, npix, dp1, nblk, gk, hh, nloc, loff, table, toff, tcap, lmap, gsrc,
                vcount):  # fmt: skip
    """Merge task-local vertices into one table per image (parallel over images).

    ``lmap[slot]`` = image-local global id of task-local slot ``loff[t] + lid``;
    ``gsrc[loff[n*nblk] + gid]`` = entry row (of ``gk``/``hh``) of that vertex's
    first occurrence. ``packed``: ``hh`` holds packed keys and ``table`` (key, id)
    pairs (``gk`` unused); else ``hh`` holds hashes, ``gk`` the keys.
    """
    d = dp1 - 1
    n_img = vcount.shape[0]
    blk = (npix + nblk - 1) // nblk
    width = 2 if packed else 1
    for n in prange(n_img):
        base = width * toff[n]
        cap = tcap[n]
        mask = cap - 1
        for i in range(width * cap):
            table[base + i] = -1
        gbase = loff[n * nblk]
        cnt = 0
        for b in range(nblk):
            t = n * nblk + b
            ebase = (n * npix + b * blk) * dp1
            for lid in range(nloc[t]):
                src = ebase + lid
                h = hh[src]
                if packed:
                    gid, slot = packed_probe(table, base, mask, h)
                else:
                    gid, slot = full_probe(table, base, mask, h, gk, gsrc, gbase, gk[src], d)
                if gid < 0:
                    gid = cnt
                    if packed:
                        packed_insert(table, base, slot, h, gid)
                    else:
                        table[base + slot] = tag(h) | gid
                    gsrc[gbase + gid] = src
                    cnt += 1
                lmap[loff[t] + lid] = gid
        vcount[n] = cnt


@njit(parallel=True, cache=True)
def build_offsets(npix, dp1, nblk, loc, loff, lmap, voff, off):
    """Per entry: ``off`` = global vertex of the global slot ``loff[t] + loc`` (B > 1 only)."""
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        lo = loff[t]
        vo = voff[n]
        for e in range((n * npix + p0) * dp1, (n * npix + p1) * dp1):
            off[e] = vo + lmap[lo + loc[e]]


@njit(parallel=True, cache=True)
def build_csr(nblk, nloc, loff, lmap, voff, ptr, idx):
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


# --------------------------------------------------------------------------- neighbours


@njit(parallel=True, cache=True)
def build_neighbours_full(dp1, voff, gk, hh, gsrc, loff, nblk, table, toff, tcap, nbr):
    """``nbr[j, v] = (n1, n2)``: blur neighbours along direction j; missing -> V (a zero row)."""
    d = dp1 - 1
    n_img = voff.shape[0] - 1
    nvert = voff[n_img]
    nchunk = (nvert + CHUNK - 1) // CHUNK
    pw, ones = hash_steps(d)
    for c in prange(nchunk):
        k0 = np.empty(d, np.int32)
        k1 = np.empty(d, np.int32)
        k2 = np.empty(d, np.int32)
        n = 0
        for v in range(c * CHUNK, min(nvert, (c + 1) * CHUNK)):
            while voff[n + 1] <= v:
                n += 1
            gbase = loff[n * nblk]
            src = gsrc[gbase + v - voff[n]]
            for i in range(d):
                k0[i] = gk[src, i]
            raw = raw_hash(k0, d)
            base = toff[n]
            mask = tcap[n] - 1
            for j in range(dp1):
                for i in range(d):
                    k1[i] = k0[i] - 1
                    k2[i] = k0[i] + 1
                if j < d:
                    k1[j] = k0[j] + d
                    k2[j] = k0[j] - d
                step = ones - dp1 * pw[j]
                g1, _ = full_probe(table, base, mask, mix(raw - step), gk, gsrc, gbase, k1, d)
                g2, _ = full_probe(table, base, mask, mix(raw + step), gk, gsrc, gbase, k2, d)
                nbr[j, v, 0] = nvert if g1 < 0 else voff[n] + g1
                nbr[j, v, 1] = nvert if g2 < 0 else voff[n] + g2


@njit(parallel=True, cache=True)
def build_neighbours_packed(dp1, voff, hh, gsrc, loff, nblk, table, toff, tcap, pu, nbr):
    """``build_neighbours_full`` with packed keys: neighbour key = key -/+ a constant.

    Neighbourhood is symmetric (``u = v + step_j`` exactly when ``v = u - step_j``),
    so only the ``+`` neighbour is looked up: finding ``u`` for ``v`` also sets
    ``v`` as ``u``'s ``-`` neighbour (half the probes; every ``nbr[j, u, 0]`` is
    written by at most one ``v``, so threads never race).
    """
    d = dp1 - 1
    n_img = voff.shape[0] - 1
    nvert = voff[n_img]
    nchunk = (nvert + CHUNK - 1) // CHUNK
    pones = np.int64(0)
    for i in range(d):
        pones += pu[i]
    for c in prange(nchunk):
        for v in range(c * CHUNK, min(nvert, (c + 1) * CHUNK)):
            for j in range(dp1):
                nbr[j, v, 0] = nvert
    for c in prange(nchunk):
        n = 0
        for v in range(c * CHUNK, min(nvert, (c + 1) * CHUNK)):
            while voff[n + 1] <= v:
                n += 1
            gbase = loff[n * nblk]
            pk = hh[gsrc[gbase + v - voff[n]]]
            base = 2 * toff[n]
            mask = tcap[n] - 1
            for j in range(dp1):
                g2, _ = packed_probe(table, base, mask, pk + pones - dp1 * pu[j])
                if g2 < 0:
                    nbr[j, v, 1] = nvert
                else:
                    nbr[j, v, 1] = voff[n] + g2
                    nbr[j, voff[n] + g2, 0] = v


@njit(cache=True)
def neighbours_local(hh, cnt, table, pu, nbr):
    """Blur neighbours of one image's ``cnt`` vertices from its local ``(key, id)`` table.

    As ``build_neighbours_packed``: only ``v + step_j`` is looked up; finding it
    also records ``v`` as its ``- step_j`` neighbour. Missing neighbours -> ``cnt``.
    """
    dp1 = nbr.shape[0]
    d = dp1 - 1
    mask = table.shape[0] // 2 - 1
    pones = np.int64(0)
    for i in range(d):
        pones += pu[i]
    for j in range(dp1):
        for v in range(cnt):
            nbr[j, v, 0] = cnt
    for v in range(cnt):
        pk = hh[v]
        for j in range(dp1):
            g2, _ = packed_probe(table, 0, mask, pk + pones - dp1 * pu[j])
            if g2 < 0:
                nbr[j, v, 1] = cnt
            else:
                nbr[j, v, 1] = g2
                nbr[j, g2, 0] = v


# --------------------------------------------------------------------------- driver


def build_arrays(f, scale, nblk, pack, *, require_packed, per_task_hint, min_table):
    """Run the build phases over features ``f`` ``(N, P, d)`` float32.

    ``pack`` = :func:`~._embed.pack_params` or ``None`` (full keys). Returns
    ``(LatticeArrays, BuildInfo)``.
    """
    n_img, npix, d = f.shape
    dp1 = d + 1
    nent = n_img * npix * dp1
    clock = [time.perf_counter()]
    ntask = n_img * nblk
    blk_entries = -(-npix // nblk) * dp1
    loc = _pool.empty(nent, np.int32)
    bary = _pool.empty(nent, np.float32)
    # worst-case sized, but only the rows of real task-local vertices are
    # ever written (untouched pages of a large np.empty cost no memory)
    hh = _pool.empty(nent, np.int64)
    nloc = np.zeros(ntask, np.int32)
    most = None
    if pack is not None:
        pbase, plim, pu = pack
        cap0 = first_table_capacity(blk_entries, per_task_hint, min_table)
        tables = _pool.empty((ntask, 2 * cap0), np.int64)
        build_local_packed(f, scale, nblk, loc, bary, hh, nloc, pbase, plim, pu, tables)
        del tables
        most = max(int(nloc.max()), 1)
        if (nloc < 0).any():  # a key out of the packable range: full keys
            if require_packed:
                raise ValueError(
                    "keys='packed' was asked for, but a lattice key falls outside the "
                    "packable range; use keys='auto'"
                )
            pack = None
    gk = np.empty((1, 1), np.int32)  # full keys only
    if pack is None:
        gk = _pool.empty((nent, d), np.int32)
        sk = _pool.empty((n_img * npix, 2 * d), np.int32)  # simplex keys (touched rows only)
        build_local_full(f, scale, nblk, loc, bary, gk, hh, nloc, sk, min_table)
        del sk
    packed = pack is not None
    clock.append(time.perf_counter())

    loff = np.zeros(ntask + 1, np.int64)
    np.cumsum(nloc, out=loff[1:])
    nslot = int(loff[-1])
    per_img = loff[nblk::nblk] - loff[:-1:nblk]
    tcap = pow2_at_least(np.maximum(4 * per_img, 16))
    toff = np.zeros(n_img + 1, np.int64)
    np.cumsum(tcap, out=toff[1:])
    lmap = _pool.empty(nslot, np.int32)
    gsrc = _pool.empty(nslot, np.int64)
    vcount = np.zeros(n_img, np.int64)
    table = _pool.empty((2 if packed else 1) * int(toff[-1]), np.int64)
    build_merge(packed, npix, dp1, nblk, gk, hh, nloc, loff, table, toff, tcap, lmap, gsrc, vcount)
    clock.append(time.perf_counter())

    voff = np.zeros(n_img + 1, np.int64)
    np.cumsum(vcount, out=voff[1:])
    nvert = int(voff[-1])
    direct = nblk == 1
    if direct:
        # one task per image: task-local ids are the image's vertex ids, in
        # order, so the global vertex is the task's first slot + the local id
        off, obase = loc, loff[:-1]
    else:
        off, obase = _pool.empty(nent, np.int32), np.zeros(ntask, np.int64)
        build_offsets(npix, dp1, nblk, loc, loff, lmap, voff, off)
    clock.append(time.perf_counter())

    nbr = _pool.empty((dp1, nvert, 2), np.int32)
    if packed:
        build_neighbours_packed(dp1, voff, hh, gsrc, loff, nblk, table, toff, tcap, pack[2], nbr)
    else:
        build_neighbours_full(dp1, voff, gk, hh, gsrc, loff, nblk, table, toff, tcap, nbr)
    del gk, hh, table, gsrc
    clock.append(time.perf_counter())

    if direct:
        ptr, idx = np.zeros(0, np.int64), np.zeros(0, np.int32)
    else:
        ptr = np.zeros(nvert + 1, np.int64)
        idx = _pool.empty(nslot, np.int32)
        build_csr(nblk, nloc, loff, lmap, voff, ptr, idx)
    clock.append(time.perf_counter())
    seconds = dict(zip(("local", "merge", "offsets", "neighbours", "csr"), np.diff(clock).tolist()))
    arrays = LatticeArrays(nblk, loc, bary, loff, off, obase, nbr, ptr, idx, voff)
    return arrays, BuildInfo(packed, nvert, nslot, most, seconds)
