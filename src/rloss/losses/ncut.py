r"""Normalized Cut loss over a fully connected bilateral graph.

Tang, Djelouah, Perazzi, Boykov, Schroers, "Normalized Cut Loss for
Weakly-supervised CNN Segmentation", CVPR 2018.

With ``S̃ = S ⊙ roi``, the lattice kernel ``W`` and the degree ``d = W roi``::

    E_n = Σ_k S̃_kᵀ W (roi − S̃_k) / (dᵀ S̃_k)  =  K − Σ_k S̃_kᵀ W S̃_k / (dᵀ S̃_k)

per image, averaged over the batch. Each class contributes its cut divided by
its volume, in 0..1.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from rloss.losses import _checks
from rloss.losses.densecrf import pairwise_energy

__all__ = ["NormalizedCutLoss", "ncut_loss"]


def ncut_loss(
    image: Tensor,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    sigma_rgb: float,
    sigma_xy: float,
    weight: float = 1.0,
    scale_factor: float = 1.0,
    backend: str | None = None,
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

    Args:
        image: ``(N, C, H, W)`` float guidance image, 0..255.
        probs: ``(N, K, H, W)`` float softmax probabilities.
        roi: ``(N, H, W)`` region of interest in 0..1, or ``None`` (all ones).
        sigma_rgb: colour bandwidth, 0..255 units.
        sigma_xy: spatial bandwidth in input pixels (multiplied by ``scale_factor``).
        weight: loss weight ≥ 0.
        scale_factor: resize factor applied before the loss, as in
            :func:`~rloss.losses.densecrf_loss`.
        backend: lattice backend or ``None`` for the device default.

    Returns:
        0-dim tensor, float32 (float64 for float64 ``probs``), in ``0..weight·K``.

    Example:
        >>> import torch
        >>> from rloss.losses import ncut_loss
        >>> image = torch.rand(1, 3, 32, 32) * 255
        >>> probs = torch.randn(1, 3, 32, 32).softmax(1)
        >>> loss = ncut_loss(image, probs, sigma_rgb=15.0, sigma_xy=40.0)
    """
    weight = _checks.check_weight("weight", weight)
    return pairwise_energy(
        image,
        probs,
        roi,
        kind="ncut",
        sigma_rgb=sigma_rgb,
        sigma_xy=sigma_xy,
        scale_factor=scale_factor,
        normalize=False,
        backend=backend,
        weight=weight,
    )


class NormalizedCutLoss(nn.Module):
    r"""Module form of :func:`ncut_loss` (Tang et al., CVPR 2018).

    Args:
        weight: loss weight ≥ 0.
        sigma_rgb: colour bandwidth, 0..255 units.
        sigma_xy: spatial bandwidth in input pixels.
        scale_factor: resize factor applied before the loss.
        backend: lattice backend or ``None`` for the device default.

    Shape:
        - image: ``(N, C, H, W)`` float, 0..255.
        - probs: ``(N, K, H, W)`` float softmax.
        - roi: ``(N, H, W)`` or ``None``.
        - output: scalar in ``0..weight·K``.

    Example:
        >>> import torch
        >>> from rloss.losses import NormalizedCutLoss
        >>> nc = NormalizedCutLoss(weight=0.5, sigma_rgb=15.0, sigma_xy=40.0)
        >>> loss = nc(torch.rand(1, 3, 32, 32) * 255, torch.randn(1, 3, 32, 32).softmax(1))
    """

    inputs: ClassVar[str] = "image_probs_roi"

    def __init__(
        self,
        weight: float,
        sigma_rgb: float,
        sigma_xy: float,
        scale_factor: float = 1.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.weight = _checks.check_weight("weight", weight)
        self.sigma_rgb = _checks.check_positive("sigma_rgb", sigma_rgb)
        self.sigma_xy = _checks.check_positive("sigma_xy", sigma_xy)
        self.scale_factor = _checks.check_positive("scale_factor", scale_factor)
        self.backend = backend

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, sigma_rgb={self.sigma_rgb:g}, sigma_xy={self.sigma_xy:g}, "
            f"scale_factor={self.scale_factor:g}, backend={self.backend!r}"
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
        )
