r"""Normalized Cut loss over a fully connected bilateral graph.

Tang, Djelouah, Perazzi, Boykov, Schroers, "Normalized Cut Loss for
Weakly-supervised CNN Segmentation", CVPR 2018.

With ``S̃ = S ⊙ roi``, the lattice kernel ``W`` and the degree ``d = W roi``::

    E_n = Σ_k S̃_kᵀ W (roi − S̃_k) / (dᵀ S̃_k)  =  K − Σ_k S̃_kᵀ W S̃_k / (dᵀ S̃_k)

per image, averaged over the batch. Each class contributes its cut divided by
its volume, in 0..1. ``W roi`` and ``W S̃`` come from one filtering pass with
``K + 1`` channels (:meth:`rloss.lattice.Lattice.filter`), and the backward
pass reuses them (``W`` is symmetric): no second filtering.

Gradient, with ``a_k = S̃_kᵀ W S̃_k`` (association), ``g_k = dᵀ S̃_k`` (degree)
and ``D_k = g_k + ε dᵀroi`` (the floored denominator)::

    ∂E_n/∂S_k = roi ⊙ ( (d − 2 W S̃_k) / D_k − (g_k − a_k) / D_k² · d )
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rloss import checks as _checks
from rloss.lattice import Lattice
from rloss.losses.composite import TermInputs
from rloss.losses.densecrf import _fmt_scale, prepare_pairwise

__all__ = ["NCUT_EPS", "NormalizedCutLoss", "ncut_loss"]

#: Relative floor of the normalised-cut denominators (times the image volume dᵀroi).
NCUT_EPS: float = 1e-8


class _NCutEnergy(torch.autograd.Function):
    """The normalised-cut energy with its analytic backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, probs: Tensor, roi: Tensor, lattice: Lattice, weight: float
    ) -> Tensor:
        # ``weight`` is applied here, not by the caller, so that the incoming
        # gradient of a plain loss is exactly 1 and backward needs no multiply.
        n, k = probs.shape[:2]
        want_grad = ctx.needs_input_grad[0]
        r = roi.unsqueeze(1)
        # [S̃, roi] written straight into the filter input (no torch.cat temporary)
        vals = torch.empty(n, k + 1, *probs.shape[2:], dtype=probs.dtype, device=probs.device)
        s = torch.mul(probs, r, out=vals[:, :k])
        vals[:, k] = roi
        filt = lattice.filter(vals, check_finite=False)
        ws, wr = filt[:, :k], filt[:, k:]
        tiny = torch.finfo(probs.dtype).tiny
        space = tuple(range(2, probs.dim()))  # (2, 3) for images, (2, 3, 4) for volumes
        assoc = (s * ws).sum(dim=space)  # (N, K)  S̃_kᵀ W S̃_k
        degree = (s * wr).sum(dim=space)  # (N, K)  dᵀ S̃_k
        volume = (r * wr).sum(dim=(1, *space))  # (N,)  dᵀ roi
        denom = degree + NCUT_EPS * volume.unsqueeze(1) + tiny
        cut = degree - assoc
        per_image = (cut / denom).sum(dim=1)
        if want_grad:
            bc = (n, k) + (1,) * len(space)
            grad = (wr - 2.0 * ws) / denom.view(bc) - (cut / denom.square()).view(bc) * wr
            ctx.save_for_backward(grad.mul_(r * (weight / n)))
        return per_image.sum() * (weight / n)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        # as the DenseCRF loss: a CPU loss backpropagated with gradient 1 hands the
        # saved gradient on without a multiply (reading grad_out syncs elsewhere)
        if grad_out.device.type == "cpu" and grad_out.dim() == 0 and float(grad_out) == 1.0:
            return grad, None, None, None
        return grad_out * grad, None, None, None


def ncut_loss(
    image: Tensor,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    sigma_rgb: float,
    sigma_xy: float,
    weight: float = 1.0,
    scale_factor: float | tuple[float, ...] = 1.0,
    backend: str | None = None,
    spacing: tuple[float, ...] | None = None,
) -> Tensor:
    r"""Normalized Cut loss ``weight · (1/N) Σ_n Σ_k S̃_kᵀ W (roi − S̃_k) / (dᵀ S̃_k)``.

    ``S̃ = probs ⊙ roi``, ``d = W roi`` (the degree), ``W`` the bilateral
    lattice kernel of :func:`rloss.losses.densecrf_loss`. The energy is
    computed per image and averaged over the batch (``N`` images); each
    class term is in 0..1, so the energy is in ``0..K``. One lattice serves
    ``W roi`` and ``W S̃`` (one filtering pass with ``K + 1`` channels) and the
    backward pass reuses them. A class absent from an image (``dᵀS̃_k ≈ 0``)
    is handled by flooring the denominator at ``1e-8 · dᵀroi`` (no NaN).

    Reference: Tang et al., "Normalized Cut Loss for Weakly-supervised CNN
    Segmentation", CVPR 2018.

    Volumes (5-D inputs, optional ``spacing``) as in :func:`~rloss.losses.densecrf_loss`.

    Args:
        image: ``(N, C, H, W)`` float guidance image, 0..255, or a volume
            ``(N, C, D, H, W)``.
        probs: ``(N, K, H, W)`` (``(N, K, D, H, W)``) float softmax probabilities.
        roi: ``(N, H, W)`` (``(N, D, H, W)``) region of interest in 0..1, or
            ``None`` (all ones).
        sigma_rgb: colour bandwidth, 0..255 units.
        sigma_xy: spatial bandwidth in input pixels (voxels, or the units of
            ``spacing``); follows ``scale_factor``.
        weight: loss weight ≥ 0.
        scale_factor: resize factor applied before the loss, a number or one
            per spatial axis, as in :func:`~rloss.losses.densecrf_loss`.
        backend: lattice backend or ``None`` for the device default.
        spacing: voxel size per spatial axis (``(sd, sh, sw)`` for a volume), or
            ``None`` (1: ``sigma_xy`` in voxels).

    Returns:
        0-dim tensor, float32 (float64 for float64 ``probs``), in ``0..weight·K``.

    Example:
        >>> import torch
        >>> from rloss.losses import ncut_loss
        >>> image = torch.rand(1, 3, 32, 32) * 255
        >>> probs = torch.randn(1, 3, 32, 32).softmax(1)
        >>> loss = ncut_loss(image, probs, sigma_rgb=15.0, sigma_xy=40.0)

        A volume with anisotropic voxels (sigma in mm):

        >>> vol = torch.rand(1, 1, 3, 16, 16) * 255
        >>> vloss = ncut_loss(vol, torch.randn(1, 2, 3, 16, 16).softmax(1), sigma_rgb=15.0,
        ...                   sigma_xy=6.0, spacing=(5.0, 1.5, 1.5))
        >>> 0.0 <= float(vloss) <= 2.0
        True
    """
    weight = _checks.check_weight("weight", weight)
    device = probs.device if isinstance(probs, Tensor) else torch.device("cpu")
    with _checks.no_autocast(device):
        lattice, probs_c, roi_c = prepare_pairwise(
            image, probs, roi, sigma_rgb, sigma_xy, scale_factor, backend, spacing=spacing
        )
        return _NCutEnergy.apply(probs_c, roi_c, lattice, weight)


class NormalizedCutLoss(nn.Module):
    r"""Module form of :func:`ncut_loss` (Tang et al., CVPR 2018).

    Args:
        weight: loss weight ≥ 0.
        sigma_rgb: colour bandwidth, 0..255 units.
        sigma_xy: spatial bandwidth in input pixels.
        scale_factor: resize factor applied before the loss (number or per axis).
        backend: lattice backend or ``None`` for the device default.
        spacing: voxel size per spatial axis for volumes, or ``None``.

    Shape:
        - image: ``(N, C, H, W)`` float, 0..255 (volumes: ``(N, C, D, H, W)``).
        - probs: ``(N, K, H, W)`` float softmax (volumes: ``(N, K, D, H, W)``).
        - roi: ``(N, H, W)`` (volumes: ``(N, D, H, W)``) or ``None``.
        - output: scalar in ``0..weight·K``.

    Example:
        >>> import torch
        >>> from rloss.losses import NormalizedCutLoss
        >>> nc = NormalizedCutLoss(weight=0.5, sigma_rgb=15.0, sigma_xy=40.0)
        >>> loss = nc(torch.rand(1, 3, 32, 32) * 255, torch.randn(1, 3, 32, 32).softmax(1))
    """

    inputs: ClassVar[TermInputs] = TermInputs.IMAGE_PROBS_ROI

    def __init__(
        self,
        weight: float,
        sigma_rgb: float,
        sigma_xy: float,
        scale_factor: float | tuple[float, ...] = 1.0,
        backend: str | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.weight = _checks.check_weight("weight", weight)
        self.sigma_rgb = _checks.check_positive("sigma_rgb", sigma_rgb)
        self.sigma_xy = _checks.check_positive("sigma_xy", sigma_xy)
        self.scale_factor = _checks.check_scale_factor(scale_factor)
        self.backend = backend
        self.spacing = _checks.check_spacing(spacing, None)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, sigma_rgb={self.sigma_rgb:g}, sigma_xy={self.sigma_xy:g}, "
            f"scale_factor={_fmt_scale(self.scale_factor)}, backend={self.backend!r}"
            + ("" if self.spacing is None else f", spacing={self.spacing}")
        )

    def forward(self, image: Tensor, probs: Tensor, roi: Tensor | None = None) -> Tensor:
        return ncut_loss(
            image,
            probs,
            roi,
            sigma_rgb=self.sigma_rgb,
            sigma_xy=self.sigma_xy,
            weight=self.weight,
            scale_factor=self.scale_factor,
            backend=self.backend,
            spacing=self.spacing,
        )
