r"""The fused quadratic form ``Σ_k s_kᵀ W (r − s_k)`` and its gradient, ``s_k = x_k ⊙ r``.

For values ``x`` ``(N, K, P)`` and weights ``r`` ``(N, P)``, per image::

    e_n = Σ_k s_kᵀ W (r − s_k)        v_n = rᵀ W r        (normalize: e_n / v_n)
    g   = c_n · r ⊙ (W r − 2 W s_k)   c_n = grad_scale (÷ v_n when normalize)

The splat reads ``x`` and ``r`` and forms the ``K + 1`` channels ``[x ⊙ r, r]``
tile by tile (``splat_weighted``): no ``(N, K + 1, P)`` tensor is written. With
``W = α · Sᵀ B S`` (splat ``S``, blur ``B``, slice ``α Sᵀ``), every term is a sum
over the lattice's vertices instead of its pixels::

    s_kᵀ W v = α · (S s_k)ᵀ (B S v)      so   e_n = α Σ_u Σ_k L[u,k] (BL[u,r] − BL[u,k])
                                               v_n = α Σ_u L[u,r] BL[u,r]

with ``L = S [s, r]`` the splat rows (kept) and ``BL`` the blurred ones
(``lattice_terms``, float64): a few thousand vertex rows instead of every pixel,
and ``x`` is not read again. Only the gradient is sliced (``slice_gradient``),
and only when it is wanted. On a lattice not built yet, ``quadratic_image`` goes
further: it builds, splats, blurs and slices one image per task in the scratch
rows of the thread that runs it, never forming the batch lattice.

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
from rloss.lattice._numba._filter import blur_rows, gather_tile, scatter_tile, transpose_tile
from rloss.lattice._numba._hashtable import packed_insert, packed_probe
from rloss.lattice._numba._layout import TILE, task_pixels
from rloss.lattice._numba._simd import LANES, sfence, vgrad
from rloss.lattice._numba._team import team


@njit(cache=True)
def splat_weighted_range(x, r, n, p0, p1, e_first, dp1, lo, loc, bary, buf, tmp, stats):
    """Splat ``[x * r, r]`` of pixels ``p0 .. p1`` of image ``n`` (entries from
    ``e_first``) into rows ``lo + loc[e]`` of ``buf``; ``tmp`` is ``(TILE, W)``
    scratch (``W = buf.shape[1]``, the padded width); folds the statistics of the
    module docstring into ``stats`` (4,).

    Per tile, the products and the per-pixel statistics are computed channel by
    channel over the tile's contiguous pixel run into the channel-major rows of
    ``st`` (``(W, TILE)``, rows from ``K + 1`` on zero); ``LANES x LANES`` block
    transposes (:func:`~._filter.transpose_tile`) turn them into the pixel-major
    ``tmp`` rows the scatter reads. The loops index 1-D views of the tile (an
    index provably non-negative): with ``x[n, c, q0 + b]`` numba's negative-index
    wraparound kept every access scalar (AMD EPYC Zen 4, 256² x 21 classes: 4.4 ms
    per image for what now takes about 1). The statistics are kept per tile slot
    and folded into ``stats`` at the end (min, max and the NaN sum do not depend
    on the order).
    """
    k = x.shape[1]
    dt = x.dtype
    width = buf.shape[1]
    st = np.zeros((width, TILE), dt)
    stf = st.reshape(-1)
    tf = tmp.reshape(-1)
    psum = np.empty(TILE, dt)
    pmin = np.empty(TILE, dt)
    pmax = np.empty(TILE, dt)
    smin = np.full(TILE, np.inf)
    smax = np.full(TILE, -np.inf)
    serr = np.zeros(TILE)
    snan = np.zeros(TILE)
    for q0 in range(p0, p1, TILE):
        nb = min(TILE, p1 - q0)
        rr = r[n, q0 : q0 + nb]
        xc = x[n, 0, q0 : q0 + nb]
        s0 = st[0]
        sk = st[k]
        for b in range(nb):
            v = xc[b]
            psum[b] = v
            pmin[b] = v
            pmax[b] = v
            s0[b] = v * rr[b]
            sk[b] = rr[b]
        for c in range(1, k):
            xc = x[n, c, q0 : q0 + nb]
            sc = st[c]
            for b in range(nb):
                v = xc[b]
                psum[b] += v
                pmin[b] = v if v < pmin[b] else pmin[b]
                pmax[b] = v if v > pmax[b] else pmax[b]
                sc[b] = v * rr[b]
        # whole blocks even for a short tile: rows from nb on are never scattered
        transpose_tile(tf, width, stf, TILE, width, TILE)
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
def lattice_terms(lat0, lat, k, v0, v1, alpha, normalize):
    """``(e_n, v_n)`` of the module docstring over vertex rows ``v0 .. v1`` (float64;
    ``L = lat0``, the splat; ``BL = lat``, blurred; channel ``k`` is ``r``):
    ``e_n = α Σ_u Σ_c<k L[u,c] (BL[u,k] − BL[u,c])`` and ``v_n = α Σ_u L[u,k] BL[u,k]``,
    at least the dtype's ``tiny``, when ``normalize`` (else ``v_n = 1``)."""
    e = 0.0
    vol = 0.0
    for u in range(v0, v1):
        wr = np.float64(lat[u, k])
        row = 0.0
        for c in range(k):
            row += np.float64(lat0[u, c]) * (wr - np.float64(lat[u, c]))
        e += row
        vol += np.float64(lat0[u, k]) * wr
    a = np.float64(alpha)
    return a * e, max(a * vol, np.finfo(lat.dtype).tiny) if normalize else 1.0


@njit(cache=True)
def blur_kept(lat0, lat_b, lat_c, nbr, v0, v1, half):
    """The d+1 blur passes of rows ``v0 .. v1`` of ``lat0`` without overwriting it
    (``lat0 -> lat_b``, then between ``lat_b`` and ``lat_c``); returns the array
    holding the result. The zero rows that stand for missing neighbours must be
    zero in all three."""
    dp1 = nbr.shape[0]
    blur_rows(lat0, lat_b, nbr, 0, v0, v1, half)
    for j in range(1, dp1):
        if j % 2 == 1:
            blur_rows(lat_b, lat_c, nbr, j, v0, v1, half)
        else:
            blur_rows(lat_c, lat_b, nbr, j, v0, v1, half)
    return lat_c if dp1 % 2 == 0 else lat_b


@njit(parallel=True, cache=True)
def image_terms(lat0, lat, k, voff, alpha, normalize, part, volume):
    """Per image of the batch lattice: ``(part[n], volume[n])`` = :func:`lattice_terms`
    over image ``n``'s vertices ``voff[n] .. voff[n+1]``."""
    for n in prange(part.shape[0]):
        part[n], volume[n] = lattice_terms(lat0, lat, k, voff[n], voff[n + 1], alpha, normalize)


@njit(cache=True)
def gradient_range(lat, dp1, off, ob, bary, alpha, r, n, k, p0, p1, e_first, c, grad):
    """Slice pixels ``p0 .. p1`` of image ``n`` and write their gradient
    ``grad[n, j, p] = c · r_p ((W r)_p − 2 (W s_j)_p)`` (see ``slice_gradient``).

    Per tile, the sliced ``(tile, W)`` rows are transposed to ``(W, tile)``
    (:func:`~._filter.transpose_tile`) so that the gradient is written ``LANES`` pixels
    at a time (:func:`~._simd.vgrad`).
    """
    npix = grad.shape[2]
    width = lat.shape[1]
    two = grad.dtype.type(2.0)
    acc = np.zeros((TILE, width), grad.dtype)
    tr = np.empty((width, TILE), grad.dtype)
    rows = np.empty(TILE * dp1, np.int64)
    wts = np.empty(TILE * dp1, lat.dtype)
    rf = r.reshape(-1)
    gf = grad.reshape(-1)
    af = acc.reshape(-1)
    trf = tr.reshape(-1)
    for q0 in range(p0, p1, TILE):
        nb = min(TILE, p1 - q0)
        gather_tile(lat, nb, e_first + (q0 - p0) * dp1, dp1, ob, off, bary, alpha, acc, rows, wts)
        # whole blocks even for a short tile: columns from nb on are never read
        transpose_tile(trf, TILE, af, width, TILE, width)
        nv = nb - nb % LANES
        rb0 = n * npix + q0
        for j in range(k):
            gb = (n * k + j) * npix + q0
            for b in range(0, nv, LANES):
                vgrad(rf, rb0 + b, trf, k * TILE + b, j * TILE + b, gf, gb + b, c)
        for j in range(k):
            for b in range(nv, nb):
                grad[n, j, q0 + b] = c * r[n, q0 + b] * (tr[k, b] - two * tr[j, b])
    sfence()  # the gradient's streaming stores are done before the caller reads it


@njit(parallel=True, cache=True)
def slice_gradient(lat, A, alpha, r, coef, grad):
    """Slice ``[W s, W r]`` and write ``grad[n, k, p] = coef[n] * r_p * ((W r)_p - 2 (W s)_kp)``
    (no ``(N, K+1, P)`` output)."""
    n_img, k, npix = grad.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        e_first = (n * npix + p0) * dp1
        gradient_range(
            lat, dp1, A.vid, A.obase[t], A.bary, alpha, r, n, k, p0, p1, e_first, coef[n], grad
        )


@njit(cache=True, nogil=True)
def quadratic_image(
    n, slot, feats, scale, pbase, plim, pu, alpha, x, r, normalize, grad_scale, want,
    grad, part, volume, stats, counts, s_loc, s_bary, s_hh, s_table, s_nbr, s_lat_a, s_lat_b,
    s_lat_c,
):  # fmt: skip
    """Build, splat, blur and slice image ``n`` in scratch row ``slot``, never forming a
    batch lattice (one task of :func:`._team.run`; releases the GIL).

    The image's entries, keys, table, neighbours and lattice rows live in the
    scratch rows ``s_*[slot]`` of the thread that runs it, so they stay in that
    core's cache from the build to the slice. The vertex numbering and every
    floating-point operation are those of the batch path with one block per
    image (``build_local_packed`` ... ``slice_gradient``): results are identical.

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
    loc, bary, hh = s_loc[slot], s_bary[slot], s_hh[slot]
    cnt, table = local_packed_task(
        feats, scale, n, 0, npix, 0, loc, bary, hh, pbase, plim, pu, s_table[slot]
    )
    counts[n] = cnt
    if cnt < 0 or cnt + 1 > rows:
        return
    nbr = s_nbr[slot]
    neighbours_local(hh, cnt, table, pu, nbr)
    lat_a, lat_b, lat_c = s_lat_a[slot], s_lat_b[slot], s_lat_c[slot]
    lat_a[: cnt + 1] = 0.0
    tmp = np.zeros((TILE, lat_a.shape[1]), x.dtype)
    splat_weighted_range(x, r, n, 0, npix, 0, dp1, 0, loc, bary, lat_a, tmp, stats[n])
    lat_b[cnt] = 0.0
    lat_c[cnt] = 0.0
    lat = blur_kept(lat_a, lat_b, lat_c, nbr, 0, cnt, half)
    part[n], vol = lattice_terms(lat_a, lat, k, 0, cnt, alpha, normalize)
    volume[n] = vol
    if want:
        c = x.dtype.type(grad_scale / vol)
        gradient_range(lat, dp1, loc, 0, bary, alpha, r, n, k, 0, npix, 0, c, grad)


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
def split_reduce_blur(
    n, slot, nblk, nloc, loff, lmap, buf, counts, nbr, lat_a, lat_b, lat_c, alpha, k, normalize,
    part, volume,
):  # fmt: skip
    """Image ``n``: sum its slot rows into vertex rows ``lat_a[n]`` in block order (as
    ``reduce_slots``), blur them (:func:`blur_kept`; the result in ``lat_b[n]`` for odd
    d+1, else ``lat_c[n]``), then its terms (``part[n]``, ``volume[n]``, as
    ``quadratic_image``)."""
    cnt = counts[n]
    la, lb, lc = lat_a[n], lat_b[n], lat_c[n]
    nch = buf.shape[1]
    la[: cnt + 1] = 0.0
    for b in range(nblk):
        t = n * nblk + b
        for lid in range(nloc[t]):
            s = loff[t] + lid
            g = lmap[s]
            for c in range(nch):
                la[g, c] += buf[s, c]
    lb[cnt] = 0.0
    lc[cnt] = 0.0
    lat = blur_kept(la, lb, lc, nbr[n], 0, cnt, la.dtype.type(0.5))
    part[n], volume[n] = lattice_terms(la, lat, k, 0, cnt, alpha, normalize)


@njit(cache=True, nogil=True)
def split_slice(t, slot, nblk, lat, loc, bary, alpha, r, coef, grad):
    """Task ``t``: slice its block and write its gradient (``slice_gradient``)."""
    npix = grad.shape[2]
    dp1 = loc.shape[1] // npix
    n, p0, p1 = task_pixels(t, nblk, npix)
    gradient_range(
        lat[n], dp1, loc[n], 0, bary[n], alpha, r, n, grad.shape[1], p0, p1, p0 * dp1, coef[n],
        grad,
    )  # fmt: skip


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
def split_slice_team(nthreads, hdr, args):
    team(split_slice, nthreads, hdr, args)
