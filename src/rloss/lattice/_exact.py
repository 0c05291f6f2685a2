"""Brute-force dense Gaussian filter, float64: the ground truth for tests.

Computes ``(W v)_i = sum_j exp(-0.5 * ||f_i - f_j||^2) v_j`` over all pixel
pairs of each image, the ``j = i`` term included. Time and memory are
quadratic in the number of pixels (processed in row blocks), so use it on
small images only (a few thousand pixels).

Note that the permutohedral lattice does *not* approximate this sum with
unit gain: it returns about 0.5–0.7 times it (see ``rloss.lattice``).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Row block size: bounds the (block, P) kernel matrix held in memory.
_BLOCK = 2048


def exact_filter(features: Tensor, values: Tensor) -> Tensor:
    """Exact Gaussian filtering of ``values`` in ``features`` space, in float64.

    Args:
        features: ``(N, P, d)`` per-pixel feature vectors (already divided by
            their bandwidths).
        values: ``(N, C, P)`` values to filter.

    Returns:
        ``(N, C, P)`` float64 tensor ``sum_j exp(-|f_i - f_j|^2 / 2) v_j``.

    Raises:
        ValueError: when the shapes or devices of ``features`` and ``values``
            do not match.
    """
    if features.dim() != 3 or values.dim() != 3:
        raise ValueError(
            f"features must be (N, P, d) and values (N, C, P), got {tuple(features.shape)} "
            f"and {tuple(values.shape)}"
        )
    if features.shape[0] != values.shape[0] or features.shape[1] != values.shape[2]:
        raise ValueError(
            f"features {tuple(features.shape)} and values {tuple(values.shape)} disagree: "
            "want (N, P, d) and (N, C, P)"
        )
    if features.device != values.device:
        raise ValueError(f"features are on {features.device} but values on {values.device}")
    f = features.to(torch.float64)
    v = values.to(torch.float64)
    n, p, _ = f.shape
    out = torch.empty(n, v.shape[1], p, dtype=torch.float64, device=v.device)
    for b in range(n):
        for start in range(0, p, _BLOCK):
            stop = min(start + _BLOCK, p)
            d2 = torch.cdist(f[b, start:stop], f[b], compute_mode="donot_use_mm_for_euclid_dist")
            k = torch.exp(-0.5 * d2.square())  # (block, P)
            out[b, :, start:stop] = v[b] @ k.T
    return out


class ExactLattice:
    """Backend object with the same interface as the lattice backends."""

    def __init__(self, features: Tensor) -> None:
        self.features = features

    def apply(self, values: Tensor) -> Tensor:
        """``(N, C, P)`` values -> ``(N, C, P)`` exact filter, float64 on any input dtype."""
        return exact_filter(self.features, values)


def build(features: Tensor, options: object = None) -> ExactLattice:
    """Backend entry point: ``features`` ``(N, P, d)`` -> :class:`ExactLattice`
    (``options`` are about lattice construction and do not apply here)."""
    return ExactLattice(features)
