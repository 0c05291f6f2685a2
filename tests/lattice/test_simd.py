"""The fixed-width vector row operations of the numba backend (``_simd``) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from rloss.lattice._numba import _simd  # noqa: E402

L = _simd.LANES


@numba.njit(cache=False)
def _transpose(dst, di, ds, src, si, ss):
    _simd.vtranspose(dst, di, ds, src, si, ss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("si, ss, di, ds", [(0, L, 0, L), (5, 30, 3, 41), (7, 64, 0, 24)])
def test_vtranspose_moves_each_element_to_its_mirror(dtype, si, ss, di, ds):
    src = np.random.default_rng(0).standard_normal(si + ss * L + L).astype(dtype)
    src[si + 2] = np.nan  # bits are moved, not computed
    dst = np.full(di + ds * L + L, -7.0, dtype)
    _transpose(dst, di, ds, src, si, ss)
    block_in = np.stack([src[si + i * ss : si + i * ss + L] for i in range(L)])
    block_out = np.stack([dst[di + j * ds : di + j * ds + L] for j in range(L)])
    np.testing.assert_array_equal(block_out, block_in.T)
    # nothing outside the block's rows is written
    outside = np.ones(dst.shape, bool)
    for j in range(L):
        outside[di + j * ds : di + j * ds + L] = False
    assert (dst[outside] == -7.0).all()


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_transpose_masks_compose_to_a_transpose(lanes):
    rows = [[(i, j) for j in range(lanes)] for i in range(lanes)]
    for m, lo, hi in _simd._transpose_masks(lanes):
        out = list(rows)
        for i in range(lanes):
            if not i & m:
                both = rows[i] + rows[i | m]
                out[i], out[i | m] = [both[t] for t in lo], [both[t] for t in hi]
        rows = out
    assert rows == [[(j, i) for j in range(lanes)] for i in range(lanes)]


@numba.njit(cache=False)
def _gather(acc, ai, src, co, rows, wts, i0, count):
    _simd.vgather(acc, ai, src, co, rows, wts, i0, count)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("count", [1, 2, 6])
def test_vgather_sums_weighted_rows_in_order(dtype, count):
    rng = np.random.default_rng(1)
    src = rng.standard_normal(40 * L).astype(dtype)
    rows = np.array([5 * L, 0, 17 * L, 3, 30 * L, 9 * L, 2 * L], np.int64)
    wts = rng.standard_normal(rows.size).astype(dtype)
    acc = np.full(3 * L, 9.0, dtype)
    _gather(acc, L, src, 2, rows, wts, 1, count)
    want = wts[1] * src[rows[1] + 2 : rows[1] + 2 + L]
    for m in range(2, count + 1):  # left to right, multiply then add: the bits of the scalar loop
        want = want + wts[m] * src[rows[m] + 2 : rows[m] + 2 + L]
    np.testing.assert_array_equal(acc[L : 2 * L], want)
    assert (acc[:L] == 9.0).all() and (acc[2 * L :] == 9.0).all()
