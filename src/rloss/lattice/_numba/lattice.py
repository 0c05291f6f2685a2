"""The numba lattice object: validation, orchestration, the two ways to compute.

:func:`build` validates the features and measures their ranges (one parallel
pass, which also rejects NaN/Inf); the batch lattice (:class:`~._build.LatticeArrays`)
is built on first use: :meth:`NumbaLattice.apply`, a second
:meth:`NumbaLattice.quadratic_form`, or reading :attr:`NumbaLattice.arrays`.
The first :meth:`~NumbaLattice.quadratic_form` on a lattice instead runs
build-to-slice image by image and keeps nothing: with one pixel block per
image (8 or more images) each image is one task
(:func:`~._quadratic.quadratic_image` on torch's OpenMP team, :mod:`._team`);
with several (fewer images) the ``split_*`` kernels run it in five phases of
block or image tasks, so that one image keeps every thread busy. Both give the
batch lattice's result bit for bit. A lattice used again is built once and
reused.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from rloss._threads import lattice_threads, numba_threads
from rloss.lattice import _pool
from rloss.lattice._common import DEFAULT_OPTIONS, BuildOptions
from rloss.lattice._numba import _quadratic as Q
from rloss.lattice._numba import _team
from rloss.lattice._numba._build import (
    BuildInfo,
    LatticeArrays,
    build_arrays,
    first_table_capacity,
)
from rloss.lattice._numba._embed import pack_params, ranges, scales
from rloss.lattice._numba._filter import slice_values, splat, splat_blur
from rloss.lattice._numba._layout import blocks_per_image
from rloss.lattice._numba._simd import padded

__all__ = ["CHECKS_FINITE", "NumbaLattice", "build"]

#: :func:`build` itself rejects NaN/Inf features (in its range pass), so
#: :class:`rloss.lattice.Lattice` skips its own check for this backend.
CHECKS_FINITE = True
#: Largest |elevated coordinate| accepted: keys and their neighbours must fit int32.
MAX_COORD = 2.0**30

_log = logging.getLogger("rloss.lattice")


def kernels_cached(threaded: bool = True) -> bool:
    """Whether numba's on-disk cache holds the kernels (reads one small index file).

    Checked on the fused kernels, the last ones compiled when the cache is filled
    by a loss call (``quadratic_image`` for 8 or more images, ``split_slice`` for
    fewer; either counts), or, for a ``threaded`` call when the tasks run on
    torch's OpenMP team (:mod:`._team`), on their launchers (which compile the
    kernels again inside them; a problem below ``serial_below`` runs on one
    thread and never compiles them); a stale index (the sources changed) counts
    as empty. On an unknown numba layout this says "cached" rather than guess.
    """
    last = (
        (Q.quadratic_image_team, Q.split_slice_team)
        if threaded and _team.uses_openmp()
        else (Q.quadratic_image, Q.split_slice)
    )
    try:
        return any(bool(kernel._cache._cache_file._load_index()) for kernel in last)
    except Exception:  # numba internals changed: say nothing rather than fail
        return True


class CompileNotice:
    """Say once, before the first kernel call, that the kernels are being compiled.

    Numba keeps compiled kernels on disk (``cache=True``); with an empty or stale
    cache the first lattice compiles what its call needs with no other sign of
    life: a DenseCRF loss call (the range pass and the per-image fused kernels
    with their launchers, no parallel kernels) took 16–18 s on a 2-core AMD EPYC
    (2026-12-02; 25 s earlier that day, 39.6 s before they ran as per-image
    tasks), a filter call compiles the batch-lattice kernels too.
    One instance per process (:data:`COMPILE_NOTICE`) gives the notice at
    most once, as a warning on the ``rloss.lattice`` logger (stderr unless
    logging is configured otherwise).

    Args:
        probe: returns whether the kernels are cached (default :func:`kernels_cached`).
    """

    MESSAGE = (
        "rloss: compiling the CPU lattice kernels (first run only, about 20 seconds; "
        "later runs load them from numba's cache)"
    )

    def __init__(self, probe=kernels_cached) -> None:
        self.probe = probe
        self.said = False
        self.seen: set[bool] = set()

    def check(self, threaded: bool = True) -> bool:
        """Give the notice if not given yet, this kind of call (``threaded`` or on one
        thread, which compile different kernels) was not checked before, and its
        kernels are not cached (``probe(threaded)``); returns whether it was given."""
        if self.said or threaded in self.seen:
            return False
        self.seen.add(threaded)
        if self.probe(threaded):
            return False
        self.said = True
        _log.warning(self.MESSAGE)
        return True


#: The process's notice (checked when the first numba lattice is made).
COMPILE_NOTICE = CompileNotice()


def task_threads(pixels: int, options: BuildOptions) -> int:
    """Threads of the lattice's task kernels for a batch of ``pixels`` pixels: 1 below
    ``options.serial_below`` (waking a team costs more than the work), else
    :func:`rloss._threads.lattice_threads` (torch's count as the caller set it, capped by
    numba's). Results never depend on it."""
    return 1 if pixels < options.serial_below else lattice_threads()


class NumbaLattice:
    """A lattice over a batch of ``N`` images of ``P`` pixels with ``d``-dim features.

    Args:
        features: ``(N, P, d)`` float32 contiguous CPU tensor (use :func:`build`).
        options: :class:`~rloss.lattice.BuildOptions`.

    Attributes:
        batch, num_pixels, dim: ``N``, ``P``, ``d``.
        nblk: pixel blocks (tasks) per image.
        fused_passes: how many runs of the fused kernel the last fused
            :meth:`quadratic_form` took (2 when its scratch rows were too few);
            0 when the batch lattice served it.
    """

    def __init__(self, features: Tensor, options: BuildOptions = DEFAULT_OPTIONS) -> None:
        f = features.numpy()
        n_img, npix, d = f.shape
        nthreads = task_threads(n_img * npix, options)
        COMPILE_NOTICE.check(nthreads > 1)
        dp1 = d + 1
        self.options = options
        rng = ranges(f, nthreads)
        scale = scales(d)
        if not np.isfinite(rng).all():
            raise ValueError("features contains NaN or Inf values")
        fmax = float(np.abs(rng).max())
        if 2.0 * d * fmax * float(scale[0]) + 2 * dp1 >= MAX_COORD:
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
        self.nblk = blocks_per_image(n_img, npix)
        self.alpha = np.float32(1.0 / (1.0 + 2.0**-d))
        self._f, self._scale = f, scale
        self._pack = None if options.keys == "full" else pack_params(rng[0], rng[1], scale)
        if self._pack is None and options.keys == "packed":
            raise ValueError(
                "keys='packed' was asked for, but the feature ranges are too wide to pack "
                "a lattice key into 64 bits; use keys='auto'"
            )
        self._arrays: LatticeArrays | None = None
        self._info: BuildInfo | None = None
        self._fused_once = False
        self.fused_passes = 0

    def _threads(self, pixels: int):
        """Numba's threads for its parallel kernels: :func:`task_threads` (one below
        ``options.serial_below`` pixels; results do not depend on it)."""
        return numba_threads(task_threads(pixels, self.options))

    # ------------------------------------------------------------------ the batch lattice

    @property
    def arrays(self) -> LatticeArrays:
        """The batch lattice's arrays; built on first access (that is the build)."""
        if self._arrays is None:
            hint = self.options.hint
            with self._threads(self.batch * self.num_pixels):
                arrays, info = build_arrays(
                    self._f, self._scale, self.nblk, self._pack,
                    require_packed=self.options.keys == "packed",
                    per_task_hint=hint.per_task, min_table=self.options.min_table,
                )  # fmt: skip
            if info.most_per_task is not None:
                hint.update(info.most_per_task)
            self._arrays, self._info = arrays, info
            del self._f
        return self._arrays

    @property
    def built(self) -> bool:
        """Whether the batch lattice exists (``arrays`` was needed)."""
        return self._arrays is not None

    @property
    def info(self) -> BuildInfo:
        """Build diagnostics (builds the batch lattice if needed)."""
        self.arrays  # noqa: B018 - builds
        assert self._info is not None
        return self._info

    @property
    def packed(self) -> bool:
        """Whether vertex keys were packed into one int64 (builds if needed)."""
        return self.info.packed

    @property
    def num_vertices(self) -> int:
        """Lattice vertices over the whole batch (images never share one; builds if needed)."""
        return self.info.num_vertices

    @property
    def build_seconds(self) -> dict:
        """Wall seconds of the build phases (profiling aid; builds if needed)."""
        return self.info.seconds

    @property
    def direct(self) -> bool:
        """One task per image: task-local ids are vertex ids (no offsets, no reduction)."""
        return self.nblk == 1

    @property
    def off(self) -> np.ndarray:
        """Global vertex of each pixel-vertex entry: ``(N * P * (d+1),)`` int32 (a copy
        when one task per image; diagnostics only, the filter reads ``vid + obase``)."""
        a = self.arrays
        if not self.direct:
            return a.vid
        per = self.num_pixels * (self.dim + 1)
        base = a.obase.astype(np.int32)[:, None]
        return (a.vid.reshape(self.batch, per) + base).reshape(-1)

    def __repr__(self) -> str:
        nv = self._info.num_vertices if self._info is not None else "not built"
        return (
            f"NumbaLattice(batch={self.batch}, pixels={self.num_pixels}, dim={self.dim}, "
            f"vertices={nv})"
        )

    # ------------------------------------------------------------------ filter

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
        with self._threads(self.batch * self.num_pixels):
            a = self.arrays
            dt = vals.dtype
            lat = splat_blur(a, self.num_vertices, splat, (vals,), vals.shape[1], dt)
            # pooled memory (see _pool): no first-touch page faults on a 70 MB output
            out = _pool.empty(vals.shape, dt)
            slice_values(lat, a, self.alpha, out)
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ quadratic form

    def quadratic_form(
        self, x: Tensor, r: Tensor, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[float, float, float, bool]]:
        """Fused quadratic form: see :meth:`rloss.lattice.Lattice.quadratic_form`.

        Args:
            x: ``(N, K, P)`` float32/float64 CPU tensor.
            r: ``(N, P)`` tensor of the same dtype.
            normalize: divide by ``rᵀ W r`` per image.
            grad_scale: factor of the gradient, or ``None`` for no gradient.

        Returns:
            ``(value (N,), volume (N,), grad (N, K, P) or None, stats)`` in ``x``'s
            dtype (sums in float64); ``volume`` is ``rᵀ W r`` when ``normalize``
            (else ones); ``stats`` the raw ``(min, max, sum_error, finite)`` of
            :mod:`._quadratic`, folded into the splat at no extra pass.
        """
        p = x.detach().contiguous().numpy()
        rr = r.detach().contiguous().numpy()
        if (
            self.options.fused
            and not self.built
            and not self._fused_once
            and self._pack is not None
        ):
            # once: a lattice used again is worth building (and keeping)
            self._fused_once = True
            run = self._quadratic_fused if self.nblk == 1 else self._quadratic_split
            fused = run(p, rr, normalize, grad_scale)
            if fused is not None:
                return fused
        self.fused_passes = 0
        want = grad_scale is not None
        dt = p.dtype
        n_img, k, _ = p.shape
        ntask = n_img * self.nblk
        with self._threads(self.batch * self.num_pixels):
            a = self.arrays
            stats = np.empty((ntask, 4))
            Q.stats_init(stats)
            lat0, lat = splat_blur(
                a, self.num_vertices, Q.splat_weighted, (p, rr, stats), k + 1, dt, keep=True
            )
            part = np.empty(n_img)
            volume = np.empty(n_img)
            Q.image_terms(lat0, lat, k, a.voff, self.alpha, bool(normalize), part, volume)
            grad = None
            if want:
                coef = (float(grad_scale) / volume).astype(dt)
                grad = _pool.empty(p.shape, dt)
                Q.slice_gradient(lat, a, self.alpha, rr, coef, grad)
        value = torch.from_numpy((part / volume).astype(dt))
        vol = torch.from_numpy(volume.astype(dt))
        return value, vol, None if grad is None else torch.from_numpy(grad), Q.stats_summary(stats)

    def _unpackable(self) -> None:
        """A fused path met a key outside the packable range: None (the caller builds
        the batch lattice with full keys), or the error ``keys="packed"`` asks for."""
        if self.options.keys == "packed":
            raise ValueError(
                "keys='packed' was asked for, but a lattice key falls outside "
                "the packable range; use keys='auto'"
            )
        return None

    def _quadratic_fused(
        self, p: np.ndarray, r: np.ndarray, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[float, float, float, bool]] | None:
        """:meth:`quadratic_form` image by image (``quadratic_fused``); None if keys do
        not pack."""
        f = self._f
        n_img, npix, d = f.shape
        dp1 = d + 1
        k = p.shape[1]
        dt = p.dtype
        want = grad_scale is not None
        pbase, plim, pu = self._pack
        hint = self.options.hint
        min_table = self.options.min_table
        # scratch rows per thread of the team; only touched pages cost memory,
        # and the pool keeps them between calls
        nthreads = task_threads(n_img * npix, self.options)
        slots = max(1, min(nthreads, n_img))
        nent = npix * dp1
        cap0 = first_table_capacity(nent, hint.per_task, min_table)
        rows = min(nent, max(2 * hint.per_task, min_table)) + 1
        counts = np.empty(n_img, np.int64)
        stats = np.empty((n_img, 4))
        part = np.empty(n_img)
        volume = np.ones(n_img)
        grad = _pool.empty(p.shape if want else (1, 1, 1), dt)  # (1, 1, 1): never written
        s_loc = _pool.empty((slots, nent), np.int32)
        s_bary = _pool.empty((slots, nent), np.float32)
        s_hh = _pool.empty((slots, nent), np.int64)
        s_table = _pool.empty((slots, 2 * cap0), np.int64)
        self.fused_passes = 0
        for _ in range(2):  # a second pass only if the rows were too few
            s_nbr = _pool.empty((slots, dp1, rows, 2), np.int32)
            s_lat_a = _pool.empty((slots, rows, padded(k + 1)), dt)
            s_lat_b = _pool.empty((slots, rows, padded(k + 1)), dt)
            s_lat_c = _pool.empty((slots, rows, padded(k + 1)), dt)
            Q.stats_init(stats)
            self.fused_passes += 1
            args = (
                f, self._scale, pbase, plim, pu, self.alpha, p, r, bool(normalize),
                float(grad_scale or 0.0), want, grad, part, volume, stats, counts,
                s_loc, s_bary, s_hh, s_table, s_nbr, s_lat_a, s_lat_b, s_lat_c,
            )  # fmt: skip
            _team.run(Q.quadratic_image_team, Q.quadratic_image, n_img, nthreads, args)
            if (counts < 0).any():
                return self._unpackable()
            hint.update(int(counts.max()))
            if counts.max() + 1 <= rows:
                break
            rows = int(counts.max()) + 1
        value = torch.from_numpy((part / volume).astype(dt))
        vol = torch.from_numpy(volume.astype(dt))
        return value, vol, torch.from_numpy(grad) if want else None, Q.stats_summary(stats)


    def _quadratic_split(
        self, p: np.ndarray, r: np.ndarray, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[float, float, float, bool]] | None:
        """:meth:`quadratic_form` build-to-slice in phases over the batch path's pixel
        blocks (``nblk > 1``: few images), every phase on every thread
        (``split_*`` of :mod:`._quadratic`); bitwise the batch lattice's result without
        forming it. None if keys do not pack."""
        f = self._f
        n_img, npix, d = f.shape
        dp1 = d + 1
        k = p.shape[1]
        dt = p.dtype
        nblk = self.nblk
        ntask = n_img * nblk
        want = grad_scale is not None
        pbase, plim, pu = self._pack
        hint = self.options.hint
        nthreads = task_threads(n_img * npix, self.options)
        nent = npix * dp1
        cap0 = first_table_capacity(-(-npix // nblk) * dp1, hint.per_task, self.options.min_table)
        loc = _pool.empty((n_img, nent), np.int32)
        bary = _pool.empty((n_img, nent), np.float32)
        hh = _pool.empty((n_img, nent), np.int64)
        tables = _pool.empty((ntask, 2 * cap0), np.int64)
        nloc = np.zeros(ntask, np.int64)
        sc = self._scale
        _team.run(
            Q.split_local_team, Q.split_local, ntask, nthreads,
            (nblk, f, sc, pbase, plim, pu, loc, bary, hh, tables, nloc),
        )  # fmt: skip
        tables = None  # free (the tasks above are done)
        if (nloc < 0).any():
            return self._unpackable()
        hint.update(max(int(nloc.max()), 1))
        loff = np.zeros(ntask + 1, np.int64)
        np.cumsum(nloc, out=loff[1:])
        per_img = loff[nblk::nblk] - loff[:-1:nblk]
        rows = int(per_img.max()) + 1  # an image has at most its slots' vertices
        tcap = 1 << (max(4 * int(per_img.max()), 16) - 1).bit_length()
        table = _pool.empty((n_img, 2 * tcap), np.int64)
        lmap = _pool.empty(int(loff[-1]), np.int32)
        gkey = _pool.empty((n_img, rows), np.int64)
        nbr = _pool.empty((n_img, dp1, rows, 2), np.int32)
        counts = np.zeros(n_img, np.int64)
        _team.run(
            Q.split_merge_team, Q.split_merge, n_img, nthreads,
            (nblk, npix, dp1, hh, nloc, loff, table, lmap, gkey, pu, nbr, counts),
        )  # fmt: skip
        table = gkey = hh = None  # free
        width = padded(k + 1)
        buf = _pool.empty((int(loff[-1]), width), dt)
        stats = np.empty((ntask, 4))
        Q.stats_init(stats)
        _team.run(
            Q.split_splat_team, Q.split_splat, ntask, nthreads,
            (nblk, p, r, loc, bary, loff, lmap, buf, stats),
        )  # fmt: skip
        lat_a = _pool.empty((n_img, rows, width), dt)
        lat_b = _pool.empty((n_img, rows, width), dt)
        lat_c = _pool.empty((n_img, rows, width), dt)
        alpha = self.alpha
        part = np.empty(n_img)
        volume = np.empty(n_img)
        _team.run(
            Q.split_reduce_blur_team, Q.split_reduce_blur, n_img, nthreads,
            (nblk, nloc, loff, lmap, buf, counts, nbr, lat_a, lat_b, lat_c, alpha, k,
             bool(normalize), part, volume),
        )  # fmt: skip
        buf = lmap = nbr = None  # free
        lat = lat_b if dp1 % 2 == 1 else lat_c  # where blur_kept leaves the result
        grad = None
        if want:
            coef = (float(grad_scale) / volume).astype(dt)
            grad = _pool.empty(p.shape, dt)
            _team.run(
                Q.split_slice_team, Q.split_slice, ntask, nthreads,
                (nblk, lat, loc, bary, alpha, r, coef, grad),
            )  # fmt: skip
        self.fused_passes = 1
        value = torch.from_numpy((part / volume).astype(dt))
        vol = torch.from_numpy(volume.astype(dt))
        return value, vol, None if grad is None else torch.from_numpy(grad), Q.stats_summary(stats)


def build(features: Tensor, options: BuildOptions = DEFAULT_OPTIONS) -> NumbaLattice:
    """Build the lattice for a batch of per-pixel features.

    Args:
        features: ``(N, P, d)`` float32 contiguous CPU tensor: each pixel's
            feature vector, already divided by its bandwidths.
        options: :class:`~rloss.lattice.BuildOptions`.

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
    return NumbaLattice(features.detach().contiguous(), options)
