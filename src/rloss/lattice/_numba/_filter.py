"""Filtering on a built batch lattice: splat, (reduce), blur, slice.

Values live as ``(vertices + 1, padded(C))`` rows, class index innermost, all C
channels in one pass, padded with zero columns to a multiple of
:data:`~._simd.LANES` so that every row operation is a few fixed-width vector
operations (:mod:`._simd`); row V is the zero row that missing neighbours point to.
Splat scatters each pixel into its task's private rows (race-free); with more
than one task per image the private rows are summed per vertex through the
CSR vertex -> slots list in a fixed order (deterministic). Splat and slice move
pixels in tiles of ``TILE``, turning the ``(C, tile)`` block of the
``(N, C, P)`` tensor into ``(tile, C)`` rows in cache, so both the tensor and
the lattice rows are read and written contiguously. Blur and slice are
parallel over vertices and pixels. The kernels take the build's
:class:`~._build.LatticeArrays` as one argument ``A``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from rloss.lattice import _pool
from rloss.lattice._numba._layout import CHUNK, TILE, task_pixels
from rloss.lattice._numba._simd import LANES, padded, vaxpy, vblur, vgather, vtranspose


@njit(cache=True)
def scatter_tile(tmp, nb, e_first, dp1, lo, loc, bary, buf):
    """Add the ``(nb, W)`` tile ``tmp`` (pixels from entry ``e_first`` on) to the
    rows ``lo + loc[e]`` of ``buf``, weighted (``W`` = padded width, a multiple of
    ``LANES``; one vector operation per block of channels)."""
    width = buf.shape[1]
    tf = tmp.reshape(-1)
    bf = buf.reshape(-1)
    for b in range(nb):
        e0 = e_first + b * dp1
        tb = b * width
        for r in range(dp1):
            s = (lo + loc[e0 + r]) * width
            w = bary[e0 + r]
            for c in range(0, width, LANES):
                vaxpy(bf, s + c, tf, tb + c, w)


@njit(parallel=True, cache=True)
def splat(vals, A, buf):
    """Scatter each pixel's C values into its task's rows of ``buf`` (zeroed here):
    row ``A.loff[t] + A.loc[e]`` (``loc`` holds task-local ids).

    Pixels go in tiles of ``TILE``: the tile's ``(C, tile)`` input is read row
    by row (contiguous) into a ``(tile, W)`` scratch (``W = buf.shape[1]``, the
    padded width; padding columns zero), then each pixel adds its values to
    d+1 rows.
    """
    _, nch, npix = vals.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    loff = A.loff
    ntask = loff.shape[0] - 1
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        lo = loff[t]
        buf[lo : loff[t + 1]] = 0.0
        tmp = np.zeros((TILE, buf.shape[1]), vals.dtype)
        for q0 in range(p0, p1, TILE):
            nb = min(TILE, p1 - q0)
            for k in range(nch):
                for b in range(nb):
                    tmp[b, k] = vals[n, k, q0 + b]
            scatter_tile(tmp, nb, (n * npix + q0) * dp1, dp1, lo, A.loc, A.bary, buf)


@njit(parallel=True, cache=True)
def reduce_slots(buf, ptr, idx, out):
    """``out[v] = sum of buf[idx[ptr[v]:ptr[v+1]]]`` (fixed order); ``out[V] = 0``."""
    nvert = ptr.shape[0] - 1
    nch = buf.shape[1]
    nchunk = (nvert + CHUNK - 1) // CHUNK
    for c in prange(nchunk):
        for v in range(c * CHUNK, min(nvert, (c + 1) * CHUNK)):
            for k in range(nch):
                out[v, k] = 0.0
            for i in range(ptr[v], ptr[v + 1]):
                s = idx[i]
                for k in range(nch):
                    out[v, k] += buf[s, k]
    for k in range(nch):
        out[nvert, k] = 0.0


@njit(cache=True)
def blur_rows(src, dst, nbr, j, v0, v1, half):
    """Rows ``v0 .. v1`` of blur pass ``j``: ``dst[v] = src[v] + half (src[n1] + src[n2])``."""
    width = src.shape[1]
    sf = src.reshape(-1)
    df = dst.reshape(-1)
    for v in range(v0, v1):
        n1 = np.int64(nbr[j, v, 0]) * width
        n2 = np.int64(nbr[j, v, 1]) * width
        o = v * width
        for c in range(0, width, LANES):
            vblur(df, o + c, sf, o + c, n1 + c, n2 + c, half)


@njit(parallel=True, cache=True)
def blur(a, b, nbr, half):
    """d+1 passes ``new = old + half * (old[n1] + old[n2])``.

    Returns 0 when the result is in ``a``, 1 when it is in ``b``.
    """
    dp1 = nbr.shape[0]
    nvert = nbr.shape[1]
    nchunk = (nvert + CHUNK - 1) // CHUNK
    b[nvert] = 0.0
    for j in range(dp1):
        src = a if j % 2 == 0 else b
        dst = b if j % 2 == 0 else a
        for c in prange(nchunk):
            blur_rows(src, dst, nbr, j, c * CHUNK, min(nvert, (c + 1) * CHUNK), half)
    return dp1 % 2


@njit(cache=True)
def transpose_tile(dst, ds, src, ss, rows, cols):
    """``dst[j*ds + i] = src[i*ss + j]`` for ``i < rows``, ``j < cols`` (both multiples of
    ``LANES``), in ``LANES x LANES`` blocks (:func:`~._simd.vtranspose`): a tile of
    the ``(C, pixels)`` values to pixel-major lattice rows, or back."""
    for i in range(0, rows, LANES):
        for j in range(0, cols, LANES):
            vtranspose(dst, j * ds + i, ds, src, i * ss + j, ss)


@njit(cache=True)
def gather_tile(lat, nb, e_first, dp1, ob, off, bary, alpha, acc, rows, wts):
    """``acc[b, :] = sum_r (alpha * bary) * lat[ob + off[e], :]`` for the ``nb`` pixels
    whose entries start at ``e_first`` (rows of the padded width, vector blocks).

    The tile's row offsets and weights go first into the scratch ``rows`` (int64)
    and ``wts`` (the lattice's dtype: ``alpha * bary`` rounded as a scalar call
    would), both of at least ``nb * dp1``; then each pixel's d+1 rows are summed
    block by block in registers (:func:`~._simd.vgather`).
    """
    width = lat.shape[1]
    lf = lat.reshape(-1)
    af = acc.reshape(-1)
    ne = nb * dp1
    offs = off[e_first : e_first + ne]
    bars = bary[e_first : e_first + ne]
    for i in range(ne):
        rows[i] = (ob + np.int64(offs[i])) * width
        wts[i] = bars[i] * alpha
    for b in range(nb):
        for c in range(0, width, LANES):
            vgather(af, b * width + c, lf, c, rows, wts, b * dp1, dp1)


@njit(parallel=True, cache=True)
def slice_values(lat, A, alpha, out):
    """``out[n, :, p] = sum_r (alpha * bary) * lat[vertex_r]``, ``vertex_r = obase[t] + vid[e]``.

    Pixels go in tiles of ``TILE``: each pixel's C outputs are accumulated in a
    ``(tile, C)`` scratch from d+1 contiguous rows (class index innermost), then
    the tile is written out row by row (contiguous).
    """
    n_img, nch, npix = out.shape
    dp1 = A.nbr.shape[0]
    nblk = A.nblk
    ntask = n_img * nblk
    for t in prange(ntask):
        n, p0, p1 = task_pixels(t, nblk, npix)
        ob = A.obase[t]
        acc = np.empty((TILE, lat.shape[1]), out.dtype)
        rows = np.empty(TILE * dp1, np.int64)
        wts = np.empty(TILE * dp1, lat.dtype)
        for q0 in range(p0, p1, TILE):
            nb = min(TILE, p1 - q0)
            gather_tile(
                lat, nb, (n * npix + q0) * dp1, dp1, ob, A.vid, A.bary, alpha, acc, rows, wts
            )
            for k in range(nch):
                for b in range(nb):
                    out[n, k, q0 + b] = acc[b, k]


def splat_blur(A, num_vertices, splat_fn, args, nch, dt, keep=False):
    """Splat with ``splat_fn(*args, A, rows)``, reduce the task rows if needed, then blur.

    Returns the blurred ``(V + 1, padded(nch))`` rows (pooled memory); the splat
    zeroes the rows it fills, padding columns included. ``keep``: returns
    ``(splat rows, blurred rows)``.
    """
    lat_a = _pool.empty((num_vertices + 1, padded(nch)), dt)
    if A.nblk == 1:
        splat_fn(*args, A, lat_a)
        lat_a[num_vertices] = 0.0
    else:
        buf = _pool.empty((int(A.loff[-1]), padded(nch)), dt)
        splat_fn(*args, A, buf)
        reduce_slots(buf, A.ptr, A.idx, lat_a)
        del buf
    kept = None
    if keep:
        kept = _pool.empty(lat_a.shape, dt)
        kept[:] = lat_a
    lat_b = _pool.empty(lat_a.shape, dt)
    which = blur(lat_a, lat_b, A.nbr, dt.type(0.5))
    out = lat_b if which == 1 else lat_a
    return (kept, out) if keep else out
