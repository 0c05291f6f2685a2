r"""The fused quadratic form ``Σ_k s_kᵀ W (r − s_k)`` and its gradient, ``s_k = x_k ⊙ r``.

For values ``x`` ``(N, K, P)`` and weights ``r`` ``(N, P)``, per image::

    e_n = Σ_k s_kᵀ W (r − s_k)        v_n = rᵀ W r        (normalize: e_n / v_n)
    g   = c_n · r ⊙ (W r − 2 W s_k)   c_n = grad_scale (÷ v_n when normalize)

The splat reads ``x`` and ``r`` and forms the ``K + 1`` channels ``[x ⊙ r, r]``
tile by tile (``splat_weighted``), and the slice contracts ``[W s, W r]``
straight into ``e_n`` and ``g`` (``slice_quadratic``): no ``(N, K + 1, P)``
tensor is written and no elementwise pass over one follows. On a lattice not
built yet, ``quadratic_image`` goes further: it builds,
splats, blurs and slices one image per task (``quadratic_image``) in the
scratch rows of the thread that runs it, never forming the batch lattice.

While the values pass through the splat, it folds raw value statistics into
``stats`` rows (float64, 4 per task or image): ``[0]`` min and ``[1]`` max of
``x`` over pixels with ``r > 0``, ``[2]`` the largest ``|Σ_k x_k − 1|`` over
those pixels, ``[3]`` a sum that is NaN exactly when some value of ``x``
anywhere is NaN or infinite. They cost no extra pass; what they mean (e.g.
"probabilities") is for the caller to decide.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from rloss.lattice._numba._build import local_packed_task, neighbours_local
from rloss.lattice._numba._filter import blur_rows, gather_tile, scatter_tile
from rloss.lattice._numba._hashtable import packed_insert, packed_probe
from rloss.lattice._numba._layout import TILE, task_pixels
from rloss.lattice._numba._simd import LANES, vquad
from rloss.lattice._numba._team import team


@njit(cache=True)
def splat_weighted_range(x, r, n, p0, p1, e_first, dp1, lo, loc, bary, buf, tmp, stats):
    """Splat ``[x * r, r]`` of pixels ``p0 .. p1`` of image ``n`` (entries from
    ``e_first``) into rows ``lo + loc[e]`` of ``buf``; ``tmp`` is ``(TILE, W)``
    (``W = buf.shape[1]``, the padded width; its columns from ``K + 1`` on must
    be zero); folds the statistics of the module docstring into ``stats`` (4,).

    Per tile, the products and the per-pixel statistics are computed channel by
    channel over contiguous pixel runs (``prod``, ``psum``, ... vectorise), the
    products then copied into the pixel-major ``tmp`` rows the scatter reads;
    the statistics are kept per tile slot and folded into ``stats`` at the end
    (min, max and the NaN sum do not depend on the order).
    """
    k = x.shape[1]
    dt = x.dtype
    rr = np.empty(TILE, dt)
    prod = np.empty(TILE, dt)
    psum = np.empty(TILE, dt)
    pmin = np.empty(TILE, dt)
    pmax = np.empty(TILE, dt)
    smin = np.full(TILE, np.inf)
    smax = np.full(TILE, -np.inf)
    serr = np.zeros(TILE)
    snan = np.zeros(TILE)
    for q0 in range(p0, p1, TILE):
        nb = min(TILE, p1 - q0)
        for b in range(nb):
            rr[b] = r[n, q0 + b]
            v = x[n, 0, q0 + b]
            psum[b] = v
            pmin[b] = v
            pmax[b] = v
            prod[b] = v * rr[b]
        for b in range(nb):
            tmp[b, 0] = prod[b]
            tmp[b, k] = rr[b]
        for c in range(1, k):
            for b in range(nb):
                v = x[n, c, q0 + b]
                prod[b] = v * rr[b]
                psum[b] += v
                pmin[b] = v if v < pmin[b] else pmin[b]
                pmax[b] = v if v > pmax[b] else pmax[b]
            for b in range(nb):
                tmp[b, c] = prod[b]
        for b in range(nb):
            sb = np.float64(psum[b])
            snan[b] += sb - sb
            inside = rr[b] > 0
            lo_b = np.float64(pmin[b])
            hi_b = np.float64(pmax[b])
            er_b = abs(sb - 1.0)
            smin[b] = lo_b if inside and lo_b < smin[b] else smin[b]
            smax[b] = hi_b if inside and hi_b > smax[b] else smax[b]
            serr[b] = er_b if inside and er_b > serr[b] else serr[b]
        scatter_tile(tmp, nb, e_first + (q0 - p0) * dp1, dp1, lo, loc, bary, buf)
    for b in range(TILE):
        stats[3] += snan[b]
        stats[0] = min(stats[0], smin[b])
        stats[1] = max(stats[1], smax[b])
        stats[2] = max(stats[2], serr[b])


@njit(cache=True)
def stats_init(stats):
    """Start values of the ``stats`` rows (see the module docstring)."""
    for t in range(stats.shape[0]):
        stats[t, 0] = np.inf
        stats[t, 1] = -np.inf
        stats[t, 2] = 0.0
        stats[t, 3] = 0.0


def stats_summary(stats: np.ndarray) -> tuple[float, float, float, bool]:
    """Reduce per-task ``stats`` rows to plain ``(min, max, sum_error, finite)``.

    ``min``/``max`` are ``inf``/``-inf`` when no pixel has ``r > 0``.
    """
    finite = bool(np.isfinite(stats[:, 3]).all())
    return float(stats[:, 0].min()), float(stats[:, 1].max()), float(stats[:, 2].max()), finite


@njit(parallel=True, cache=True)
def splat_weighted(x, r, stats, A, buf):
    """:func:`~._filter.splat` of the ``K + 1`` channels ``[x * r, r]`` without forming them.

    The products are those the caller would compute (same rounding), so the
    result equals ``splat`` of the concatenation bit for bit. ``stats[t]`` gets
    task ``t``'s value statistics.
    """
    _, _k, npix = x.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    loff = A.loff
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        lo = loff[t]
        buf[lo : loff[t + 1]] = 0.0
        tmp = np.zeros((TILE, buf.shape[1]), x.dtype)
        e_first = (n * npix + p0) * dp1
        splat_weighted_range(x, r, n, p0, p1, e_first, dp1, lo, A.loc, A.bary, buf, tmp, stats[t])


@njit(cache=True)
def channel_dot_range(lat, ch, dp1, off, ob, bary, alpha, roi, n, p0, p1, e_first):
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
def slice_channel_dot(lat, ch, A, alpha, r, part):
    """``part[t] = sum_p r[p] * (W v)[ch, p]`` over task ``t``'s pixels (float64)."""
    n_img, npix = r.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        e_first = (n * npix + p0) * dp1
        part[t] = channel_dot_range(
            lat, ch, dp1, A.vid, A.obase[t], A.bary, alpha, r, n, p0, p1, e_first
        )


@njit(cache=True)
def quadratic_range(lat, dp1, off, ob, bary, alpha, x, r, n, p0, p1, e_first, c, want, grad):
    """Slice and contract pixels ``p0 .. p1`` of image ``n`` (see ``slice_quadratic``);
    returns their ``Σ_k s_k (W r − W s_k)``.

    Per tile, the sliced ``(tile, W)`` rows are transposed to ``(W, tile)`` so
    that the contraction runs over ``LANES`` pixels at a time (:func:`~._simd.vquad`),
    with one partial sum per lane; a tile's sum is its lanes', in lane order,
    then the remainder pixels' (float32), and tiles are summed in float64.
    """
    k = x.shape[1]
    npix = x.shape[2]
    width = lat.shape[1]
    two = x.dtype.type(2.0)
    acc = np.empty((TILE, width), x.dtype)
    tr = np.empty((k + 1, TILE), x.dtype)
    lanes = np.empty(LANES, x.dtype)
    xf = x.reshape(-1)
    rf = r.reshape(-1)
    gf = grad.reshape(-1)
    trf = tr.reshape(-1)
    total = 0.0
    for q0 in range(p0, p1, TILE):
        nb = min(TILE, p1 - q0)
        gather_tile(lat, nb, e_first + (q0 - p0) * dp1, dp1, ob, off, bary, alpha, acc)
        for j in range(k + 1):
            for b in range(nb):
                tr[j, b] = acc[b, j]
        lanes[:] = 0.0
        nv = nb - nb % LANES
        rb0 = n * npix + q0
        for j in range(k):
            xb = (n * k + j) * npix + q0
            for b in range(0, nv, LANES):
                vquad(xf, xb + b, rf, rb0 + b, trf, k * TILE + b, j * TILE + b, lanes, gf,
                      xb + b, c, want)  # fmt: skip
        tile = x.dtype.type(0.0)
        for i in range(LANES):
            tile += lanes[i]
        for j in range(k):
            for b in range(nv, nb):
                rb = r[n, q0 + b]
                wr = tr[k, b]
                ws = tr[j, b]
                tile += x[n, j, q0 + b] * rb * (wr - ws)
                if want:
                    grad[n, j, q0 + b] = c * rb * (wr - two * ws)
        total += tile
    return total


@njit(parallel=True, cache=True)
def slice_quadratic(lat, A, alpha, x, r, coef, want, grad, part):
    """Slice ``[W s, W r]`` and contract it on the fly (no ``(N, K+1, P)`` output).

    Per pixel ``Σ_k s_k ((W r) − (W s)_k)`` is summed into ``part[t]`` (float64
    per tile), and when ``want`` the gradient
    ``grad[n, k, p] = coef[n] * r_p * ((W r)_p - 2 (W s)_kp)`` is written.
    """
    n_img, _, npix = x.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        e_first = (n * npix + p0) * dp1
        part[t] = quadratic_range(
            lat, dp1, A.vid, A.obase[t], A.bary, alpha, x, r, n, p0, p1, e_first,
            coef[n], want, grad,
        )  # fmt: skip


@njit(cache=True, nogil=True)
def quadratic_image(
    n, slot, feats, scale, pbase, plim, pu, alpha, x, r, normalize, grad_scale, want,
    grad, part, volume, stats, counts, s_loc, s_bary, s_hh, s_table, s_nbr, s_lat_a, s_lat_b,
):  # fmt: skip
    """Build, splat, blur and slice image ``n`` in scratch row ``slot``, never forming a
    batch lattice (one task of :func:`._team.run`; releases the GIL).

    The image's entries, keys, table, neighbours and lattice rows live in the
    scratch rows ``s_*[slot]`` of the thread that runs it, so they stay in that
    core's cache from the build to the slice. The vertex numbering and every
    floating-point operation are those of the batch path with one block per
    image (``build_local_packed`` ... ``slice_quadratic``): results are identical.

    ``counts[n]`` = the image's vertex count; -1 when a key is outside the
    packable range (nothing else done for that image). When the count does not
    fit the scratch rows (``s_lat_a.shape[1] - 1``), the image is left for the
    caller to rerun with larger ones. ``stats[n]`` gets the image's statistics.
    """
    npix = feats.shape[1]
    dp1 = feats.shape[2] + 1
    k = x.shape[1]
    rows = s_lat_a.shape[1]
    half = x.dtype.type(0.5)
    tiny = np.finfo(x.dtype).tiny
    loc, bary, hh = s_loc[slot], s_bary[slot], s_hh[slot]
    cnt, table = local_packed_task(
        feats, scale, n, 0, npix, 0, loc, bary, hh, pbase, plim, pu, s_table[slot]
    )
    counts[n] = cnt
    if cnt < 0 or cnt + 1 > rows:
        return
    nbr = s_nbr[slot]
    neighbours_local(hh, cnt, table, pu, nbr)
    lat_a, lat_b = s_lat_a[slot], s_lat_b[slot]
    lat_a[: cnt + 1] = 0.0
    tmp = np.zeros((TILE, lat_a.shape[1]), x.dtype)
    splat_weighted_range(x, r, n, 0, npix, 0, dp1, 0, loc, bary, lat_a, tmp, stats[n])
    lat_b[cnt] = 0.0
    for j in range(dp1):
        if j % 2 == 0:
            blur_rows(lat_a, lat_b, nbr, j, 0, cnt, half)
        else:
            blur_rows(lat_b, lat_a, nbr, j, 0, cnt, half)
    lat = lat_b if dp1 % 2 == 1 else lat_a
    vol = 1.0
    if normalize:
        vol = channel_dot_range(lat, k, dp1, loc, 0, bary, alpha, r, n, 0, npix, 0)
        vol = max(vol, tiny)
    c = x.dtype.type(grad_scale / vol)
    part[n] = quadratic_range(lat, dp1, loc, 0, bary, alpha, x, r, n, 0, npix, 0, c, want, grad)
    volume[n] = vol


# ------------------------------------------------------------------ images split in blocks
#
# With fewer images than blocks (``nblk > 1``: fewer than ``MIN_TASKS`` images) the
# per-image kernel above would leave threads idle (one image on two threads). These
# kernels run the same build-to-slice in phases over the batch path's pixel blocks,
# each phase a set of ``nogil`` tasks of :func:`._team.run`, so that
# every thread works on every image. Vertex numbering (blocks merged in order), the
# slot reduction (block order) and the per-block sums are those of the batch lattice
# with ``nblk`` blocks per image: the results equal the batch path's bit for bit.
# Arrays are per image (``[n]``): ``loc``, ``bary``, ``hh`` ``(N, P * (d+1))`` with the
# block's entries from ``p0 * (d+1)`` on; slot rows ``buf`` ``(slots, W)`` with task
# ``t``'s from ``loff[t]``; vertex rows ``lat_a``/``lat_b`` ``(N, rows, W)``.


@njit(cache=True, nogil=True)
def split_local(t, slot, nblk, feats, scale, pbase, plim, pu, loc, bary, hh, tables, nloc):
    """Task ``t``: embed block ``t % nblk`` of image ``t // nblk`` and number its
    vertices locally (``local_packed_task``); ``nloc[t]`` = count or -1 (unpackable)."""
    npix = feats.shape[1]
    dp1 = feats.shape[2] + 1
    n, p0, p1 = task_pixels(t, nblk, npix)
    e0 = p0 * dp1
    cnt, _ = local_packed_task(
        feats, scale, n, p0, p1, e0, loc[n], bary[n], hh[n, e0:], pbase, plim, pu, tables[t]
    )
    nloc[t] = cnt


@njit(cache=True, nogil=True)
def split_merge(n, slot, nblk, npix, dp1, hh, nloc, loff, table, lmap, gkey, pu, nbr, counts):
    """Image ``n``: merge its blocks' vertices in block order into one table (``lmap[slot]``
    = image vertex id; ``gkey[n, v]`` its key), then its blur neighbours ``nbr[n]``
    (missing -> the zero row ``counts[n]``), as ``build_merge`` and
    ``build_neighbours_packed`` do for the batch lattice."""
    blk = (npix + nblk - 1) // nblk
    tab = table[n]
    tab[:] = -1
    mask = tab.shape[0] // 2 - 1
    cnt = 0
    for b in range(nblk):
        t = n * nblk + b
        ebase = b * blk * dp1
        for lid in range(nloc[t]):
            h = hh[n, ebase + lid]
            gid, slot = packed_probe(tab, 0, mask, h)
            if gid < 0:
                gid = cnt
                packed_insert(tab, 0, slot, h, gid)
                gkey[n, gid] = h
                cnt += 1
            lmap[loff[t] + lid] = gid
    counts[n] = cnt
    neighbours_local(gkey[n], cnt, tab, pu, nbr[n])


@njit(cache=True, nogil=True)
def split_splat(t, slot, nblk, x, r, loc, bary, loff, lmap, buf, stats):
    """Task ``t``: splat ``[x * r, r]`` of its block into its slot rows of ``buf`` (as
    ``splat_weighted``), then turn its entries' local ids in ``loc`` into image vertex ids."""
    npix = x.shape[2]
    dp1 = loc.shape[1] // npix
    n, p0, p1 = task_pixels(t, nblk, npix)
    lo = loff[t]
    buf[lo : loff[t + 1]] = 0.0
    tmp = np.zeros((TILE, buf.shape[1]), x.dtype)
    ln = loc[n]
    splat_weighted_range(x, r, n, p0, p1, p0 * dp1, dp1, lo, ln, bary[n], buf, tmp, stats[t])
    for e in range(p0 * dp1, p1 * dp1):
        ln[e] = lmap[lo + ln[e]]


@njit(cache=True, nogil=True)
def split_reduce_blur(n, slot, nblk, nloc, loff, lmap, buf, counts, nbr, lat_a, lat_b):
    """Image ``n``: sum its slot rows into vertex rows in block order (as ``reduce_slots``),
    then blur; returns nothing, the result is in ``lat_b[n]`` for odd d+1, else ``lat_a[n]``."""
    cnt = counts[n]
    la, lb = lat_a[n], lat_b[n]
    nch = buf.shape[1]
    la[: cnt + 1] = 0.0
    for b in range(nblk):
        t = n * nblk + b
        for lid in range(nloc[t]):
            s = loff[t] + lid
            g = lmap[s]
            for k in range(nch):
                la[g, k] += buf[s, k]
    lb[cnt] = 0.0
    half = la.dtype.type(0.5)
    nb = nbr[n]
    for j in range(nb.shape[0]):
        if j % 2 == 0:
            blur_rows(la, lb, nb, j, 0, cnt, half)
        else:
            blur_rows(lb, la, nb, j, 0, cnt, half)


@njit(cache=True, nogil=True)
def split_volume(t, slot, nblk, lat, k, loc, bary, alpha, r, part):
    """Task ``t``: ``part[t] = Σ_p r_p (W r)_p`` over its block (``slice_channel_dot``)."""
    npix = r.shape[1]
    dp1 = loc.shape[1] // npix
    n, p0, p1 = task_pixels(t, nblk, npix)
    part[t] = channel_dot_range(lat[n], k, dp1, loc[n], 0, bary[n], alpha, r, n, p0, p1, p0 * dp1)


@njit(cache=True, nogil=True)
def split_slice(t, slot, nblk, lat, loc, bary, alpha, x, r, coef, want, grad, part):
    """Task ``t``: slice and contract its block (``slice_quadratic``) into ``part[t]``."""
    npix = x.shape[2]
    dp1 = loc.shape[1] // npix
    n, p0, p1 = task_pixels(t, nblk, npix)
    part[t] = quadratic_range(
        lat[n], dp1, loc[n], 0, bary[n], alpha, x, r, n, p0, p1, p0 * dp1, coef[n], want, grad
    )


# ------------------------------------------------------------------ launchers (``_team``)


@njit(cache=True, nogil=True)
def quadratic_image_team(nthreads, hdr, args):
    team(quadratic_image, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_local_team(nthreads, hdr, args):
    team(split_local, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_merge_team(nthreads, hdr, args):
    team(split_merge, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_splat_team(nthreads, hdr, args):
    team(split_splat, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_reduce_blur_team(nthreads, hdr, args):
    team(split_reduce_blur, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_volume_team(nthreads, hdr, args):
    team(split_volume, nthreads, hdr, args)


@njit(cache=True, nogil=True)
def split_slice_team(nthreads, hdr, args):
    team(split_slice, nthreads, hdr, args)
