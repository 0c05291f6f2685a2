"""The fully connected Gaussian filter over bilateral (RGBXY) features.

``W v`` with ``W_ij = exp(-|f_i - f_j|^2 / 2)`` is computed in time linear in
the number of pixels with the permutohedral lattice (Adams, Baek & Davis,
Eurographics 2010): splat each pixel to the d+1 vertices of its enclosing
simplex, blur along the d+1 lattice directions with a [1 2 1] kernel, slice
back. The conventions (elevation, rounding, blur, slicing weight) are those
of the rloss reference implementation, so that published loss weights
(DenseCRF 2e-9 with sigma_rgb=15, sigma_xy=100) carry over unchanged.

The lattice is an approximation: it returns about 0.5–0.7 times the exact
Gaussian sum (the factor depends on sigma and content), with a kernel slightly
wider than the Gaussian and compact support of ~3.5 sigma. ``backend="exact"``
computes the true sum by brute force in float64, for tests and tiny images.

Example:
    >>> import torch
    >>> from rloss.lattice import Lattice, bilateral_features
    >>> image = torch.rand(2, 3, 32, 40) * 255
    >>> lat = Lattice(bilateral_features(image, sigma_rgb=15.0, sigma_xy=20.0))
    >>> probs = torch.rand(2, 21, 32, 40).softmax(1)
    >>> lat.filter(probs).shape
    torch.Size([2, 21, 32, 40])

Besides :meth:`Lattice.filter`, a lattice offers one fused primitive,
:meth:`Lattice.quadratic_form` (``Σ_k s_kᵀ W (r − s_k)`` per image and its
gradient from one filtering pass), which the losses build their energies on;
the lattice itself knows nothing about losses or probabilities. How a lattice
is built (key strategy, threads, the fused path) is an explicit
:class:`BuildOptions`; every option gives bitwise the same results.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from rloss import _alloc
from rloss.checks import check_finite, check_float_dtype, check_positive, check_spacing
from rloss.lattice import _pool
from rloss.lattice._common import (
    DEFAULT_CAPACITY_HINT,
    DEFAULT_OPTIONS,
    BuildOptions,
    CapacityHint,
)
from rloss.lattice._exact import exact_filter

__all__ = [
    "BACKENDS",
    "DEFAULT_CAPACITY_HINT",
    "BuildOptions",
    "CapacityHint",
    "Lattice",
    "ProbsStats",
    "QuadraticForm",
    "ValueStats",
    "bilateral_features",
    "default_backend",
    "exact_filter",
    "features_from_image",
    "gaussian_filter",
    "position_sigmas",
    "release_memory",
]

#: Backend name -> module implementing ``build(features (N, P, d), options) -> obj``
#: with ``obj.apply(values (N, C, P)) -> (N, C, P)`` and optionally a fused
#: ``obj.quadratic_form`` (see :meth:`Lattice.quadratic_form`; it returns value
#: statistics or ``None`` for the front end to gather them); a module with
#: ``CHECKS_FINITE = True`` rejects NaN/Inf features itself with the same ``ValueError``.
BACKENDS: dict[str, str] = {
    "torch": "rloss.lattice._torch",
    "numba": "rloss.lattice._numba",
    "exact": "rloss.lattice._exact",
}


class ValueStats(NamedTuple):
    """Raw statistics of the values ``x`` given to :meth:`Lattice.quadratic_form`.

    Plain numbers, gathered for free while the values pass through the splat
    (numba backend) or by torch reductions (other backends); what they mean is
    for the caller (the losses read them as probability checks, see
    :func:`rloss.checks.check_probs_stats`).
    """

    #: Smallest value over pixels with ``r > 0`` (``inf`` if there are none).
    min: float
    #: Largest value over pixels with ``r > 0`` (``-inf`` if there are none).
    max: float
    #: Largest ``|Σ_k x_k − 1|`` over pixels with ``r > 0`` (0 if there are none).
    sum_error: float
    #: False when some value anywhere is NaN or infinite.
    finite: bool


#: Deprecated name of :class:`ValueStats`.
ProbsStats = ValueStats


class QuadraticForm(NamedTuple):
    """Result of :meth:`Lattice.quadratic_form` (all in the dtype of ``x``)."""

    #: ``(N,)``: ``Σ_k s_kᵀ W (r − s_k)`` per image, divided by ``volume`` when normalised.
    value: Tensor
    #: ``(N,)``: ``rᵀ W r`` per image (floored at the dtype's tiny) when normalised, else ones.
    volume: Tensor
    #: ``grad_scale · r ⊙ (W r − 2 W s_k) / volume``, shaped like ``x``; None without grad_scale.
    grad: Tensor | None
    #: :class:`ValueStats` when asked for, else None.
    stats: ValueStats | None


def bilateral_features(
    image: Tensor,
    sigma_rgb: float,
    sigma_xy: float,
    *,
    spacing: tuple[float, ...] | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Per-pixel (per-voxel) bilateral features ``(x/σ_xy, y/σ_xy[, z/σ_xy], I_c/σ_rgb ...)``.

    ``x`` is the 0-based column index, ``y`` the row index and, for a volume,
    ``z`` the slice index; with ``spacing`` each index is multiplied by the
    voxel size along its axis, so that ``sigma_xy`` is in physical units (a
    voxel at index ``(z, y, x)`` sits at ``(z·sd, y·sh, x·sw)``). ``I_c`` are
    the guidance channels (any number: 1 for grayscale or MRI, 3 for RGB).

    Args:
        image: ``(N, C, H, W)`` float guidance image, or a volume
            ``(N, C, D, H, W)``, usually 0..255.
        sigma_rgb: colour (intensity) bandwidth, > 0, in image units.
        sigma_xy: spatial bandwidth, > 0, in pixels (voxels), or in the units
            of ``spacing`` when it is given.
        spacing: ``None`` (1 per axis), or the voxel size per spatial axis:
            ``(sd, sh, sw)`` for a volume, ``(sh, sw)`` for an image.
        check_finite: raise ``ValueError`` when ``image`` has NaN/Inf.

    Returns:
        ``(N, 2 + C, H, W)`` or ``(N, 3 + C, D, H, W)`` float32 features on
        ``image``'s device: the positions (x first, then y, then z) and the
        channels.

    Example:
        >>> import torch
        >>> from rloss.lattice import bilateral_features
        >>> vol = torch.rand(1, 1, 4, 8, 8) * 255
        >>> f = bilateral_features(vol, 15.0, 3.0, spacing=(6.0, 1.5, 1.5))
        >>> f.shape
        torch.Size([1, 4, 4, 8, 8])
        >>> float(f[0, 2, 1, 0, 0])  # z of slice 1: 1 x 6 mm / 3 mm
        2.0
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (4, 5):
        raise ValueError(
            f"image must have shape (N, C, H, W) or (N, C, D, H, W), got {tuple(image.shape)}"
        )
    check_float_dtype("image", image)
    if image.numel() == 0:
        raise ValueError(f"image must be non-empty, got shape {tuple(image.shape)}")
    sigma_rgb = check_positive("sigma_rgb", sigma_rgb)
    sigma_xy = check_positive("sigma_xy", sigma_xy)
    sp = check_spacing(spacing, image.dim() - 2)
    if check_finite:
        _check_finite("image", image)
    return features_from_image(
        image, sigma_rgb, position_sigmas(sigma_xy, image.dim() - 2, spacing=sp),
        pixel_major=False,
    )


def position_sigmas(
    sigma_xy: float,
    ndim: int,
    *,
    spacing: tuple[float, ...] | None = None,
    scale: tuple[float, ...] | None = None,
) -> tuple[float, ...]:
    """Per spatial axis, the divisor of the voxel index in the position features.

    A voxel index ``i`` along axis ``a`` of a grid resized by ``scale[a]`` sits
    at ``i · spacing[a] / scale[a]`` in the original units, so its feature is
    ``i / (sigma_xy · scale[a] / spacing[a])``. With neither spacing nor
    scale this is ``sigma_xy`` on every axis (the 2-D convention).

    Example:
        >>> from rloss.lattice import position_sigmas
        >>> position_sigmas(10.0, 3, spacing=(5.0, 1.0, 1.0), scale=(1.0, 0.5, 0.5))
        (2.0, 5.0, 5.0)
    """
    out = []
    for a in range(ndim):
        s = float(sigma_xy) if scale is None else float(sigma_xy) * float(scale[a])
        out.append(s if spacing is None else s / float(spacing[a]))
    return tuple(out)


def features_from_image(
    image: Tensor,
    sigma_rgb: float,
    sigmas: tuple[float | None, ...],
    *,
    pixel_major: bool = True,
) -> Tensor:
    """Bilateral features with one position divisor per spatial axis (no checks).

    The one definition of the feature values (float32): position ``j`` is
    ``arange(size) / sigmas[axis]`` for the spatial axes from the last (x) to the
    first, skipping axes whose divisor is ``None``, then ``image / sigma_rgb``.
    ``pixel_major`` stores the result as a ``(N, d, *spatial)`` view of
    ``(N, *spatial, d)`` memory (each pixel's feature vector contiguous, as the
    lattice wants it); otherwise channel-major.

    Args:
        image: ``(N, C, *spatial)`` float tensor (``C`` may be 0: positions only).
        sigma_rgb: intensity bandwidth.
        sigmas: per spatial axis (image order) a positive divisor, or ``None`` to
            leave that axis out (e.g. an axis of extent 1, whose coordinate is
            constant and changes no Gaussian).
        pixel_major: memory layout of the result (the values are the same).

    Returns:
        ``(N, P + C, *spatial)`` float32, ``P`` the number of kept axes.

    Example:
        >>> import torch
        >>> from rloss.lattice import bilateral_features, features_from_image
        >>> vol = torch.rand(1, 1, 1, 4, 5) * 255  # one slice: drop its z
        >>> f = features_from_image(vol, 15.0, (None, 2.0, 2.0))
        >>> f.shape, f.is_contiguous()
        (torch.Size([1, 3, 1, 4, 5]), False)
        >>> torch.equal(f[:, :, 0], bilateral_features(vol[:, :, 0], 15.0, 2.0))
        True
    """
    n, c, *spatial = (int(v) for v in image.shape)
    nd = len(spatial)
    if len(sigmas) != nd:
        raise ValueError(f"sigmas: want {nd} values (one per spatial axis), got {sigmas}")
    axes = [a for a in reversed(range(nd)) if sigmas[a] is not None]
    d = len(axes) + c
    dev = image.device
    if pixel_major and dev.type == "cpu":
        # pooled (see _pool): a loss step's 16 MB of features reuse the last step's pages
        # instead of faulting in fresh ones wherever malloc happens to place them
        mem = torch.from_numpy(_pool.empty((n, *spatial, d), np.float32))
        chan = [mem[..., j] for j in range(d)]
    elif pixel_major:
        mem = torch.empty(n, *spatial, d, dtype=torch.float32, device=dev)
        chan = [mem[..., j] for j in range(d)]
    else:
        feats = torch.empty(n, d, *spatial, dtype=torch.float32, device=dev)
        chan = [feats[:, j] for j in range(d)]
    for j, a in enumerate(axes):
        shape = [1] * nd
        shape[a] = spatial[a]
        coord = torch.arange(spatial[a], device=dev, dtype=torch.float32)
        chan[j][...] = coord.div_(float(sigmas[a])).view(1, *shape)  # type: ignore[arg-type]
    if c:
        if pixel_major:
            torch.div(
                image.movedim(1, -1).to(torch.float32), float(sigma_rgb), out=mem[..., len(axes):]
            )
        else:
            feats[:, len(axes):] = image.to(torch.float32) / float(sigma_rgb)
    return mem.movedim(-1, 1) if pixel_major else feats


def default_backend(device: torch.device) -> str:
    """The backend used for tensors on ``device``: numba on CPU, torch elsewhere."""
    if device.type == "cpu":
        try:
            importlib.import_module(BACKENDS["numba"])
        except ImportError:
            return "torch"
        return "numba"
    return "torch"


_check_finite = check_finite  # (the name used before rloss.checks)


def _backend_module(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)} or None, got {name!r}")
    return importlib.import_module(BACKENDS[name])


class _FilterFunction(torch.autograd.Function):
    """``W v`` with backward ``W g``; no gradient reaches the features.

    Like the rloss reference, the backward treats the lattice operator as
    symmetric. It nearly is: the blur passes do not commute where lattice
    vertices are missing, so ``W - W^T`` is a few percent of ``W`` in
    Frobenius norm, and ``<W a, b>`` matches ``<a, W b>`` to about 1e-3
    (relative) for non-negative ``a, b`` such as probabilities. The backward
    goes through this function again, so higher derivatives work.
    """

    @staticmethod
    def forward(ctx: Any, lattice: Lattice, values: Tensor) -> Tensor:  # type: ignore[override]
        ctx.lattice = lattice
        return lattice._apply(values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        # through apply() again, so that double backward works (the map is linear)
        return None, _FilterFunction.apply(ctx.lattice, grad)


class Lattice:
    """A permutohedral lattice built once over a batch, filtering many times.

    The whole batch is one lattice (the image index is part of each vertex
    key), so one ``filter`` call serves every image and every channel.

    ``filter`` is linear in ``values`` and differentiable with respect to
    them: the backward pass filters the incoming gradient, treating W as
    symmetric as the reference does (the lattice is symmetric up to ~1e-3 in
    ``<W a, b>`` vs ``<a, W b>``; the exact backend is exactly symmetric).
    No gradient flows to the features: the lattice geometry is
    piecewise constant in them. Passing features that require grad raises
    ``ValueError`` rather than silently dropping that gradient.

    Args:
        features: ``(N, d, H, W)``, ``(N, d, D, H, W)`` (a volume; any number
            of spatial axes works) or ``(N, d, P)`` features, e.g. from
            :func:`bilateral_features`. Computed in float32.
        backend: ``"torch"`` (portable, CPU/CUDA), ``"numba"`` (fast CPU),
            ``"exact"`` (brute force float64, quadratic cost) or ``None`` to
            pick by device (numba on CPU, torch elsewhere).
        options: :class:`BuildOptions` (how to build; never what is computed),
            ``None`` for the defaults.
    """

    def __init__(
        self, features: Tensor, backend: str | None = None, *, options: BuildOptions | None = None
    ) -> None:
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.dim() < 3:
            raise ValueError(
                "features must have shape (N, d, H, W), (N, d, D, H, W) or (N, d, P), "
                f"got {tuple(features.shape)}"
            )
        check_float_dtype("features", features)
        if features.requires_grad:
            raise ValueError(
                "features require grad, but the lattice gives no gradient to its features "
                "(the lattice is piecewise constant in them); pass features.detach()"
            )
        if features.numel() == 0 or features.shape[0] == 0:
            raise ValueError(f"features must be non-empty, got shape {tuple(features.shape)}")
        if options is not None and not isinstance(options, BuildOptions):
            raise TypeError(f"options must be a BuildOptions or None, got {type(options).__name__}")
        self.options = DEFAULT_OPTIONS if options is None else options
        if features.device.type == "cpu":
            _alloc.ensure()  # once per process: large freed blocks stay mapped (rloss._alloc)
        self.backend = backend if backend is not None else default_backend(features.device)
        module = _backend_module(self.backend)
        if not getattr(module, "CHECKS_FINITE", False):
            _check_finite("features", features)
        self.batch = int(features.shape[0])
        self.dim = int(features.shape[1])
        self.spatial = tuple(int(s) for s in features.shape[2:])
        self.num_pixels = 1
        for s in self.spatial:
            self.num_pixels *= s
        self.device = features.device
        flat = features.detach().reshape(self.batch, self.dim, self.num_pixels)
        # (N, P, d): each pixel's feature vector contiguous
        self._impl = module.build(flat.to(torch.float32).transpose(1, 2).contiguous(), self.options)

    def __repr__(self) -> str:
        return (
            f"Lattice(batch={self.batch}, dim={self.dim}, spatial={self.spatial}, "
            f"backend={self.backend!r})"
        )

    def _check_values(self, values: Tensor) -> None:
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        want = (self.batch, "C", *self.spatial)
        if values.dim() != 2 + len(self.spatial) or values.shape[0] != self.batch or tuple(
            values.shape[2:]
        ) != self.spatial:
            raise ValueError(
                f"values has shape {tuple(values.shape)} but the lattice was built for "
                f"features of spatial shape {self.spatial} and batch {self.batch}: "
                f"want {want}"
            )
        if values.shape[1] == 0:
            raise ValueError(f"values must have at least one channel, got {tuple(values.shape)}")
        check_float_dtype("values", values)
        if values.device != self.device:
            raise ValueError(
                f"values are on {values.device} but the lattice was built on {self.device}"
            )

    def _apply(self, values: Tensor) -> Tensor:
        """Filter without autograd bookkeeping; shape- and dtype-preserving."""
        shape = values.shape
        flat = values.reshape(self.batch, shape[1], self.num_pixels)
        compute = torch.float64 if flat.dtype == torch.float64 else torch.float32
        out = self._impl.apply(flat.to(compute).contiguous())
        return out.to(values.dtype).reshape(shape)

    def filter(self, values: Tensor, *, check_finite: bool = True) -> Tensor:
        """Filter ``values`` with the Gaussian kernel over this lattice's features.

        Args:
            values: ``(N, C, H, W)``, ``(N, C, D, H, W)`` or ``(N, C, P)``
                (matching the features' layout), any float dtype; half precision
                is computed in float32.
                All C channels are filtered in one pass.
            check_finite: raise ``ValueError`` when ``values`` has NaN/Inf.

        Returns:
            Tensor of the same shape and dtype as ``values``.
        """
        self._check_values(values)
        if check_finite:
            _check_finite("values", values)
        return _FilterFunction.apply(self, values)

    def quadratic_form(
        self,
        x: Tensor,
        r: Tensor | None = None,
        *,
        normalize: bool = False,
        grad_scale: float | None = None,
        stats: bool = False,
    ) -> QuadraticForm:
        r"""The quadratic form ``Σ_k s_kᵀ W (r − s_k)``, ``s_k = x_k ⊙ r``, and its gradient.

        Per image ``n``, from one filtering pass over ``[s, r]`` (``K + 1``
        channels)::

            value_n  = Σ_k s_nkᵀ W (r_n − s_nk)           (÷ volume_n when normalize)
            volume_n = r_nᵀ W r_n                          (floored at the dtype's tiny)
            grad     = grad_scale · r ⊙ (W r − 2 W s_k)    (÷ volume_n when normalize)

        ``grad`` is ``grad_scale · ∂value/∂x`` with ``W`` treated as symmetric,
        as :meth:`filter`'s backward does. The numba backend fuses the whole
        computation into its splat and slice kernels (no ``(N, K + 1, ...)``
        intermediate is formed); the torch backend runs one filtering pass of
        its own around it (value and volume from the lattice vertices, the
        gradient written straight from the slice); the exact backend computes
        it from :meth:`filter`'s output. Not differentiable itself: the caller wires
        ``grad`` into autograd (see :func:`rloss.losses.densecrf_loss`, the
        relaxed Potts energy with ``x`` = probabilities and ``r`` = roi).

        Args:
            x: ``(N, K, *spatial)`` float32 or float64 values.
            r: ``(N, *spatial)`` weights of the same dtype, or ``None`` (ones).
            normalize: divide each image's value (and gradient) by ``rᵀ W r``.
            grad_scale: the factor of ``grad``; ``None`` computes no gradient.
            stats: also return :class:`ValueStats` of ``x`` (reads values back
                to the host; free on the numba backend, which gathers them in
                its splat).

        Returns:
            :class:`QuadraticForm` ``(value, volume, grad, stats)``.

        Example:
            >>> import torch
            >>> from rloss.lattice import Lattice
            >>> lat = Lattice(torch.rand(1, 5, 6, 6) * 3, backend="exact")
            >>> x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
            >>> q = lat.quadratic_form(x, grad_scale=1.0)
            >>> wx = lat.filter(x)
            >>> w1 = lat.filter(torch.ones(1, 1, 6, 6, dtype=torch.float64))
            >>> bool(torch.isclose(q.value, (x * (w1 - wx)).sum()).all())
            True
        """
        self._check_values(x)
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x must be float32 or float64, got {x.dtype}")
        n, k = x.shape[:2]
        if r is None:
            r = torch.ones(n, *self.spatial, dtype=x.dtype, device=x.device)
        elif (
            not isinstance(r, Tensor) or tuple(r.shape) != (n, *self.spatial) or r.dtype != x.dtype
        ):
            got = f"{tuple(r.shape)} {r.dtype}" if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"r must have shape {(n, *self.spatial)} and dtype {x.dtype}, got {got}"
            )
        fused = getattr(self._impl, "quadratic_form", None)
        if fused is not None:
            value, volume, grad, raw = fused(
                x.reshape(n, k, self.num_pixels),
                r.reshape(n, self.num_pixels),
                bool(normalize),
                grad_scale,
            )
            grad = None if grad is None else grad.reshape(x.shape)
            found = None
            if stats:  # a backend that gathers no statistics in its pass returns None
                found = _value_stats(x, r) if raw is None else ValueStats(*raw)
            return QuadraticForm(value, volume, grad, found)
        found = _value_stats(x, r) if stats else None  # before the in-place work below
        value, volume, grad = self._quadratic_by_filter(x, r, bool(normalize), grad_scale)
        return QuadraticForm(value, volume, grad, found)

    def _quadratic_by_filter(
        self, x: Tensor, r: Tensor, normalize: bool, grad_scale: float | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`quadratic_form` from :meth:`filter`'s output (any backend)."""
        n, k = x.shape[:2]
        rr = r.unsqueeze(1)
        # [s, r] written straight into the filter input (no torch.cat temporary)
        vals = torch.empty(n, k + 1, *self.spatial, dtype=x.dtype, device=x.device)
        s = torch.mul(x, rr, out=vals[:, :k])
        vals[:, k] = r
        filt = self._apply(vals)  # a fresh tensor owned here: reused in place below
        ws, wr = filt[:, :k], filt[:, k:]
        diff = torch.sub(wr, ws, out=ws)  # W r − W s, in place of W s
        s_rows, d_rows = s.reshape(n, -1), diff.reshape(n, -1)
        # one BLAS dot per image (bmm/einsum take a slow path for these shapes)
        value = torch.stack([torch.dot(s_rows[i], d_rows[i]) for i in range(n)])
        coef = torch.full((n,), float(grad_scale or 0.0), dtype=x.dtype, device=x.device)
        if normalize:
            volume = (rr * wr).reshape(n, -1).sum(1).clamp_min(torch.finfo(x.dtype).tiny)
            value = value / volume
            coef = coef / volume
        else:
            volume = torch.ones(n, dtype=x.dtype, device=x.device)
        if grad_scale is None:
            return value, volume, None
        # W r − 2 W s = 2 diff − W r, in place (a view of ``filt``)
        scale = rr * coef.view(n, *([1] * (rr.dim() - 1)))
        grad = diff.mul_(2.0).sub_(wr).mul_(scale)
        return value, volume, grad

    def potts(
        self,
        probs: Tensor,
        roi: Tensor | None = None,
        *,
        normalize: bool = False,
        grad_scale: float | None = None,
        probs_stats: bool = False,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, ValueStats]:
        """Deprecated: :meth:`quadratic_form` (the Potts meaning lives in :mod:`rloss.losses`)."""
        warnings.warn(
            "Lattice.potts is deprecated; use Lattice.quadratic_form(probs, roi, ...) "
            "(or rloss.losses.densecrf_loss(..., lattice=lat) for the loss)",
            DeprecationWarning,
            stacklevel=2,
        )
        q = self.quadratic_form(
            probs, roi, normalize=normalize, grad_scale=grad_scale, stats=probs_stats
        )
        return (q.value, q.grad, q.stats) if probs_stats else (q.value, q.grad)


def _value_stats(x: Tensor, r: Tensor) -> ValueStats:
    """:class:`ValueStats` with torch reductions (backends without a fused splat).

    Three passes over ``x`` and one read-back: per-pixel ``amin``, ``amax`` and sum
    over the channels (NaN propagates into both extremes, an infinity shows
    in one, so ``finite`` needs no pass of its own), then small reductions
    over the ``(N, *spatial)`` pixels.
    """
    xd = x.detach()
    inside = r.detach() > 0
    # amin and amax: aminmax over a non-innermost dim is ~10x slower (torch 2.x CPU)
    lo, hi = xd.amin(1), xd.amax(1)
    err = (xd.sum(1) - 1.0).abs_()
    finite = torch.isfinite(lo).all() & torch.isfinite(hi).all()
    inf = torch.tensor(float("inf"), dtype=lo.dtype, device=lo.device)
    lo_in = torch.where(inside, lo, inf).amin()
    hi_in = torch.where(inside, hi, -inf).amax()
    worst = torch.where(inside, err, 0.0).amax()
    lo_f, hi_f, worst_f, finite_f = torch.stack(
        [lo_in, hi_in, worst, finite.to(lo.dtype)]
    ).tolist()
    return ValueStats(lo_f, hi_f, worst_f, bool(finite_f))


def gaussian_filter(features: Tensor, values: Tensor, backend: str | None = None) -> Tensor:
    """One-off filtering: ``Lattice(features, backend).filter(values)``.

    Args:
        features: ``(N, d, H, W)`` or ``(N, d, P)`` features.
        values: ``(N, C, H, W)`` or ``(N, C, P)`` values on the same device.
        backend: see :class:`Lattice`.

    Returns:
        Filtered values, same shape and dtype as ``values``.
    """
    if isinstance(features, Tensor) and isinstance(values, Tensor):
        if features.device != values.device:
            raise ValueError(
                f"features are on {features.device} but values are on {values.device}"
            )
        if features.dim() == values.dim() and (
            features.shape[0] != values.shape[0] or features.shape[2:] != values.shape[2:]
        ):
            raise ValueError(
                f"features have shape {tuple(features.shape)} and values "
                f"{tuple(values.shape)}: batch and spatial sizes must match"
            )
    return Lattice(features, backend=backend).filter(values)


def release_memory() -> int:
    """Free the idle scratch memory the numba backend keeps between calls.

    Large arrays of the numba backend (lattice entries, hash tables, lattice
    rows, gradients) and CPU features (:func:`features_from_image`) are reused
    from call to call instead of being allocated fresh (fresh pages cost page
    faults); at most 1 GiB of memory no array refers to any more is kept. Call
    this after the last loss evaluation of a long job to give that memory back.

    Returns:
        The number of bytes released.
    """
    freed = _pool.idle_bytes()
    _pool.clear()
    return freed
