r"""DenseCRF loss: the relaxed Potts energy over a fully connected bilateral graph.

Tang, Perazzi, Djelouah, Ben Ayed, Schroers, Boykov, "On Regularized Losses
for Weakly-supervised CNN Segmentation", ECCV 2018.

With ``S̃ = S ⊙ roi`` (softmax ``S`` masked by the region of interest) and the
bilateral Gaussian kernel ``W_ij = exp(-|p_i - p_j|²/2σ_xy² - |I_i - I_j|²/2σ_rgb²)``
approximated by the permutohedral lattice (:mod:`rloss.lattice`)::

    E = (1/N) Σ_k S̃_kᵀ W (roi − S̃_k)                          (N = batch size)
      = (1/N) Σ_ij W_ij roi_i roi_j (1 − S_i · S_j)   ≥ 0

``E`` is the expected affinity-weighted number of pixel pairs that get
different labels. The rloss reference reports ``−(1/N) Σ_k S̃_kᵀ W S̃_k``
instead; the two differ by ``(1/N) Σ_k S̃_kᵀ W roi``, whose gradient with
respect to ``S_ik`` is ``roi_i (W roi)_i / N`` for every class k, which the
softmax removes. Training is identical; see ``docs/losses.md``.

The lattice supplies the generic fused primitive
:meth:`~rloss.lattice.Lattice.quadratic_form` (``Σ_k s_kᵀ W (r − s_k)`` with
``s = x ⊙ r``, its gradient and raw value statistics); this module gives it
the Potts meaning (``x`` = probabilities, ``r`` = roi, the ``1/N`` and the
weight) and reads the statistics as probability checks
(:func:`rloss.checks.check_probs_stats`), before anything enters autograd.
:func:`densecrf_loss` is the one entry point, with ``lattice=`` for a lattice
built once and reused (iterative optimisation over a fixed image, see
:class:`rloss.segment.PottsOnImage`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rloss import checks as _checks
from rloss._threads import torch_threads
from rloss.lattice import Lattice, features_from_image, position_sigmas
from rloss.losses.composite import TermInputs

__all__ = [
    "DEFAULT_SIGMA_RGB",
    "DEFAULT_SIGMA_XY",
    "DEFAULT_WEIGHT",
    "DenseCRFLoss",
    "densecrf_loss",
]

#: The rloss reference's DenseCRF loss weight (VOC, with sigma_rgb=15, sigma_xy=100).
DEFAULT_WEIGHT: float = 2e-9
#: The rloss reference's colour bandwidth, in 0..255 intensity units.
DEFAULT_SIGMA_RGB: float = 15.0
#: The rloss reference's spatial bandwidth, in pixels of the full-resolution input.
DEFAULT_SIGMA_XY: float = 100.0


def prepare_pairwise(
    image: Tensor,
    probs: Tensor,
    roi: Tensor | None,
    sigma_rgb: float,
    sigma_xy: float,
    scale_factor: float | tuple[float, ...],
    backend: str | None,
    check_probs_values: bool = True,
    spacing: tuple[float, ...] | None = None,
) -> tuple[Lattice, Tensor, Tensor]:
    """Validate, cast, downscale and build the lattice shared by the pairwise losses.

    Must run with autocast disabled. Returns ``(lattice, probs_c, roi_c)`` where
    ``probs_c`` ``(N, K, *spatial)`` is in the compute dtype (float64 for float64
    ``probs``, float32 otherwise) and still attached to ``probs``'s graph, and
    ``roi_c`` ``(N, *spatial)`` is detached, same dtype. Images are 4-D
    ``(N, C, H, W)``, volumes 5-D ``(N, C, D, H, W)`` (see :func:`densecrf_loss`).
    With ``check_probs_values=False`` only the shape and dtype of ``probs`` are
    checked here (the caller validates the values it passes to the lattice).
    """
    probs = _checks.check_float_tensor("probs", probs, (4, 5), "(N, K, H, W) or (N, K, D, H, W)")
    image = _checks.check_float_tensor("image", image, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
    _checks.check_same_device(("probs", probs), ("image", image))
    _checks.check_spatial_match(image, probs)
    roi_t = _checks.check_roi(roi, probs)
    _checks.check_image(image)
    _checks.check_probs(probs, roi_t, values=check_probs_values)
    sigma_rgb = _checks.check_positive("sigma_rgb", sigma_rgb)
    sigma_xy = _checks.check_positive("sigma_xy", sigma_xy)
    nd = probs.dim() - 2
    spacing = _checks.check_spacing(spacing, nd)
    scale = _checks.check_scale_factor(scale_factor, nd)
    scales = (scale,) * nd if isinstance(scale, float) else scale

    sizes = tuple(int(v) for v in probs.shape[2:])
    resize = any(f != 1.0 for f in scales)
    if resize:
        # the size F.interpolate gives (floor of size * factor): refuse an empty grid up front
        out = tuple(math.floor(n * f) for n, f in zip(sizes, scales))
        if min(out) < 1:
            hint = (
                f"; for a volume of {sizes[0]} slice(s) resize in-plane only, e.g. "
                f"scale_factor=(1, {scales[1]:g}, {scales[2]:g})"
                if nd == 3 and out[0] < 1 else ""
            )
            shown = f"{scale:g}" if isinstance(scale, float) else str(scale)
            raise ValueError(
                f"scale_factor={shown} shrinks probs of shape {tuple(probs.shape)} "
                f"to {'x'.join(map(str, out))} {'voxels' if nd == 3 else 'pixels'}; want "
                f"scale_factor >= {1.0 / min(sizes):.3g} for this size (the loss resizes "
                f"image, probs and roi by scale_factor){hint}"
            )
    dtype = _checks.compute_dtype(probs)
    probs_c = probs.to(dtype)
    image_c = image.detach().to(dtype)
    roi_c = roi_t.detach().to(dtype)
    if resize:
        image_c, probs_c, roi_c = _resize(image_c, probs_c, roi_c, scale, scales)
    sigmas: list[float | None] = list(
        position_sigmas(sigma_xy, nd, spacing=spacing, scale=scales)
    )
    if nd == 3:
        # an axis of extent 1 has a constant coordinate, which changes no Gaussian: left
        # out, so that a one-slice volume gives the 2-D features (and loss) of its slice
        sigmas = [None if n == 1 else s for n, s in zip(probs_c.shape[2:], sigmas)]
    feats = features_from_image(image_c, sigma_rgb, tuple(sigmas))
    return Lattice(feats, backend=backend), probs_c, roi_c


def _resize(
    image: Tensor,
    probs: Tensor,
    roi: Tensor,
    scale: float | tuple[float, ...],
    scales: tuple[float, ...],
) -> tuple[Tensor, Tensor, Tensor]:
    """Exactly as the reference: nearest for image and roi, (bi/tri)linear for probs.

    A volume resized in-plane only (``scales[0] == 1``) is resized slice-wise with
    the 2-D kernels, so that a one-slice volume matches its slice bit for bit.
    """
    if len(scales) == 3 and scales[0] == 1.0:
        n, _, d, h, w = probs.shape
        flat = lambda t: t.movedim(2, 1).reshape(n * d, t.shape[1], h, w)  # noqa: E731
        inplane = scales[1] if scales[1] == scales[2] else scales[1:]
        img2, pr2, roi2 = _resize(flat(image), flat(probs), flat(roi.unsqueeze(1)).squeeze(1),
                                  inplane, scales[1:])
        back = lambda t: t.reshape(n, d, t.shape[1], *t.shape[2:]).movedim(1, 2)  # noqa: E731
        return back(img2), back(pr2), back(roi2.unsqueeze(1)).squeeze(1)
    mode = "bilinear" if probs.dim() == 4 else "trilinear"
    image = F.interpolate(image, scale_factor=scale, mode="nearest")
    probs = F.interpolate(probs, scale_factor=scale, mode=mode, align_corners=False)
    roi = F.interpolate(roi.unsqueeze(1), scale_factor=scale, mode="nearest").squeeze(1)
    return image, probs, roi


class _PrecomputedGradient(torch.autograd.Function):
    """``scale · Σ_n value_n`` whose gradient in ``probs`` was computed in the same pass.

    The energy and its gradient come from one fused lattice call
    (:meth:`~rloss.lattice.Lattice.quadratic_form`, outside autograd); this
    function only wires that gradient in. ``W`` is symmetric, so
    ``d(S̃ᵀWS̃)/dS̃ = 2 W S̃``: no second filtering is needed in backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, probs: Tensor, per_image: Tensor, grad: Tensor, scale: float
    ) -> Tensor:
        ctx.save_for_backward(grad)
        return per_image.sum() * scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # The usual case, a loss backpropagated with gradient 1 on the CPU: hand the
        # saved gradient on as it is (autograd never modifies a tensor another
        # reference holds) instead of a full-size multiply. Reading grad_out is free
        # on the CPU; elsewhere it would synchronise with the host, so multiply.
        if grad_out.device.type == "cpu" and grad_out.dim() == 0 and float(grad_out) == 1.0:
            return grad, None, None, None
        return grad_out * grad, None, None, None


def _potts_on_lattice(
    lattice: Lattice,
    probs_c: Tensor,
    roi_c: Tensor,
    normalize: bool,
    weight: float,
    check_dtype: torch.dtype | None,
) -> Tensor:
    """``weight · (1/N) Σ_n E_n`` on a built lattice; ``probs_c``/``roi_c`` in the compute dtype.

    ``check_dtype``: validate ``probs_c`` as probabilities of that (original)
    dtype from the value statistics the lattice gathers while reading them
    (CPU only: reading them back is free there); ``None``: no value checks.
    """
    n, k = probs_c.shape[:2]
    want_grad = probs_c.requires_grad and torch.is_grad_enabled()
    # ``weight`` goes into the gradient here, so that the incoming gradient of a
    # plain loss is exactly 1 and backward needs no multiply
    q = lattice.quadratic_form(
        probs_c.detach(),
        roi_c,
        normalize=normalize,
        grad_scale=weight / n if want_grad else None,
        stats=check_dtype is not None,
    )
    if q.stats is not None:
        _checks.check_probs_stats(
            q.stats.min, q.stats.max, q.stats.sum_error, q.stats.finite, check_dtype, k
        )
    if not want_grad:
        return q.value.sum() * (weight / n)
    return _PrecomputedGradient.apply(probs_c, q.value, q.grad, weight / n)


def lattice_energy(
    lattice: Lattice,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    kind: str = "potts",
    normalize: bool = False,
    weight: float = 1.0,
    check_dtype: torch.dtype | None = None,
) -> Tensor:
    """Deprecated: ``densecrf_loss(None, probs, roi, lattice=lattice, ...)``."""
    warnings.warn(
        "lattice_energy is deprecated; use densecrf_loss(None, probs, roi, lattice=lattice, "
        "weight=..., normalize=...)",
        DeprecationWarning,
        stacklevel=2,
    )
    if kind != "potts":
        raise ValueError(f"lattice_energy: kind must be 'potts', got {kind!r}")
    return densecrf_loss(None, probs, roi, weight=weight, normalize=normalize, lattice=lattice)


def pairwise_energy(
    image: Tensor,
    probs: Tensor,
    roi: Tensor | None,
    *,
    kind: str,
    sigma_rgb: float,
    sigma_xy: float,
    scale_factor: float,
    normalize: bool,
    backend: str | None,
    weight: float = 1.0,
) -> Tensor:
    """Deprecated: :func:`densecrf_loss` (``kind="potts"``) or :func:`rloss.losses.ncut_loss`."""
    warnings.warn(
        "pairwise_energy is deprecated; use densecrf_loss or ncut_loss",
        DeprecationWarning,
        stacklevel=2,
    )
    common = dict(sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale_factor=scale_factor,
                  backend=backend, weight=weight)  # fmt: skip
    if kind == "ncut":
        from rloss.losses.ncut import ncut_loss

        return ncut_loss(image, probs, roi, **common)
    if kind != "potts":
        raise ValueError(f"kind must be 'potts' or 'ncut', got {kind!r}")
    return densecrf_loss(image, probs, roi, normalize=normalize, **common)


def densecrf_loss(
    image: Tensor,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    weight: float = DEFAULT_WEIGHT,
    sigma_rgb: float = DEFAULT_SIGMA_RGB,
    sigma_xy: float = DEFAULT_SIGMA_XY,
    scale_factor: float | tuple[float, ...] = 1.0,
    normalize: bool = False,
    backend: str | None = None,
    lattice: Lattice | None = None,
    spacing: tuple[float, ...] | None = None,
) -> Tensor:
    r"""DenseCRF (relaxed Potts) loss ``weight · E``, ``E = (1/N) Σ_k S̃_kᵀ W (roi − S̃_k) ≥ 0``.

    ``S̃ = probs ⊙ roi``; ``W`` is the bilateral Gaussian kernel over
    ``(x/σ_xy, y/σ_xy, I/σ_rgb)`` computed by the permutohedral lattice
    (which, like the rloss reference, returns about 0.5–0.7 times the exact
    Gaussian sum, so the reference's weights carry over). ``N`` is the batch
    size. The gradient with respect to ``probs`` equals the reference's
    ``−2 W S̃ / N · roi`` plus ``W roi / N · roi``, identical for every class
    at a pixel (removed by the softmax); see ``docs/losses.md``.

    One lattice is built per call and ``[S̃, roi]`` is filtered in one pass
    with ``K + 1`` channels; the backward pass reuses that result (W is
    symmetric), so no second filtering happens. Computation is float32
    (float64 for float64 ``probs``) with autocast disabled; half inputs are
    accepted. No gradient flows to ``image`` or ``roi``.

    Reference: Tang et al., "On Regularized Losses for Weakly-supervised CNN
    Segmentation", ECCV 2018.

    **Volumes.** 5-D inputs are volumes: ``image`` ``(N, C, D, H, W)``,
    ``probs`` ``(N, K, D, H, W)``, ``roi`` ``(N, D, H, W)``, and ``W`` is the
    Gaussian over ``(x, y, z, I)`` (features of dimension 3 + C: 4 for MRI). A
    voxel at index ``(z, y, x)`` sits at ``(z·sd, y·sh, x·sw)`` with
    ``spacing=(sd, sh, sw)`` (``sigma_xy`` then in those units, e.g. mm), at
    ``(z, y, x)`` without it (``sigma_xy`` in voxels). A spatial axis of extent 1
    carries no position feature (its coordinate is constant), so the loss of a
    one-slice volume is the 2-D loss of that slice.

    Args:
        image: ``(N, C, H, W)`` float guidance image, raw intensities in
            0..255 (RGB, grayscale or any number of channels), or a volume
            ``(N, C, D, H, W)``.
        probs: ``(N, K, H, W)`` (``(N, K, D, H, W)`` for a volume) float softmax
            probabilities (sum to 1 over K wherever ``roi > 0``).
        roi: ``(N, H, W)`` (``(N, D, H, W)``) float or bool region of interest
            in 0..1 (1 where the loss applies, 0 on padding); ``None`` means all ones.
        weight: loss weight λ ≥ 0 (reference: 2e-9 with ``normalize=False``).
        sigma_rgb: colour bandwidth in 0..255 units (reference: 15).
        sigma_xy: spatial bandwidth in pixels (voxels) of the *input*
            resolution, or in the units of ``spacing`` (reference: 100); it
            follows ``scale_factor`` (stays the same physical width).
        scale_factor: the inputs are resized by this factor before the loss
            (``F.interpolate``: nearest for image and roi, bilinear (trilinear
            for volumes) with ``align_corners=False`` for probs), as the
            reference does (0.5 in its recipes). A number resizes every
            spatial axis; a tuple gives one factor per axis, e.g.
            ``(1, 0.5, 0.5)`` to resize a volume in-plane only (then slice by
            slice, with the 2-D kernels).
        normalize: divide each image's energy by ``roiᵀ W roi`` = (roi pixel
            count) × (mean kernel mass ``(W roi)_i`` over roi pixels). The
            normalised energy is the affinity-weighted fraction of pixel pairs
            labelled differently, in 0..1 whatever the resolution, sigmas,
            lattice gain or (for volumes) number of slices, so a weight of
            order 0.1 is sensible. It matches the
            unnormalised loss with weight ``w_ref`` when
            ``weight = w_ref · roiᵀ W roi`` (roiᵀ W roi is about 3e7–7e7 on
            513×513 VOC crops at scale 0.5 with σ = 15/100, so ``w_ref=2e-9``
            corresponds to ``weight`` ≈ 0.06–0.15; see ``docs/losses.md``).
        backend: lattice backend (``"torch"``, ``"numba"``, ``"exact"``) or
            ``None`` for the device default.
        lattice: a :class:`~rloss.lattice.Lattice` built once over the
            bilateral features of the image at the resolution of ``probs``
            (``Lattice(bilateral_features(image, sigma_rgb, sigma_xy))``), to
            reuse over many calls on the same image. Then ``image`` may be
            ``None`` and is not read, ``sigma_rgb``, ``sigma_xy`` and
            ``backend`` are the lattice's, and ``scale_factor`` must be 1.
        spacing: voxel size per spatial axis, ``(sd, sh, sw)`` for a volume
            (``(sh, sw)`` for an image), > 0; ``None``: 1 (``sigma_xy`` in voxels).

    Returns:
        0-dim tensor, float32 (float64 for float64 ``probs``), ``≥ 0``.

    Raises:
        ValueError: on bad input, naming the argument (probabilities that are
            not probabilities where ``roi > 0``, an image not in 0..255, a
            ``scale_factor`` that leaves no pixel, ...).

    Example:
        >>> import torch
        >>> from rloss.losses import densecrf_loss
        >>> image = torch.rand(2, 3, 32, 32) * 255
        >>> logits = torch.randn(2, 4, 32, 32, requires_grad=True)
        >>> loss = densecrf_loss(image, logits.softmax(1), weight=2e-9, sigma_xy=100.0)
        >>> loss.backward()

        A volume (1-channel MRI, slices 6 mm apart, 1.5 mm pixels, sigma in mm):

        >>> vol = torch.rand(1, 1, 4, 24, 24) * 255
        >>> vprobs = torch.randn(1, 4, 4, 24, 24).softmax(1)
        >>> e = densecrf_loss(vol, vprobs, weight=1.0, sigma_rgb=15.0, sigma_xy=9.0,
        ...                   spacing=(6.0, 1.5, 1.5), normalize=True)
        >>> 0.0 <= float(e) <= 1.0
        True

        A lattice built once, reused (the same value):

        >>> from rloss.lattice import Lattice, bilateral_features
        >>> lat = Lattice(bilateral_features(image, 15.0, 100.0))
        >>> again = densecrf_loss(None, logits.softmax(1), weight=2e-9, lattice=lat)
        >>> bool(torch.isclose(again, loss))
        True
    """
    weight = _checks.check_weight("weight", weight)
    device = probs.device if isinstance(probs, Tensor) else torch.device("cpu")
    # On the CPU the probability checks ride on the lattice's own pass over probs
    # (the values it sees: after scale_factor's bilinear resize, which keeps
    # probabilities probabilities and propagates NaN/Inf)
    deferred = device.type == "cpu"
    if lattice is not None:
        if spacing is not None:
            raise ValueError("spacing must be None with a prebuilt lattice (it is the lattice's)")
        return _densecrf_on_lattice(lattice, probs, roi, weight, normalize, scale_factor)
    # on the CPU torch only does small memory-bound work here (checks, features) and
    # does it on one thread: on a busy machine each parallel torch op can wait for its
    # OpenMP worker (the lattice kernels run their tasks on torch's OpenMP team,
    # rloss.lattice._numba._team, or else on rloss._threads.run_tasks)
    with _checks.no_autocast(device), torch_threads(1 if deferred else None,
                                                     remember_caller=True):
        lat, probs_c, roi_c = prepare_pairwise(
            image, probs, roi, sigma_rgb, sigma_xy, scale_factor, backend, not deferred,
            spacing=spacing,
        )
        return _potts_on_lattice(
            lat, probs_c, roi_c, bool(normalize), weight, probs.dtype if deferred else None
        )


def _densecrf_on_lattice(
    lattice: Lattice,
    probs: Tensor,
    roi: Tensor | None,
    weight: float,
    normalize: bool,
    scale_factor: float | tuple[float, ...],
) -> Tensor:
    """:func:`densecrf_loss` on a prebuilt lattice (``probs`` at the lattice's resolution)."""
    if not isinstance(lattice, Lattice):
        raise TypeError(f"lattice must be a rloss.lattice.Lattice, got {type(lattice).__name__}")
    sf = _checks.check_scale_factor(scale_factor)
    if any(f != 1.0 for f in ((sf,) if isinstance(sf, float) else sf)):
        raise ValueError(
            f"scale_factor must be 1 with a prebuilt lattice (got {scale_factor}): build the "
            "lattice at the resolution of probs instead"
        )
    probs = _checks.check_float_tensor("probs", probs, (4, 5), "(N, K, H, W) or (N, K, D, H, W)")
    want = (lattice.batch, *lattice.spatial)
    if (probs.shape[0], *probs.shape[2:]) != want:
        raise ValueError(
            f"probs has shape {tuple(probs.shape)} but the lattice was built for batch "
            f"{lattice.batch} and spatial shape {lattice.spatial}"
        )
    roi_t = _checks.check_roi(roi, probs)
    deferred = probs.device.type == "cpu"
    dtype = _checks.compute_dtype(probs)
    with _checks.no_autocast(probs.device):
        return _potts_on_lattice(
            lattice,
            probs.to(dtype),
            roi_t.detach().to(dtype),
            bool(normalize),
            weight,
            probs.dtype if deferred else None,
        )


class DenseCRFLoss(nn.Module):
    r"""Module form of :func:`densecrf_loss`: ``weight · (1/N) Σ_k S̃_kᵀ W (roi − S̃_k)``.

    Holds only hyper-parameters; see :func:`densecrf_loss` for the formula,
    shapes and the relation to the rloss reference (Tang et al., ECCV 2018).

    Args:
        weight: loss weight (reference 2e-9).
        sigma_rgb: colour bandwidth, 0..255 units (reference 15).
        sigma_xy: spatial bandwidth in input pixels (reference 100).
        scale_factor: resize factor applied before the loss (reference 0.5), a
            number or one per spatial axis.
        normalize: divide by ``roiᵀ W roi`` per image (weight ≈ 0.1 matches 2e-9).
        backend: lattice backend or ``None`` for the device default.
        spacing: voxel size per spatial axis for volumes (``sigma_xy`` then in
            its units), or ``None``.

    Shape:
        - image: ``(N, C, H, W)`` float, 0..255 (volumes: ``(N, C, D, H, W)``).
        - probs: ``(N, K, H, W)`` float softmax (volumes: ``(N, K, D, H, W)``).
        - roi: ``(N, H, W)`` (volumes: ``(N, D, H, W)``) or ``None``.
        - output: scalar.

    Example:
        >>> import torch
        >>> from rloss.losses import DenseCRFLoss
        >>> crf = DenseCRFLoss(weight=2e-9, sigma_rgb=15.0, sigma_xy=100.0, scale_factor=0.5)
        >>> image = torch.rand(1, 3, 64, 64) * 255
        >>> probs = torch.randn(1, 21, 64, 64).softmax(1)
        >>> float(crf(image, probs)) >= 0
        True
    """

    #: How :class:`~rloss.losses.CompositeLoss` feeds this term.
    inputs: ClassVar[TermInputs] = TermInputs.IMAGE_PROBS_ROI

    def __init__(
        self,
        weight: float = DEFAULT_WEIGHT,
        sigma_rgb: float = DEFAULT_SIGMA_RGB,
        sigma_xy: float = DEFAULT_SIGMA_XY,
        scale_factor: float | tuple[float, ...] = 1.0,
        normalize: bool = False,
        backend: str | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.weight = _checks.check_weight("weight", weight)
        self.sigma_rgb = _checks.check_positive("sigma_rgb", sigma_rgb)
        self.sigma_xy = _checks.check_positive("sigma_xy", sigma_xy)
        self.scale_factor = _checks.check_scale_factor(scale_factor)
        self.normalize = bool(normalize)
        self.backend = backend
        self.spacing = _checks.check_spacing(spacing, None)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, sigma_rgb={self.sigma_rgb:g}, sigma_xy={self.sigma_xy:g}, "
            f"scale_factor={_fmt_scale(self.scale_factor)}, normalize={self.normalize}, "
            f"backend={self.backend!r}"
            + ("" if self.spacing is None else f", spacing={self.spacing}")
        )

    def forward(self, image: Tensor, probs: Tensor, roi: Tensor | None = None) -> Tensor:
        return densecrf_loss(
            image,
            probs,
            roi,
            weight=self.weight,
            sigma_rgb=self.sigma_rgb,
            sigma_xy=self.sigma_xy,
            scale_factor=self.scale_factor,
            normalize=self.normalize,
            backend=self.backend,
            spacing=self.spacing,
        )


def _fmt_scale(scale: float | tuple[float, ...]) -> str:
    """``0.5`` or ``(1, 0.5, 0.5)`` (the module reprs)."""
    if isinstance(scale, float):
        return f"{scale:g}"
    return "(" + ", ".join(f"{v:g}" for v in scale) + ")"
