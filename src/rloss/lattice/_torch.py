"""Portable permutohedral-lattice backend in pure PyTorch (CPU, CUDA, MPS).

Construction (:func:`build`) is vectorised over every pixel of the batch:

1. *Elevate* each feature vector ``f`` (dimension ``d``) onto the hyperplane
   ``sum(x) = 0`` of ``R^(d+1)`` with the rloss reference's scaled elevation
   matrix (``scale_i = (d+1) sqrt(2/3) / sqrt((i+1)(i+2))``).
2. *Round* to the nearest remainder-0 lattice point, *rank* the differential
   coordinates and compute the ``d+1`` barycentric weights of the enclosing
   simplex.
3. Each of the ``d+1`` simplex vertices gets a key: the image index plus its
   first ``d`` integer coordinates (the last is implied, coordinates sum to 0).
   Keys are packed into one int64 when the per-coordinate ranges (padded by a
   margin that also covers every blur neighbour) times the batch size fit in
   63 bits; otherwise an exact, slower path relabels one coordinate at a time.
   Keys never collide silently.
4. Unique keys (sort + ``return_inverse``) number the vertices ``0..M-1``.
   The two blur neighbours of every vertex along each of the ``d+1`` lattice
   directions are looked up once with ``searchsorted``; a missing neighbour
   points at row ``M``, which always holds zeros.

Filtering (:meth:`TorchLattice.apply`) works on values laid out as
``(vertices, C)`` so all channels go through in one pass: splat with
``index_add_``, ``d+1`` blur passes ``v + 0.5 (v[n1] + v[n2])`` by gathering,
slice by gathering with the barycentric weights and ``alpha = 1/(1+2^-d)``.
``apply`` never synchronises with the host. :func:`build` does, twice, and
only there: once to read back the elevated magnitude (validation) and the
coordinate ranges that choose the packed key layout, and once inside
``torch.unique``, whose output size (the vertex count) sizes every lattice
tensor. Both are inherent to building a sparse lattice on the device (the
fallback relabelling path, taken only when packed keys would overflow, adds
one ``unique`` per feature dimension).

The result reproduces the rloss reference lattice (tolerance A of
``../shared/reference/README.md``); it is *not* normalised and returns about
0.5–0.7 times the exact Gaussian sum (see :mod:`rloss.lattice`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rloss.lattice._common import DEFAULT_OPTIONS, BuildOptions, elevation_scales

__all__ = ["TorchLattice", "build"]

#: Packed int64 keys are used when ``N * prod(coordinate ranges) < 2**_MAX_PACKED_BITS``;
#: otherwise the exact per-coordinate relabelling path is taken
#: (``BuildOptions(keys="full")`` takes it always).
_MAX_PACKED_BITS = 63

#: Most query elements per batched neighbour look-up at construction.
_LOOKUP_BATCH = 1 << 22

#: Largest accepted magnitude of an elevated coordinate. Beyond this float32
#: features have lost all sub-lattice precision and int64 arithmetic on the
#: coordinates could overflow.
_MAX_ELEVATED = float(2**40)


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


def _simplex(el: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Enclosing simplex of each elevated point.

    Args:
        el: ``(Q, d+1)`` float32 elevated points.

    Returns:
        ``rem0`` ``(Q, d+1)`` int64 remainder-0 point, ``rank`` ``(Q, d+1)``
        int64 (a permutation of ``0..d`` per row) and ``bary`` ``(Q, d+1)``
        float32 barycentric weights (they sum to 1).
    """
    q, d1 = el.shape
    d = d1 - 1
    down_factor = torch.tensor(1.0 / d1, dtype=torch.float32, device=el.device)
    v = el * down_factor
    up = torch.ceil(v) * d1
    down = torch.floor(v) * d1
    rem0f = torch.where(up - el < el - down, up, down)
    rem0 = rem0f.to(torch.int64)
    total = rem0.sum(dim=1, keepdim=True).div(d1, rounding_mode="floor")

    # rank[i] = #{j > i: d_i < d_j} + #{j < i: d_j >= d_i}: the reference's pairwise loop
    # (ties go to the later coordinate), as elementwise ops that run on any device
    diff = el - rem0f
    cols = [diff[:, i] for i in range(d1)]
    ranks = [torch.zeros(q, dtype=torch.int64, device=el.device) for _ in range(d1)]
    for i in range(d1):
        for j in range(i + 1, d1):
            smaller = cols[i] < cols[j]
            ranks[i] += smaller
            ranks[j] += ~smaller
    rank = torch.stack(ranks, dim=1)
    del cols, ranks

    rank = rank + total
    low = rank < 0
    high = rank > d
    rank = torch.where(low, rank + d1, torch.where(high, rank - d1, rank))
    rem0 = torch.where(low, rem0 + d1, torch.where(high, rem0 - d1, rem0))

    vb = (el - rem0.to(torch.float32)) * down_factor
    bary = torch.zeros(q, d1 + 1, dtype=torch.float32, device=el.device)
    bary.scatter_add_(1, d - rank, vb)
    bary.scatter_add_(1, d - rank + 1, -vb)
    bary[:, 0] += 1.0 + bary[:, d1]
    return rem0, rank, bary[:, :d1].contiguous()


def _vertex_offsets(rank: Tensor, r: int) -> Tensor:
    """Offsets ``canonical[r][rank[i]]`` of the remainder-``r`` vertex, ``(Q, d)`` int64."""
    d = rank.shape[1] - 1
    return r - (d + 1) * (rank[:, :d] > d - r).to(torch.int64)


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
    found = (pos < m) & (sorted_keys[pos_c] == query)
    return pos_c, found


def _index_dtype(m: int) -> torch.dtype:
    return torch.int32 if m + 1 < 2**31 else torch.int64


class TorchLattice:
    """A permutohedral lattice over a batch, built by :func:`build`.

    Attributes:
        batch: number of images ``N``.
        num_pixels: pixels per image ``P``.
        dim: feature dimension ``d``.
        num_vertices: number of lattice vertices ``M`` over the whole batch.
        packed: whether the vertex keys were packed into one int64 (``False``
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
    ) -> None:
        self.batch = batch
        self.num_pixels = num_pixels
        self.dim = dim
        self._vertex = vertex  # (d+1, N*P) int32/int64 vertex index per remainder
        self._weight = weight  # (d+1, N*P) float32 barycentric weight per remainder
        self._neighbours = neighbours  # (d+1, 2, M) int32/int64, M = missing (zero row)
        self.num_vertices = num_vertices
        self.packed = packed
        self.alpha = 1.0 / (1.0 + 2.0 ** (-dim))
        self._weight64: Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"TorchLattice(batch={self.batch}, num_pixels={self.num_pixels}, dim={self.dim}, "
            f"num_vertices={self.num_vertices}, packed={self.packed})"
        )

    @property
    def device(self) -> torch.device:
        return self._vertex.device

    def _weights(self, dtype: torch.dtype) -> Tensor:
        if dtype == torch.float32:
            return self._weight
        if self._weight64 is None:
            self._weight64 = self._weight.to(torch.float64)
        return self._weight64

    def apply(self, values: Tensor, *, transpose: bool = False) -> Tensor:
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

        Returns:
            ``(N, C, P)`` filtered values, float64 for float64 input and
            float32 otherwise.
        """
        n, c, p = values.shape
        if n != self.batch or p != self.num_pixels:
            raise ValueError(
                f"values have shape {tuple(values.shape)} but the lattice was built for "
                f"(N, C, P) = ({self.batch}, C, {self.num_pixels})"
            )
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        weight = self._weights(dtype)
        d1 = self.dim + 1
        m = self.num_vertices
        # (N*P, C): each pixel's C channels contiguous
        flat = values.to(dtype).permute(0, 2, 1).reshape(n * p, c)

        # splat
        grid = torch.zeros(m + 1, c, dtype=dtype, device=values.device)
        for r in range(d1):
            grid.index_add_(0, self._vertex[r], flat * weight[r].unsqueeze(1))

        # blur: d+1 passes, each reading the previous pass's output; row m stays 0
        other = torch.zeros_like(grid)
        for j in reversed(range(d1)) if transpose else range(d1):
            n1 = grid.index_select(0, self._neighbours[j, 0])
            n1.add_(grid.index_select(0, self._neighbours[j, 1]))
            torch.add(grid[:m], n1, alpha=0.5, out=other[:m])
            grid, other = other, grid

        # slice
        out = torch.zeros(n * p, c, dtype=dtype, device=values.device)
        for r in range(d1):
            out.addcmul_(grid.index_select(0, self._vertex[r]), weight[r].unsqueeze(1))
        out.mul_(self.alpha)
        return out.view(n, p, c).permute(0, 2, 1).contiguous()


def _build_packed(
    image: Tensor, rem0: Tensor, rank: Tensor, lo: list[int], ranges: list[int], d: int
) -> tuple[Tensor, Tensor, int]:
    """Vertices and blur neighbours with packed int64 keys.

    Returns ``vertex`` ``(d+1, Q)`` int64 vertex ids, ``neighbours``
    ``(d+1, 2, M)`` int64 ids (``M`` = missing) and ``M``.
    """
    dev = rem0.device
    strides = [1] * d
    for i in range(d - 2, -1, -1):
        strides[i] = strides[i + 1] * ranges[i + 1]
    image_stride = strides[0] * ranges[0]
    stride_t = torch.tensor(strides, dtype=torch.int64, device=dev)
    lo_t = torch.tensor(lo, dtype=torch.int64, device=dev)
    base = image * image_stride + ((rem0[:, :d] - lo_t) * stride_t).sum(dim=1)
    # key_r = base + sum_i (r - (d+1) [rank_i > d - r]) stride_i
    #       = base + r sum(stride) - (d+1) above[d + 1 - r],  above[k] = sum_{rank_i >= k} stride_i
    q = rem0.shape[0]
    by_rank = torch.zeros(q, d + 2, dtype=torch.int64, device=dev)
    by_rank[:, : d + 1].scatter_(1, rank[:, :d], stride_t.expand(q, d))
    above = by_rank.flip(1).cumsum(1).flip(1)  # (Q, d+2)
    r = torch.arange(d + 1, device=dev)
    keys = (
        base.unsqueeze(0)
        + (r * sum(strides)).unsqueeze(1)
        - (d + 1) * above.index_select(1, d + 1 - r).t()
    )  # (d+1, Q)
    del base
    # Host sync 2 of 2: the number of vertices M sizes every later tensor
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    del keys
    m = uniq.numel()
    deltas = _neighbour_deltas(d)
    shifts = [sum(a * s for a, s in zip(delta, strides)) for delta in deltas]
    neighbours = torch.empty(len(deltas), m, dtype=torch.int64, device=dev)
    for group in _groups(len(deltas), m):
        query = torch.cat([uniq + shifts[k] for k in group])
        pos, found = _lookup(uniq, query)
        neighbours[group.start : group.stop] = torch.where(found, pos, m).view(len(group), m)
    return inverse, neighbours.view(d + 1, 2, m), m


def _build_relabel(
    image: Tensor, rem0: Tensor, rank: Tensor, batch: int, d: int
) -> tuple[Tensor, Tensor, int]:
    """Exact path: relabel one coordinate at a time, never packing beyond the vertex count.

    At level ``i`` the prefix ``(image, k_0..k_{i-1})`` has a dense id below
    ``M_i`` and coordinate ``k_i`` a dense rank below ``R_i``; both are at most
    the number of vertex instances ``Q (d+1)``, so ``id * R_i + rank`` fits in
    int64 whenever ``(Q (d+1))^2 < 2^63``.
    """
    dev = rem0.device
    q = rem0.shape[0]
    total = q * (d + 1)
    if total * total >= 2**63:
        raise ValueError(f"too many lattice vertex instances ({total}) for int64 relabelling")
    coords = torch.cat(
        [rem0[:, :d] + _vertex_offsets(rank, r) for r in range(d + 1)]
    )  # (Q*(d+1), d), remainder-major like the packed path
    ids = image.repeat(d + 1)
    count = batch
    levels = []
    for i in range(d):
        col_vals, col_rank = torch.unique(coords[:, i], sorted=True, return_inverse=True)
        code = ids * col_vals.numel() + col_rank
        prefix, ids = torch.unique(code, sorted=True, return_inverse=True)
        levels.append((col_vals, prefix))
        count = prefix.numel()
    m = count
    # one representative instance per vertex gives its coordinates and image
    rep = torch.empty(m, dtype=torch.int64, device=dev)
    rep.scatter_(0, ids, torch.arange(total, device=dev))
    vcoords = coords[rep].t().contiguous()  # (d, M): each coordinate contiguous
    vimage = image.repeat(d + 1)[rep]
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
    return ids.view(d + 1, q), neighbours.view(d + 1, 2, m), m


def build(features: Tensor, options: BuildOptions = DEFAULT_OPTIONS) -> TorchLattice:
    """Build the lattice for a batch of per-pixel feature vectors.

    Args:
        features: ``(N, P, d)`` float32 features (already divided by their
            bandwidths), finite, ``N, P, d >= 1``; any device. Other float
            dtypes are converted to float32.
        options: :class:`~rloss.lattice.BuildOptions`; only ``keys`` applies
            (``"full"``: the relabelling path; ``"packed"``: packed or an error).

    Returns:
        A :class:`TorchLattice` whose ``apply`` filters ``(N, C, P)`` values.

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
    dev = features.device
    f = features.detach().to(torch.float32).reshape(n * p, d)
    el = _elevate(f)

    # Host sync 1 of 2 (construction only): the elevated magnitude (validity) and
    # the per-coordinate ranges that choose the packed key layout, read back in
    # one transfer.
    stats = torch.cat(
        [
            el.abs().amax().view(1),
            el[:, :d].amin(dim=0),
            el[:, :d].amax(dim=0),
        ]
    ).tolist()
    peak = stats[0]
    if not peak < _MAX_ELEVATED:  # also catches NaN/Inf
        raise ValueError(
            f"features are too large or not finite (elevated magnitude {peak:.3g}, "
            f"want < {_MAX_ELEVATED:.3g}): divide them by their bandwidths"
        )
    rem0, rank, bary = _simplex(el)
    del el
    image = torch.arange(n, device=dev, dtype=torch.int64).repeat_interleave(p)

    # The remainder-0 point is within (d+1)/2 of the elevated point, and moves by
    # at most d+1 when put back on the plane: 2(d+1) around the elevated range
    # bounds it. Pad by another 2(d+1) so that every vertex (rem0 + [-(d+1), d])
    # and each of its blur neighbours (a further +-d) packs without wrapping.
    margin = 4 * (d + 1)
    lo = [math.floor(v) - margin for v in stats[1 : 1 + d]]
    hi = [math.ceil(v) + margin for v in stats[1 + d :]]
    ranges = [h - l + 1 for l, h in zip(lo, hi)]
    capacity = n
    for r in ranges:
        capacity *= r
    packed = options.keys != "full" and capacity < 2**_MAX_PACKED_BITS
    if options.keys == "packed" and not packed:
        raise ValueError(
            "keys='packed' was asked for, but the lattice keys of these features do not "
            "fit 63 bits; use keys='auto'"
        )
    if packed:
        vertex, neighbours, m = _build_packed(image, rem0, rank, lo, ranges, d)
    else:
        vertex, neighbours, m = _build_relabel(image, rem0, rank, n, d)
    idx_dtype = _index_dtype(m)
    return TorchLattice(
        batch=n,
        num_pixels=p,
        dim=d,
        vertex=vertex.to(idx_dtype).contiguous(),
        weight=bary.t().contiguous(),
        neighbours=neighbours.to(idx_dtype).contiguous(),
        num_vertices=m,
        packed=packed,
    )
