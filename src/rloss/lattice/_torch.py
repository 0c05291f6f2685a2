"""Portable permutohedral-lattice backend in pure PyTorch (CPU, CUDA, other devices).

The lattice is built from the features alone (nothing here scales with the
number of channels ``C`` filtered later), once per batch, with tensor ops
only (no loop over pixels, vertices or images):

1. *Elevate* each feature vector ``f`` (dimension ``d``) onto the hyperplane
   ``sum(x) = 0`` of ``R^(d+1)`` with the rloss reference's scaled elevation
   matrix (``scale_i = (d+1) sqrt(2/3) / sqrt((i+1)(i+2))``).
2. *Round* to the nearest remainder-0 lattice point ``(d+1) m``, *rank* the
   differential coordinates (one stable sort of the ``d+1`` coordinates of
   each point) and compute the ``d+1`` barycentric weights of the enclosing
   simplex, all in the rank-sorted order (gathers, no scatter).
3. Every coordinate of the remainder-``r`` vertex is ``r + (d+1) q_i``, so a
   vertex key is ``(image, q_0..q_{d-1}, r)`` packed into one integer: int32
   when the ranges allow (a cheaper sort), else int64. The ranges come from
   the elevated extent with a margin that also covers every blur neighbour,
   so keys never collide silently. When even int64 is too small an exact,
   slower path relabels one coordinate at a time.
4. **One** stable sort of the ``Q (d+1)`` keys (``Q`` = pixels of the whole
   batch) numbers the ``M`` vertices in key order and, through its
   permutation, gives the splat matrix ``S`` (``M x Q``) row by row: a
   vertex's entries are a run of equal keys. The slice matrix ``alpha S^T``
   has ``d+1`` entries per row for free. The ``2 (d+1)`` blur neighbours of
   every vertex are found once by one ``searchsorted`` of shifted keys (the
   shift depends only on whether the vertex's remainder wraps); a missing
   neighbour points at row ``M``, which always holds zeros.

Filtering (:meth:`TorchLattice.apply`) works on values laid out as
``(pixels, C)``: splat ``S V`` and slice ``alpha S^T G`` are weighted sums of
rows, ``F.embedding_bag(mode="sum", per_sample_weights=...)`` (one kernel each,
no atomics, no scatter), and the ``d+1`` blur passes ``v + 0.5 (v[n1] +
v[n2])`` are gathers on the precomputed neighbour indices.
:meth:`TorchLattice.quadratic_form` fuses the DenseCRF/NCut quadratic form
around one such pass: it writes its input pixel-major straight from ``x`` and
``r``, takes the value and the volume from the ``M`` splatted and blurred
vertices (``s^T W y = alpha (S s)^T B (S y)``) instead of the pixels, and
writes the gradient channel-major straight from the slice.

On the CPU, :func:`build` splits the batch into groups of whole images
(:class:`ImageLattices`, at least ``_GROUP_PIXELS`` pixels each), built and
filtered as tasks on :func:`rloss._threads.run_tasks` with torch on one
thread per task: there most of these ops are memory bound with random
access, a per-image working set stays in cache where the batch's does not,
and threads that share out whole images scale where per-op parallelism on a
busy machine does not. Other devices build the one batch lattice.

Host synchronisation: ``apply`` and ``quadratic_form`` never synchronise.
:func:`build` does twice (per group on the CPU), and only there: once to read back the elevated
extent (validation and the key layout, one transfer) and once for the number
of vertices ``M``, which sizes every lattice tensor (the fallback
relabelling path, taken only when packed keys would overflow int64, adds one
``unique`` per feature dimension).

The result reproduces the rloss reference lattice (tolerance A of
``../shared/reference/README.md``); it is *not* normalised and returns about
0.5–0.7 times the exact Gaussian sum (see :mod:`rloss.lattice`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rloss._threads import lattice_threads, run_tasks, torch_threads
from rloss.lattice._common import DEFAULT_OPTIONS, BuildOptions, elevation_scales

__all__ = ["ImageLattices", "TorchLattice", "build"]

#: Packed int64 keys are used when ``N (d+1) prod(q ranges) < 2**_MAX_PACKED_BITS``;
#: otherwise the exact per-coordinate relabelling path is taken
#: (``BuildOptions(keys="full")`` takes it always).
_MAX_PACKED_BITS = 63

#: Keys (and vertex/pixel indices) are int32 below this capacity.
_INT32_LIMIT = 2**31 - 1

#: Most query elements per batched neighbour look-up at construction.
_LOOKUP_BATCH = 1 << 22

#: Largest accepted magnitude of an elevated coordinate. Beyond this float32
#: features have lost all sub-lattice precision and int64 arithmetic on the
#: coordinates could overflow.
_MAX_ELEVATED = float(2**40)

#: Margin, in units of ``d+1``, around the elevated extent that bounds every
#: vertex coordinate ``q_i`` and its blur neighbours: the remainder-0 point is
#: within 2 of ``el/(d+1)`` after the rank wrap, a vertex 1 further, a
#: neighbour 1 more.
_KEY_MARGIN = 5


def _scale_factors(d: int, device: torch.device) -> Tensor:
    """``(d,)`` float32 elevation scales (:func:`rloss.lattice._common.elevation_scales`)."""
    return torch.tensor(elevation_scales(d), dtype=torch.float32, device=device)


def _elevate(f: Tensor) -> Tensor:
    """``(Q, d)`` float32 features -> ``(Q, d+1)`` float32 elevated points.

    Same float32 operation order as the reference: a running sum from the
    last coordinate down.
    """
    q, d = f.shape
    cf = f * _scale_factors(d, f.device)
    el = torch.empty(q, d + 1, dtype=torch.float32, device=f.device)
    sm = torch.zeros(q, dtype=torch.float32, device=f.device)
    for i in range(d, 0, -1):
        c = cf[:, i - 1]
        el[:, i] = sm - i * c
        sm = sm + c
    el[:, 0] = sm
    return el


class _Simplex:
    """Enclosing simplex of each elevated point, in descending final-rank order.

    Attributes (``Q`` points, ``d+1`` coordinates):
        coord: ``(Q, d+1)`` int64, ``coord[:, t]`` is the coordinate of final
            rank ``d - t`` (ranks: position in a stable descending sort of the
            differentials, ties to the lower coordinate as in the reference's
            pairwise loop, then shifted by ``sum(rem0) / (d+1)`` and wrapped).
        m: ``(Q, d+1)`` int32/int64 (``int_dtype``), remainder-0 point
            ``/ (d+1)`` after the wrap, in coordinate order.
        bary: ``(Q, d+1)`` float32 barycentric weight of the remainder-``r``
            vertex in column ``r`` (rows sum to 1).
    """

    def __init__(self, el: Tensor, int_dtype: torch.dtype = torch.int64) -> None:
        """``el``: ``(Q, d+1)`` float32 elevated points; ``int_dtype``: int32 only
        when every ``|el| < 2**23``, else int64."""
        q, d1 = el.shape
        d = d1 - 1
        dev = el.device
        down_factor = torch.tensor(1.0 / d1, dtype=torch.float32, device=dev)
        # nearest remainder-0 point (d+1) m: the reference's up/down comparison
        down = el * down_factor
        up = torch.ceil(down)
        down.floor_()
        closer_up = torch.mul(up, d1).sub_(el)
        closer_up = closer_up < torch.mul(down, d1).neg_().add_(el)
        # m = up where closer_up else down, as down + closer_up (up - down): a
        # where() on this unpredictable mask costs 10x more on the CPU (it branches)
        m = up.sub_(down).mul_(closer_up).add_(down)  # float32, integer valued
        del down, closer_up
        diff = torch.mul(m, d1).neg_().add_(el)  # el - (d+1) m
        # sum(rem0) / (d+1): a float32 matrix-vector product is exact while every
        # partial sum is an integer below 2^24 (int32 mode: |el| < 2^23)
        if int_dtype == torch.int32:
            total = (m @ torch.ones(d1, dtype=torch.float32, device=dev)).to(torch.int64)
            total = total.unsqueeze(1)
            m_int = m.to(int_dtype)
        else:
            m_int = m.to(int_dtype)
            total = m_int.sum(dim=1, keepdim=True)
        del m

        k = _descending_positions(diff).t()  # (Q, d+1) sorted position of each coordinate
        del diff
        # final rank (k + total) mod (d+1), and the wrap (k + total) div (d+1) in {-1, 0, 1},
        # from total = (d+1) t_div + t_mod once per point (k + t_mod < 2 (d+1) fits k's dtype)
        k += total.remainder(d1).to(k.dtype)
        over = k >= d1
        wrap = over.to(int_dtype).add_(total.div_(d1, rounding_mode="floor").to(int_dtype))
        k.sub_(over.to(k.dtype).mul_(d1))  # the final rank of each coordinate
        del over
        # column t holds the coordinate of final rank d - t
        rank = torch.arange(d1, device=dev).expand(q, d1)
        self.coord = torch.empty(q, d1, dtype=torch.int64, device=dev)
        self.coord.scatter_(1, k.to(torch.int64).neg_().add_(d), rank)
        del k
        self.m = m_int.sub_(wrap)
        del wrap, m_int
        v = (self.m * d1).to(torch.float32)
        torch.sub(el, v, out=v).mul_(down_factor)
        vs = v.gather(1, self.coord)  # v of rank d - t
        del v
        # reference: b[d - rank_i] += v_i, b[d + 1 - rank_i] -= v_i, b[0] += 1 + b[d + 1],
        # i.e. b[t] = v(rank d - t) - v(rank d + 1 - t) and b[0] = v(rank d) + (1 - v(rank 0))
        bary = torch.empty(q, d1, dtype=torch.float32, device=dev)
        torch.sub(vs[:, 1:], vs[:, :-1], out=bary[:, 1:])
        torch.add(vs[:, 0], 1.0 - vs[:, d], out=bary[:, 0])
        self.bary = bary

    def rank(self) -> Tensor:
        """``(Q, d+1)`` int64 final rank of each coordinate (a permutation of ``0..d``)."""
        d1 = self.coord.shape[1]
        ranks = torch.arange(d1 - 1, -1, -1, device=self.coord.device).expand_as(self.coord)
        return torch.empty_like(self.coord).scatter_(1, self.coord, ranks)

    def rem0(self) -> Tensor:
        """``(Q, d+1)`` int64 remainder-0 point (after the rank wrap), coordinate order."""
        d1 = self.coord.shape[1]
        return self.m.to(torch.int64) * d1


def _descending_positions(diff: Tensor) -> Tensor:
    """``(d+1, Q)`` position of each coordinate in a stable descending sort of each
    row of the ``(Q, d+1)`` ``diff`` (ties: the lower coordinate first, as the
    reference's pairwise loop); uint8 (int32 when ``d+1 > 127``), coordinate-major.

    One comparison per pair of coordinates, ``d (d+1) / 2`` elementwise ops over
    the ``Q`` points (a row-wise ``sort`` of ``d+1`` values costs several times more).
    """
    q, d1 = diff.shape
    cols = diff.t().contiguous()
    k = torch.zeros(d1, q, dtype=torch.uint8 if d1 < 128 else torch.int32, device=diff.device)
    for i in range(d1):
        for j in range(i + 1, d1):
            # j precedes i only when strictly greater (as 0/1 bytes: bool has no minus)
            later_first = torch.gt(cols[j], cols[i]).view(torch.uint8)
            k[i] += later_first
            k[j] -= later_first
        k[i + 1 :] += 1
    return k


def _simplex(el: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex in coordinate order (tests compare it with other backends).

    Returns ``rem0`` ``(Q, d+1)`` int64 remainder-0 point, ``rank`` ``(Q, d+1)``
    int64 (a permutation of ``0..d`` per row) and ``bary`` ``(Q, d+1)`` float32.
    """
    s = _Simplex(el)
    return s.rem0(), s.rank(), s.bary


class _KeyLayout:
    """Packing of ``(image, q_0..q_{d-1}, r)`` into one integer key.

    ``key = r + (d+1) (sum_i (q_i - lo_i) stride_i + image stride_img)``;
    ``stride`` below is in key units (already times ``d+1``).
    """

    def __init__(self, lo: list[int], ranges: list[int], batch: int, d: int) -> None:
        d1 = d + 1
        self.d = d
        self.lo = lo
        strides = [0] * d
        acc = d1
        for i in range(d - 1, -1, -1):
            strides[i] = acc
            acc *= ranges[i]
        self.strides = strides
        self.image_stride = acc
        self.capacity = acc * batch

    def neighbour_shifts(self) -> list[tuple[int, int, int]]:
        """``(wrap_remainder, shift, wrapped_shift)`` per blur neighbour, in
        :func:`_neighbour_deltas` order: the key moves by ``shift`` unless the
        vertex's remainder is ``wrap_remainder``, then by ``wrapped_shift``."""
        d, st = self.d, self.strides
        out = []
        for j in range(d + 1):
            sj = st[j] if j < d else 0
            others = sum(st) - sj
            # n1 (-1 everywhere, +d at j): r -> r - 1 and q_j + 1;
            # from r = 0: r -> d and q_i - 1 (i != j)
            out.append((0, -1 + sj, d - others))
            # n2, the opposite: r -> r + 1 and q_j - 1; from r = d: r -> 0, q_i + 1 (i != j)
            out.append((d, 1 - sj, -d + others))
        return out


def _packed_keys(simplex: _Simplex, batch: int, layout: _KeyLayout, dtype: torch.dtype) -> Tensor:
    """``(Q, d+1)`` keys (``dtype``) of the ``d+1`` vertices of each point's simplex
    (``Q = batch * P`` points, image-major).

    ``q_i`` of the remainder-``r`` vertex is ``m_i`` lowered by one for the
    ``r`` coordinates of highest final rank (``coord[:, :r]``): ``key_r = key_0
    + r -`` the cumulative sum of their strides.
    """
    coord = simplex.coord
    d1 = coord.shape[1]
    d = d1 - 1
    dev = coord.device
    stride = torch.tensor([*layout.strides, 0], dtype=dtype, device=dev)
    lo = torch.tensor([*layout.lo, 0], dtype=simplex.m.dtype, device=dev)
    q0 = torch.sub(simplex.m, lo).to(dtype)  # q - lo of the remainder-0 vertex
    base = q0.mul_(stride).sum(dim=1, dtype=dtype)  # (no integer matmul on CUDA)
    del q0
    stride_f = stride.index_select(0, coord.view(-1)).view(coord.shape)  # of coord[:, t]
    if batch > 1:
        image = torch.arange(batch, dtype=dtype, device=dev).mul_(layout.image_stride)
        base.view(batch, -1).add_(image.unsqueeze(1))
    keys = torch.empty(coord.shape[0], d1, dtype=dtype, device=dev)
    keys[:, 0] = base
    torch.cumsum(stride_f[:, :d], dim=1, out=keys[:, 1:])
    del stride_f
    keys[:, 1:].neg_().add_(base.unsqueeze(1)).add_(torch.arange(1, d1, dtype=dtype, device=dev))
    return keys


def _neighbour_deltas(d: int) -> list[list[int]]:
    """Coordinate deltas (first ``d`` coordinates) of the ``2(d+1)`` blur neighbours.

    Entry ``2 j`` is neighbour ``n1`` of direction ``j`` (``-1`` everywhere but
    ``+d`` at coordinate ``j``; all ``-1`` for ``j = d``) and entry ``2 j + 1``
    its opposite ``n2``.
    """
    deltas = []
    for j in range(d + 1):
        n1 = [d if k == j else -1 for k in range(d)]
        deltas += [n1, [-x for x in n1]]
    return deltas


def _groups(num_queries: int, m: int) -> list[range]:
    """Split ``num_queries`` neighbour look-ups of ``m`` vertices into batches of
    at most ``_LOOKUP_BATCH`` elements (few large searchsorted calls, bounded memory)."""
    per = max(1, _LOOKUP_BATCH // max(m, 1))
    return [range(i, min(i + per, num_queries)) for i in range(0, num_queries, per)]


def _lookup(sorted_keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of ``query`` in ``sorted_keys`` and whether each was found."""
    m = sorted_keys.numel()
    pos = torch.searchsorted(sorted_keys, query)
    pos_c = pos.clamp(max=m - 1)
    found = (pos < m) & (sorted_keys.index_select(0, pos_c.view(-1)).view(pos_c.shape) == query)
    return pos_c, found


def _index_dtype(n: int) -> torch.dtype:
    return torch.int32 if n < _INT32_LIMIT else torch.int64


def _number_vertices(keys: Tensor, idx_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One stable sort of the entry keys: vertex ids and the splat matrix's rows.

    Args:
        keys: ``(E,)`` integer keys, one per (pixel, remainder) entry.
        idx_dtype: dtype of the vertex ids (int32 when ``E < 2**31``).

    Returns:
        ``(unique_keys (M,), starts (M,) int64, perm (E,) int64, vertex (E,))``:
        the sorted unique keys, the first sorted position of each vertex,
        the sort permutation and each entry's vertex id (key order).
    """
    e = keys.numel()
    sorted_keys, perm = torch.sort(keys, stable=True)
    change = torch.empty(e, dtype=torch.bool, device=keys.device)
    change[0] = True
    torch.ne(sorted_keys[1:], sorted_keys[:-1], out=change[1:])
    # Host sync 2 of 2: the number of vertices M sizes every later tensor
    starts = change.nonzero().squeeze(1)
    unique_keys = sorted_keys.index_select(0, starts)
    del sorted_keys
    vid = change.cumsum(0, dtype=idx_dtype).sub_(1)
    del change
    vertex = torch.empty_like(vid).scatter_(0, perm, vid)
    return unique_keys, starts, perm, vertex


def _packed_neighbours(unique_keys: Tensor, layout: _KeyLayout) -> Tensor:
    """``(d+1, 2, M)`` int64 ids of each vertex's blur neighbours (``M`` = missing).

    Only the ``d+1`` neighbours ``n1`` are looked up: all ``n1`` keys of a
    group of vertices are formed by one broadcast ``where`` (the shift depends
    only on whether the vertex's remainder wraps) and found by one
    ``searchsorted``. ``n2`` of direction ``j`` is the inverse step, so
    ``n2[n1[v]] = v`` wherever ``n1[v]`` exists and ``n2`` is missing
    elsewhere: one scatter (missing ``n1`` write into a spare slot ``M``).
    """
    m = unique_keys.numel()
    d = layout.d
    dev = unique_keys.device
    shifts = torch.tensor(layout.neighbour_shifts()[0::2], dtype=torch.int64, device=dev)
    # (1, M): does neighbour n1 wrap (at remainder 0)?
    wraps = (unique_keys.remainder(d + 1) == 0).unsqueeze(0)
    n1 = torch.empty(d + 1, m, dtype=torch.int64, device=dev)
    for group in _groups(d + 1, m):
        sel = slice(group.start, group.stop)
        step = torch.where(wraps, shifts[sel, 2:3], shifts[sel, 1:2])
        query = (unique_keys.to(torch.int64) + step).to(unique_keys.dtype).view(-1)
        pos, found = _lookup(unique_keys, query)
        n1[sel] = torch.where(found, pos, m).view(len(group), m)
    neighbours = torch.empty(d + 1, 2, m + 1, dtype=torch.int64, device=dev)
    neighbours[:, 0, :m] = n1
    neighbours[:, 1] = m
    ids = torch.arange(m, device=dev).expand(d + 1, m)
    neighbours[:, 1].scatter_(1, n1, ids)  # n1 is one-to-one where found
    return neighbours[:, :, :m]


def _relabel(
    image: Tensor, rem0: Tensor, rank: Tensor, batch: int, d: int
) -> tuple[Tensor, Tensor, int]:
    """Exact path: relabel one coordinate at a time, never packing beyond the vertex count.

    At level ``i`` the prefix ``(image, k_0..k_{i-1})`` has a dense id below
    ``M_i`` and coordinate ``k_i`` a dense rank below ``R_i``; both are at most
    the number of vertex instances ``Q (d+1)``, so ``id * R_i + rank`` fits in
    int64 whenever ``(Q (d+1))^2 < 2^63``.

    Returns ``(ids (Q, d+1) int64, neighbours (d+1, 2, M) int64, M)``: dense
    vertex ids (lexicographic in ``(image, coordinates)``) per entry.
    """
    dev = rem0.device
    q = rem0.shape[0]
    total = q * (d + 1)
    if total * total >= 2**63:
        raise ValueError(f"too many lattice vertex instances ({total}) for int64 relabelling")
    # (Q, d+1, d) coordinates of each entry's vertex, pixel-major like the packed path
    offsets = (d + 1) * (
        rank[:, :d].unsqueeze(1) > d - torch.arange(d + 1, device=dev).view(1, d + 1, 1)
    ).to(torch.int64)
    coords = (
        rem0[:, :d].unsqueeze(1) + torch.arange(d + 1, device=dev).view(1, d + 1, 1) - offsets
    ).reshape(total, d)
    del offsets
    img = image.repeat_interleave(d + 1)
    ids = img
    levels = []
    for i in range(d):
        col_vals, col_rank = torch.unique(coords[:, i], sorted=True, return_inverse=True)
        code = ids * col_vals.numel() + col_rank
        prefix, ids = torch.unique(code, sorted=True, return_inverse=True)
        levels.append((col_vals, prefix))
    m = levels[-1][1].numel() if levels else batch
    # one representative instance per vertex gives its coordinates and image
    rep = torch.empty(m, dtype=torch.int64, device=dev)
    rep.scatter_(0, ids, torch.arange(total, device=dev))
    vcoords = coords[rep].t().contiguous()  # (d, M): each coordinate contiguous
    vimage = img[rep]
    del coords
    deltas = torch.tensor(_neighbour_deltas(d), dtype=torch.int64, device=dev)  # (2(d+1), d)
    neighbours = torch.empty(deltas.shape[0], m, dtype=torch.int64, device=dev)
    for group in _groups(deltas.shape[0], m):
        g = len(group)
        # (d, g*M): coordinates of the group's neighbours, one row per coordinate
        query = (vcoords.unsqueeze(1) + deltas[group.start : group.stop].t().unsqueeze(2)).reshape(
            d, g * m
        )
        nid = vimage.repeat(g)
        ok = torch.ones(g * m, dtype=torch.bool, device=dev)
        for i, (col_vals, prefix) in enumerate(levels):
            pos, found = _lookup(col_vals, query[i])
            ok &= found
            nid, found = _lookup(prefix, nid * col_vals.numel() + pos)
            ok &= found
        neighbours[group.start : group.stop] = torch.where(ok, nid, m).view(g, m)
    return ids.view(q, d + 1), neighbours.view(d + 1, 2, m), m


class TorchLattice:
    """A permutohedral lattice over a batch, built by :func:`build`.

    Attributes:
        batch: number of images ``N``.
        num_pixels: pixels per image ``P``.
        dim: feature dimension ``d``.
        num_vertices: number of lattice vertices ``M`` over the whole batch.
        packed: whether the vertex keys were packed into one integer (``False``
            when the exact relabelling path was taken).
    """

    def __init__(
        self,
        batch: int,
        num_pixels: int,
        dim: int,
        vertex: Tensor,
        weight: Tensor,
        neighbours: Tensor,
        num_vertices: int,
        packed: bool,
        splat_order: tuple[Tensor, Tensor] | None = None,
        vertex_image: Tensor | None = None,
    ) -> None:
        """Args (``Q = batch * num_pixels`` points, ``d1 = dim + 1``):
        vertex: ``(Q, d1)`` int32/int64 vertex id of each point's remainder-``r`` vertex.
        weight: ``(Q, d1)`` float32 barycentric weights.
        neighbours: ``(d1, 2, M)`` int32/int64 blur neighbours (``M`` = missing).
        splat_order: ``(starts (M,), perm (Q d1,))`` from the build's sort (the
            splat matrix row by row); found again by a sort when ``None``.
        vertex_image: ``(M,)`` int64 image of each vertex; computed when ``None``.
        """
        self.batch = batch
        self.num_pixels = num_pixels
        self.dim = dim
        self._vertex = vertex
        self._weight = weight
        self._neighbours = neighbours
        self.num_vertices = num_vertices
        self.packed = packed
        self.alpha = 1.0 / (1.0 + 2.0 ** (-dim))
        self._splat_order = splat_order
        self._bags: tuple[Tensor, Tensor, Tensor] | None = None
        self._cache: dict[tuple[str, torch.dtype], Tensor] = {}
        self._image_of_vertex = vertex_image
        if splat_order is not None:
            self._splat_bags()  # now, so that the sort permutation can go

    def __repr__(self) -> str:
        return (
            f"TorchLattice(batch={self.batch}, num_pixels={self.num_pixels}, dim={self.dim}, "
            f"num_vertices={self.num_vertices}, packed={self.packed})"
        )

    @property
    def device(self) -> torch.device:
        return self._vertex.device

    # ------------------------------------------------------------------ operators

    def _splat_bags(self) -> tuple[Tensor, Tensor, Tensor]:
        """The splat matrix ``S`` ``(M+1, Q)`` row by row: ``(pixel (E,), offsets (M+2,),
        weight (E,) float32)``, each vertex's entries contiguous (the last row is empty)."""
        if self._bags is None:
            q, d1 = self._vertex.shape
            e = q * d1
            m = self.num_vertices
            flat_vertex = self._vertex.reshape(-1)
            if self._splat_order is None:
                ordered, perm = torch.sort(flat_vertex, stable=True)
                first = torch.arange(m, dtype=ordered.dtype, device=self.device)
                starts = torch.searchsorted(ordered, first)
            else:
                starts, perm = self._splat_order
            idx = self._vertex.dtype
            offsets = torch.empty(m + 2, dtype=idx, device=self.device)
            offsets[:m] = starts
            offsets[m:] = e
            pixel = perm.to(idx).div_(d1, rounding_mode="floor")
            self._bags = (pixel, offsets, self._weight.reshape(-1).index_select(0, perm))
            self._splat_order = None
        return self._bags

    def _weights(self, which: str, dtype: torch.dtype) -> Tensor:
        """Splat weights (``"splat"``, ``(E,)``) or ``alpha`` x slice weights (``"slice"``,
        ``(Q, d+1)``) in ``dtype``, converted once."""
        key = (which, dtype)
        if key not in self._cache:
            if which == "splat":
                w = self._splat_bags()[2].to(dtype)
            else:
                w = self._weight.to(dtype) * self.alpha
            self._cache[key] = w
        return self._cache[key]

    def _splat(self, flat: Tensor) -> Tensor:
        """``(Q, C)`` -> ``(M+1, C)`` lattice values ``S V`` (row ``M`` zero)."""
        pixel, offsets, _ = self._splat_bags()
        return F.embedding_bag(
            pixel, flat, offsets, mode="sum", include_last_offset=True,
            per_sample_weights=self._weights("splat", flat.dtype),
        )  # fmt: skip

    def _slice(self, grid: Tensor) -> Tensor:
        """``(M+1, C)`` -> ``(Q, C)``: ``alpha`` times the barycentric interpolation."""
        return F.embedding_bag(
            self._vertex, grid, mode="sum", per_sample_weights=self._weights("slice", grid.dtype)
        )

    def _blur(self, grid: Tensor, transpose: bool) -> Tensor:
        """``d+1`` passes ``v + 0.5 (v[n1] + v[n2])`` into new buffers (``grid`` is
        kept); row ``M`` stays zero."""
        m = self.num_vertices
        out, spare = torch.empty_like(grid), torch.empty_like(grid)
        out[m:] = 0
        spare[m:] = 0
        for j in reversed(range(self.dim + 1)) if transpose else range(self.dim + 1):
            n1 = grid.index_select(0, self._neighbours[j, 0])
            n1.add_(grid.index_select(0, self._neighbours[j, 1]))
            torch.add(grid[:m], n1, alpha=0.5, out=out[:m])
            grid = out
            out, spare = spare, out
        return grid

    def _filter_rows(self, flat: Tensor, transpose: bool = False) -> Tensor:
        """``(Q, C)`` pixel-major values -> ``(Q, C)`` filtered."""
        return self._slice(self._blur(self._splat(flat), transpose))

    def apply(
        self, values: Tensor, *, transpose: bool = False, out: Tensor | None = None
    ) -> Tensor:
        """Filter ``values`` over the lattice.

        The lattice operator is ``W = alpha S^T B_d ... B_0 S`` (splat ``S``,
        blur passes ``B_j``, each symmetric). Where vertices are missing the
        ``B_j`` do not commute, so ``W`` is only nearly symmetric (``W - W^T``
        is a few percent of ``W`` in Frobenius norm; ``<W a, b>`` and
        ``<a, W b>`` agree to ~1e-3 for non-negative ``a, b``). Like the
        reference, autograd treats ``W`` as symmetric; ``transpose=True``
        applies the exact adjoint ``W^T`` (blur passes in reverse order).

        Args:
            values: ``(N, C, P)`` float32 or float64 (other float dtypes are
                computed in float32), on the lattice's device.
            transpose: apply ``W^T`` instead of ``W``.
            out: ``(N, C, P)`` tensor of the result dtype to write into
                (e.g. a slice of a larger batch), or ``None``.

        Returns:
            ``(N, C, P)`` filtered values, float64 for float64 input and
            float32 otherwise (``out`` when given).
        """
        n, c, p = values.shape
        self._check_shape(n, p, values.shape)
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        # (N*P, C): each pixel's C channels contiguous
        flat = values.to(dtype).permute(0, 2, 1).reshape(n * p, c)
        rows = self._filter_rows(flat, transpose).view(n, p, c).permute(0, 2, 1)
        if out is None:
            return rows.contiguous()
        return out.copy_(rows)

    def quadratic_form(
        self,
        x: Tensor,
        r: Tensor,
        normalize: bool,
        grad_scale: float | None,
        grad_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, None]:
        """Fused quadratic form: see :meth:`rloss.lattice.Lattice.quadratic_form`.

        One filtering pass over ``[s, r]`` (``s = x ⊙ r``), written straight
        into the pixel-major layout the lattice filters and read back from it
        into the gradient, in ``x``'s dtype (float32 or float64).

        Args:
            x: ``(N, K, P)`` float32/float64 values on the lattice's device.
            r: ``(N, P)`` weights of the same dtype.
            normalize: divide by ``rᵀ W r`` per image.
            grad_scale: factor of the gradient, or ``None`` for no gradient.
            grad_out: ``(N, K, P)`` tensor of ``x``'s dtype that receives the
                gradient (e.g. a slice of a larger batch), or ``None``.

        Returns:
            ``(value (N,), volume (N,), grad (N, K, P) or None, None)``; the last
            slot (value statistics) is left to the caller on this backend.
        """
        n, k, p = x.shape
        self._check_shape(n, p, x.shape)
        dtype, dev = x.dtype, x.device
        vals = torch.empty(n, p, k + 1, dtype=dtype, device=dev)
        if dev.type == "cpu":
            # s = x r channel-major first: x is read in order (on the CPU a transposed
            # read of a batch that is not in cache is latency bound), then transposed
            # from cache; elsewhere one kernel writes s straight into place
            vals[:, :, :k].copy_(torch.mul(x, r.unsqueeze(1)).transpose(1, 2))
        else:
            torch.mul(x.transpose(1, 2), r.unsqueeze(2), out=vals[:, :, :k])
        vals[:, :, k] = r
        flat = vals.view(n * p, k + 1)
        splat = self._splat(flat)  # (M+1, K+1) = S [s, r]
        blurred = self._blur(splat, False)  # B S [s, r]
        # s_kᵀ W y = alpha (S s_k)ᵀ B (S y): value and volume from the M vertices, not the pixels
        m = self.num_vertices
        sk, bk, br = splat[:m, :k], blurred[:m, :k], blurred[:m, k:]
        per_vertex = torch.stack([(sk * (br - bk)).sum(1), splat[:m, k] * br[:, 0]])
        sums = torch.zeros(2, n, dtype=torch.float64, device=dev)
        sums.index_add_(1, self._vertex_image(), per_vertex.to(torch.float64))
        sums = sums.mul_(self.alpha).to(dtype)
        value, volume = sums[0], sums[1]
        coef = torch.full((n,), float(grad_scale or 0.0), dtype=dtype, device=dev)
        if normalize:
            volume = volume.clamp_min(torch.finfo(dtype).tiny)
            value = value / volume
            coef = coef / volume
        else:
            volume = torch.ones(n, dtype=dtype, device=dev)
        if grad_scale is None:
            return value, volume, None, None
        # slice: [W s, W r], pixel-major
        filt = self._slice(blurred).view(n, p, k + 1)
        ws, wr = filt[:, :, :k], filt[:, :, k:]
        # grad = c (W r − 2 W s), c = coef r, written channel-major in one pass
        c = (r * coef.unsqueeze(1)).unsqueeze(2)
        grad = torch.empty(n, k, p, dtype=dtype, device=dev) if grad_out is None else grad_out
        torch.addcmul(c * wr, ws, c, value=-2.0, out=grad.transpose(1, 2))
        return value, volume, grad, None

    def _vertex_image(self) -> Tensor:
        """``(M,)`` int64 image index of each vertex."""
        if self._image_of_vertex is None:
            e = self._vertex.numel()
            per_image = self.num_pixels * (self.dim + 1)  # entries are pixel-major
            image = torch.arange(e, device=self.device).div_(per_image, rounding_mode="floor")
            vimg = torch.zeros(self.num_vertices, dtype=torch.int64, device=self.device)
            vimg.scatter_(0, self._vertex.reshape(-1).to(torch.int64), image)
            self._image_of_vertex = vimg
        return self._image_of_vertex

    def _check_shape(self, n: int, p: int, shape: torch.Size) -> None:
        if n != self.batch or p != self.num_pixels:
            raise ValueError(
                f"values have shape {tuple(shape)} but the lattice was built for "
                f"(N, C, P) = ({self.batch}, C, {self.num_pixels})"
            )


class ImageLattices:
    """CPU: the batch as consecutive groups of images, one :class:`TorchLattice` each.

    Built and used as independent tasks on :func:`rloss._threads.run_tasks`,
    each with torch on one thread (torch ops release the GIL), so that the
    threads share out whole images instead of splitting every tensor
    operation: on the CPU most lattice ops (sort, gathers, ``embedding_bag``)
    are memory bound with random access, and the per-image working set stays
    in cache while the batch's does not. The batch lattice numbers vertices
    image-major (the image is the key's leading digit), so the groups' vertex
    sets, filters and sums are those of the batch lattice.

    Same interface as :class:`TorchLattice` (``apply``, ``quadratic_form`` and
    the size attributes); ``parts`` are the groups' lattices, ``bounds`` their
    first images (and ``batch`` at the end).
    """

    def __init__(self, parts: list[TorchLattice], bounds: list[int]) -> None:
        self.parts = parts
        self.bounds = bounds
        self.batch = bounds[-1]
        self.num_pixels = parts[0].num_pixels
        self.dim = parts[0].dim
        self.num_vertices = sum(part.num_vertices for part in parts)
        self.packed = all(part.packed for part in parts)

    def __repr__(self) -> str:
        return (
            f"ImageLattices(batch={self.batch}, groups={len(self.parts)}, "
            f"num_pixels={self.num_pixels}, dim={self.dim}, num_vertices={self.num_vertices})"
        )

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def _span(self, i: int) -> slice:
        return slice(self.bounds[i], self.bounds[i + 1])

    def apply(
        self, values: Tensor, *, transpose: bool = False, out: Tensor | None = None
    ) -> Tensor:
        """:meth:`TorchLattice.apply`, group by group into one ``(N, C, P)`` result."""
        n, c, p = values.shape
        self._check_shape(n, p, values.shape)
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        if out is None:
            out = torch.empty(n, c, p, dtype=dtype, device=values.device)

        def task(i: int) -> None:
            at = self._span(i)
            self.parts[i].apply(values[at], transpose=transpose, out=out[at])

        _run_groups(task, len(self.parts))
        return out

    def quadratic_form(
        self,
        x: Tensor,
        r: Tensor,
        normalize: bool,
        grad_scale: float | None,
        grad_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None, None]:
        """:meth:`TorchLattice.quadratic_form`, group by group (per-image sums as there)."""
        n, k, p = x.shape
        self._check_shape(n, p, x.shape)
        grad = grad_out
        if grad_scale is not None and grad is None:
            grad = torch.empty(n, k, p, dtype=x.dtype, device=x.device)
        value = torch.empty(n, dtype=x.dtype, device=x.device)
        volume = torch.empty(n, dtype=x.dtype, device=x.device)

        def task(i: int) -> None:
            at = self._span(i)
            q = self.parts[i].quadratic_form(
                x[at], r[at], normalize, grad_scale, None if grad is None else grad[at]
            )
            value[at], volume[at] = q[0], q[1]

        _run_groups(task, len(self.parts))
        return value, volume, None if grad_scale is None else grad, None

    _check_shape = TorchLattice._check_shape


#: Fewest pixels of one group of images of :class:`ImageLattices` (smaller images
#: are grouped, so that per-operation overhead stays small against the work).
_GROUP_PIXELS = 1 << 15


def _run_groups(task: Callable[[int], None], ntasks: int) -> None:
    """Run ``task(i)`` for ``i < ntasks`` as tasks of :func:`rloss._threads.run_tasks`
    with torch on one thread inside every task (restored afterwards).

    The thread count is the CPU lattice's, as for the numba backend:
    :func:`rloss._threads.lattice_threads`. The tasks run in the caller's grad mode
    (thread-local in torch: a pool thread would otherwise record autograd
    history inside ``Lattice.filter``'s forward).
    """
    nthreads = min(lattice_threads(), ntasks)
    if nthreads <= 1:
        for i in range(ntasks):
            task(i)
        return
    grad_mode = torch.is_grad_enabled()

    def one(i: int, slot: int) -> None:
        # a pool thread keeps the count torch had when it first ran an op
        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        with torch.set_grad_enabled(grad_mode):
            task(i)

    with torch_threads(1):
        run_tasks(one, ntasks, nthreads)


def build(
    features: Tensor, options: BuildOptions = DEFAULT_OPTIONS, *, split: bool | None = None
) -> TorchLattice | ImageLattices:
    """Build the lattice for a batch of per-pixel feature vectors.

    Args:
        features: ``(N, P, d)`` float32 features (already divided by their
            bandwidths), finite, ``N, P, d >= 1``; any device. Other float
            dtypes are converted to float32.
        options: :class:`~rloss.lattice.BuildOptions`; only ``keys`` applies
            (``"full"``: the relabelling path; ``"packed"``: packed or an error).
        split: ``True``: an :class:`ImageLattices` of groups of images of at
            least ``_GROUP_PIXELS`` pixels (one :class:`TorchLattice` when that
            is the whole batch); ``False``: one :class:`TorchLattice` for the
            batch; ``None``: split on the CPU only (accelerators run the
            batch lattice, whose every op is one large kernel).

    Returns:
        A :class:`TorchLattice` (or :class:`ImageLattices`) whose ``apply``
        filters ``(N, C, P)`` values.

    Raises:
        ValueError: on a bad shape or features whose elevated coordinates
            exceed ``2**40`` in magnitude.
    """
    if not isinstance(features, Tensor) or features.dim() != 3:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor of shape (N, P, d), got {got}")
    n, p, d = (int(s) for s in features.shape)
    if n == 0 or p == 0 or d == 0:
        raise ValueError(f"features must be non-empty (N, P, d), got {(n, p, d)}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    if split is None:
        split = features.device.type == "cpu"
    per = max(1, -(-_GROUP_PIXELS // p))  # images per group
    if not split or per >= n:
        return _build_batch(features, options)
    bounds = [*range(0, n, per), n]
    parts: list[TorchLattice | None] = [None] * (len(bounds) - 1)

    def task(i: int) -> None:
        parts[i] = _build_batch(features[bounds[i] : bounds[i + 1]], options)

    _run_groups(task, len(parts))
    return ImageLattices(parts, bounds)  # type: ignore[arg-type]


def _build_batch(features: Tensor, options: BuildOptions) -> TorchLattice:
    """:func:`build` of one batch lattice (``features`` already checked)."""
    n, p, d = (int(s) for s in features.shape)
    dev = features.device
    d1 = d + 1
    f = features.detach().to(torch.float32).reshape(n * p, d)
    el = _elevate(f)

    # Host sync 1 of 2 (construction only): the elevated magnitude (validity) and
    # the per-coordinate ranges that choose the packed key layout, one transfer
    # (reduced along rows of the transpose: over the (Q, d+1) columns the CPU
    # reductions take 2-5x longer than the copy and both reductions together)
    cols = el.t().contiguous()
    stats = torch.cat([cols.amin(1), cols.amax(1)]).tolist()
    del cols
    lo_el, hi_el = stats[:d1], stats[d1:]
    peak = max(-min(lo_el), max(hi_el))
    if not peak < _MAX_ELEVATED:  # also catches NaN/Inf (NaN propagates into aminmax)
        raise ValueError(
            f"features are too large or not finite (elevated magnitude {peak:.3g}, "
            f"want < {_MAX_ELEVATED:.3g}): divide them by their bandwidths"
        )
    # int32 arithmetic for the remainder-0 points when they are small (the usual case)
    simplex = _Simplex(el, torch.int32 if peak < 2**23 else torch.int64)
    del el

    lo = [math.floor(v / d1) - _KEY_MARGIN for v in lo_el[:d]]
    hi = [math.ceil(v / d1) + _KEY_MARGIN for v in hi_el[:d]]
    layout = _KeyLayout(lo, [h - l + 1 for l, h in zip(lo, hi)], n, d)
    packed = options.keys != "full" and layout.capacity < 2**_MAX_PACKED_BITS
    if options.keys == "packed" and not packed:
        raise ValueError(
            "keys='packed' was asked for, but the lattice keys of these features do not "
            "fit 63 bits; use keys='auto'"
        )
    idx_dtype = _index_dtype(n * p * d1)
    if packed:
        key_dtype = torch.int32 if layout.capacity < _INT32_LIMIT else torch.int64
        keys = _packed_keys(simplex, n, layout, key_dtype)
        bary = simplex.bary
        del simplex
        unique_keys, starts, perm, vertex = _number_vertices(keys.view(-1), idx_dtype)
        del keys
        m = unique_keys.numel()
        neighbours = _packed_neighbours(unique_keys, layout)
        vertex_image = unique_keys.div(layout.image_stride, rounding_mode="floor").to(torch.int64)
        del unique_keys
    else:
        image = torch.arange(n, device=dev, dtype=torch.int64).repeat_interleave(p)
        ids, neighbours, m = _relabel(image, simplex.rem0(), simplex.rank(), n, d)
        bary = simplex.bary
        del simplex, image
        _, starts, perm, vertex = _number_vertices(ids.view(-1), idx_dtype)
        del ids
        vertex_image = None
    return TorchLattice(
        batch=n,
        num_pixels=p,
        dim=d,
        vertex=vertex.view(n * p, d1),
        weight=bary,
        neighbours=neighbours.to(idx_dtype).contiguous(),
        num_vertices=m,
        packed=packed,
        splat_order=(starts, perm),
        vertex_image=vertex_image,
    )
