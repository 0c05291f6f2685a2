r"""Mean-field inference in a fully connected (dense) CRF, for post-processing predictions.

(Named for what it does, mean-field refinement, so that "crf" alone is not
both this and the DenseCRF *loss* of :mod:`rloss.losses.densecrf`; the old
names ``rloss.crf.dense_crf`` / ``DenseCRF`` remain as deprecated aliases.)

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with
Gaussian Edge Potentials", NeurIPS 2011. Potts compatibility, two kernels:

- appearance ``k_a(i, j) = exp(-|p_i − p_j|²/2σ_xy² − |I_i − I_j|²/2σ_rgb²)``,
- smoothness ``k_s(i, j) = exp(-|p_i − p_j|²/2θ²)``,

each normalised by its degree (``k̄ = D⁻¹ K``, so a message is a weighted
average of the neighbours' marginals and the weights are independent of σ and
of the lattice's gain). Starting from ``Q = probs``, each iteration sets::

    Q ← softmax( log P + w_a · (K_a Q)/(K_a 1) + w_s · (K_s Q)/(K_s 1) )

(the Potts message ``−w Σ_j k̄_ij [l ≠ l_j] Q_j`` up to a per-pixel constant that
the softmax removes). Both kernels use the permutohedral lattice of
:mod:`rloss.lattice`, built once per kernel; every iteration filters all K
channels in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rloss import checks as _checks
from rloss.lattice import Lattice, features_from_image, position_sigmas

__all__ = ["MeanFieldCRF", "meanfield_refine"]

#: Appearance kernel bandwidths and weight (as in common DenseCRF post-processing).
DEFAULT_SIGMA_RGB: float = 13.0
DEFAULT_SIGMA_XY: float = 80.0
DEFAULT_APPEARANCE_WEIGHT: float = 5.0
#: Smoothness kernel bandwidth (pixels) and weight.
DEFAULT_SMOOTHNESS_SIGMA: float = 3.0
DEFAULT_SMOOTHNESS_WEIGHT: float = 3.0
DEFAULT_ITERATIONS: int = 5
#: Probability floor of the unary ``log P``.
PROB_FLOOR: float = 1e-8


def meanfield_refine(
    image: Tensor,
    probs: Tensor,
    *,
    num_iterations: int = DEFAULT_ITERATIONS,
    sigma_rgb: float = DEFAULT_SIGMA_RGB,
    sigma_xy: float = DEFAULT_SIGMA_XY,
    appearance_weight: float = DEFAULT_APPEARANCE_WEIGHT,
    smoothness_sigma: float = DEFAULT_SMOOTHNESS_SIGMA,
    smoothness_weight: float = DEFAULT_SMOOTHNESS_WEIGHT,
    backend: str | None = None,
    spacing: tuple[float, ...] | None = None,
) -> Tensor:
    r"""Refine ``probs`` by mean-field inference in a dense Potts CRF (no gradient).

    ``Q ← softmax(log P + w_a (K_a Q)/(K_a 1) + w_s (K_s Q)/(K_s 1))``, repeated
    ``num_iterations`` times from ``Q = P`` (see the module docstring).

    **Volumes.** 5-D inputs are refined in 3-D: every voxel is connected to
    every voxel of its volume, with positions ``(z·sd, y·sh, x·sw)`` for
    ``spacing=(sd, sh, sw)`` (``sigma_xy`` and ``smoothness_sigma`` in those
    units) or ``(z, y, x)`` without it. A spatial axis of extent 1 carries no
    position feature, so a one-slice volume is refined exactly as its slice.
    (Slice-wise 2-D refinement of a volume: pass its slices as a batch of 4-D
    images.)

    Reference: Krähenbühl & Koltun, NeurIPS 2011.

    Args:
        image: ``(N, C, H, W)`` float guidance image, 0..255, or a volume
            ``(N, C, D, H, W)``.
        probs: ``(N, K, H, W)`` (``(N, K, D, H, W)``) float softmax
            probabilities (the unaries).
        num_iterations: mean-field iterations, ≥ 0 (5–10 is plenty).
        sigma_rgb: appearance kernel colour bandwidth, 0..255 units.
        sigma_xy: appearance kernel spatial bandwidth, pixels (voxels, or the
            units of ``spacing``).
        appearance_weight: ``w_a`` ≥ 0.
        smoothness_sigma: smoothness kernel bandwidth ``θ``, pixels (or the
            units of ``spacing``).
        smoothness_weight: ``w_s`` ≥ 0.
        backend: lattice backend or ``None`` for the device default.
        spacing: voxel size per spatial axis, ``(sd, sh, sw)`` for a volume
            (``(sh, sw)`` for an image), or ``None`` (1 per axis).

    Returns:
        ``(N, K, H, W)`` (``(N, K, D, H, W)``) float32 refined marginals (sum
        to 1 over K), detached.

    Example:
        >>> import torch
        >>> from rloss.meanfield import meanfield_refine
        >>> image = torch.rand(1, 3, 32, 32) * 255
        >>> probs = torch.randn(1, 4, 32, 32).softmax(1)
        >>> labels = meanfield_refine(image, probs).argmax(1)

        A 1-channel volume, 8 mm between slices, 1.5 mm pixels (sigmas in mm):

        >>> vol = torch.rand(1, 1, 3, 16, 16) * 255
        >>> q = meanfield_refine(vol, torch.randn(1, 4, 3, 16, 16).softmax(1), sigma_xy=15.0,
        ...                      smoothness_sigma=4.5, spacing=(8.0, 1.5, 1.5))
        >>> q.shape
        torch.Size([1, 4, 3, 16, 16])
    """
    probs = _checks.check_float_tensor("probs", probs, (4, 5), "(N, K, H, W) or (N, K, D, H, W)")
    image = _checks.check_float_tensor("image", image, (4, 5), "(N, C, H, W) or (N, C, D, H, W)")
    _checks.check_same_device(("probs", probs), ("image", image))
    _checks.check_spatial_match(image, probs)
    _checks.check_image(image)
    _checks.check_probs(probs)
    if int(num_iterations) != num_iterations or num_iterations < 0:
        raise ValueError(f"num_iterations must be an int >= 0, got {num_iterations!r}")
    w_a = _checks.check_weight("appearance_weight", appearance_weight)
    w_s = _checks.check_weight("smoothness_weight", smoothness_weight)
    sigma_rgb = _checks.check_positive("sigma_rgb", sigma_rgb)
    sigma_xy = _checks.check_positive("sigma_xy", sigma_xy)
    smoothness_sigma = _checks.check_positive("smoothness_sigma", smoothness_sigma)
    nd = probs.dim() - 2
    sp = _checks.check_spacing(spacing, nd)
    # a volume's axes of extent 1 get no position feature (their coordinate is constant)
    keep = [nd == 2 or int(size) > 1 for size in probs.shape[2:]]

    def sigmas(sigma: float) -> tuple[float | None, ...]:
        return tuple(
            s if k else None for s, k in zip(position_sigmas(sigma, nd, spacing=sp), keep)
        )

    with torch.no_grad(), _checks.no_autocast(probs.device):
        p = probs.detach().to(torch.float32)
        unary = p.clamp_min(PROB_FLOOR).log()
        img = image.detach().to(torch.float32)
        kernels: list[tuple[float, Lattice, Tensor]] = []
        if w_a > 0:
            feats = features_from_image(img, sigma_rgb, sigmas(sigma_xy), pixel_major=False)
            lat = Lattice(feats, backend=backend)
            kernels.append((w_a, lat, _inverse_degree(lat, p)))
        if w_s > 0:
            xy = features_from_image(img[:, :0], 1.0, sigmas(smoothness_sigma))
            lat = Lattice(xy, backend=backend)
            kernels.append((w_s, lat, _inverse_degree(lat, p)))
        q = p
        for _ in range(int(num_iterations)):
            logits = unary.clone()
            for weight, lat, inv_degree in kernels:
                logits += weight * lat.filter(q, check_finite=False) * inv_degree
            q = torch.softmax(logits, dim=1)
        return q


def _inverse_degree(lat: Lattice, like: Tensor) -> Tensor:
    """``1 / (K 1)`` per pixel, ``(N, 1, *spatial)``."""
    ones = torch.ones(like.shape[0], 1, *like.shape[2:], dtype=like.dtype, device=like.device)
    degree = lat.filter(ones, check_finite=False)
    return 1.0 / degree.clamp_min(torch.finfo(like.dtype).tiny)


class MeanFieldCRF(nn.Module):
    """Module form of :func:`meanfield_refine` (holds the hyper-parameters only).

    Shape:
        - image: ``(N, C, H, W)`` float, 0..255 (volumes: ``(N, C, D, H, W)``).
        - probs: ``(N, K, H, W)`` float softmax (volumes: ``(N, K, D, H, W)``).
        - output: like ``probs``, float32 refined marginals.

    Example:
        >>> import torch
        >>> from rloss.meanfield import MeanFieldCRF
        >>> crf = MeanFieldCRF(num_iterations=5)
        >>> q = crf(torch.rand(1, 3, 16, 16) * 255, torch.randn(1, 2, 16, 16).softmax(1))
    """

    def __init__(
        self,
        num_iterations: int = DEFAULT_ITERATIONS,
        sigma_rgb: float = DEFAULT_SIGMA_RGB,
        sigma_xy: float = DEFAULT_SIGMA_XY,
        appearance_weight: float = DEFAULT_APPEARANCE_WEIGHT,
        smoothness_sigma: float = DEFAULT_SMOOTHNESS_SIGMA,
        smoothness_weight: float = DEFAULT_SMOOTHNESS_WEIGHT,
        backend: str | None = None,
        spacing: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.spacing = _checks.check_spacing(spacing, None)
        self.num_iterations = int(num_iterations)
        self.sigma_rgb = float(sigma_rgb)
        self.sigma_xy = float(sigma_xy)
        self.appearance_weight = float(appearance_weight)
        self.smoothness_sigma = float(smoothness_sigma)
        self.smoothness_weight = float(smoothness_weight)
        self.backend = backend

    def forward(self, image: Tensor, probs: Tensor) -> Tensor:
        return meanfield_refine(
            image,
            probs,
            num_iterations=self.num_iterations,
            sigma_rgb=self.sigma_rgb,
            sigma_xy=self.sigma_xy,
            appearance_weight=self.appearance_weight,
            smoothness_sigma=self.smoothness_sigma,
            smoothness_weight=self.smoothness_weight,
            backend=self.backend,
            spacing=self.spacing,
        )
