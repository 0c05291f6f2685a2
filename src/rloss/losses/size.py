r"""Size-constraint loss: quadratic penalty on class volumes outside bounds.

Kervadec, Dolz, Tang, Granger, Boykov, Ben Ayed, "Constrained-CNN losses for
weakly supervised segmentation", MIDL 2018 (Medical Image Analysis 2019).

With ``S̃ = S ⊙ roi`` and the soft class volume ``V_k = Σ_i S̃_ik`` (pixels)::

    C(V_k) = (V_k − a_k)²  if V_k < a_k
             (V_k − b_k)²  if V_k > b_k
             0             otherwise

Normalisation (ours): the penalty is divided by ``P²`` with ``P = H·W`` the
number of pixels of the probability map, i.e. it is the paper's penalty on
volumes expressed as *fractions of the image*, so a weight of order 1 works at
any resolution. A weight ``λ_paper`` on the paper's pixel² penalty equals
``λ = λ_paper · P²`` here. The loss sums over classes and averages over images.

Units: the bounds ``a``, ``b`` are **pixel counts** (``0 ≤ a ≤ b``), not
fractions; :func:`size_bounds_from_tags` turns fractions into pixels.
Gradients: only ``probs`` gets one. ``roi`` and the bounds are data: they are
detached, so a ``requires_grad`` roi or bound receives no gradient.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rloss.constants import IGNORE_INDEX
from rloss.losses import _checks
from rloss.losses.composite import TermInputs

__all__ = ["SizeLoss", "size_bounds_from_mask", "size_bounds_from_tags", "size_loss"]

#: Default lower bound of a present class, as a fraction of the image (tags helper).
TAG_LOWER_FRACTION: float = 0.01
#: Default upper bound of a present class, as a fraction of the image (tags helper).
TAG_UPPER_FRACTION: float = 1.0
#: Default relative margin around the true size (mask helper), as in Kervadec et al.
MASK_MARGIN: float = 0.1


def _check_bounds(name: str, b: object, n: int, k: int, probs: Tensor) -> Tensor:
    if not isinstance(b, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    if tuple(b.shape) != (n, k):
        raise ValueError(
            f"{name} must have shape (N, K) = {(n, k)} to match probs {tuple(probs.shape)}, "
            f"got {tuple(b.shape)}"
        )
    _checks.check_same_device(("probs", probs), (name, b))
    if not (b.is_floating_point() or b.dtype in (torch.int64, torch.int32)):
        raise ValueError(f"{name} must be a float or integer tensor, got dtype {b.dtype}")
    if _checks.host_values(b):
        bf = b.detach().double()
        if not bool(torch.isfinite(bf).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
        if bool((bf < 0).any()):
            i, j = (int(v) for v in (bf < 0).nonzero()[0])
            raise ValueError(
                f"{name} must be >= 0 (a pixel count), got {name}[{i}, {j}] = {float(bf[i, j]):g}"
            )
    return b.detach()


def _check_bounds_pair(lower: Tensor, upper: Tensor, probs: Tensor) -> None:
    """On host values: ``lower <= upper``, and bounds in pixels rather than fractions."""
    if not (_checks.host_values(lower) and _checks.host_values(upper)):
        return
    lo, hi = lower.double(), upper.double()
    crossed = lo > hi
    if bool(crossed.any()):
        i, j = (int(v) for v in crossed.nonzero()[0])
        raise ValueError(
            f"lower must be <= upper, got lower[{i}, {j}] = {float(lo[i, j]):g} > "
            f"upper[{i}, {j}] = {float(hi[i, j]):g}"
        )
    k, p = int(probs.shape[1]), int(probs.shape[2]) * int(probs.shape[3])
    # The K class volumes sum to the roi area (up to P pixels): bounds that are all
    # <= 1 on an image with more than K pixels cannot hold; they are fractions.
    if p > k and float(hi.max()) <= 1.0:
        raise ValueError(
            f"lower and upper are pixel counts (P = H*W = {p} here), but every upper bound "
            f"is <= 1 (max {float(hi.max()):g}): they look like fractions of the image; "
            "multiply them by the number of pixels, e.g. size_bounds_from_tags(tags, "
            "num_pixels, lower_fraction=..., upper_fraction=...)"
        )


def size_loss(
    probs: Tensor,
    lower: Tensor,
    upper: Tensor,
    roi: Tensor | None = None,
    *,
    weight: float = 1.0,
) -> Tensor:
    r"""Size penalty ``weight · (1/N) Σ_n Σ_k [relu(a − V)² + relu(V − b)²] / P²``.

    ``V_nk = Σ_i probs_nki · roi_ni`` is the soft size of class k in image n,
    in pixels; ``a = lower``, ``b = upper`` are in pixels too; ``P = H·W``.
    Zero when every volume lies within its bounds. Only ``probs`` gets a
    gradient: ``roi``, ``lower`` and ``upper`` are detached (data).

    Reference: Kervadec et al., "Constrained-CNN losses for weakly supervised
    segmentation", MIDL 2018.

    Args:
        probs: ``(N, K, H, W)`` float softmax probabilities.
        lower: ``(N, K)`` lower bounds ``a``, in pixels (0 for none), ``≥ 0``.
        upper: ``(N, K)`` upper bounds ``b``, in pixels (``H·W`` for none),
            ``≥ lower``; ``upper = 0`` forces a class absent (image-level tags).
            Bounds that are all ``≤ 1`` on an image of more than K pixels are
            rejected as fractions.
        roi: ``(N, H, W)`` region of interest in 0..1, or ``None`` (all ones).
        weight: loss weight ≥ 0.

    Returns:
        0-dim tensor, float32 (float64 for float64 ``probs``), ``≥ 0``.

    Raises:
        ValueError: naming the argument: bad shapes or dtypes, NaN/Inf, a
            negative bound, ``lower > upper``, bounds that look like fractions
            (value checks on CPU tensors only, as for every rloss loss).

    Example:
        >>> import torch
        >>> from rloss.losses import size_loss, size_bounds_from_tags
        >>> probs = torch.randn(2, 3, 16, 16).softmax(1)
        >>> tags = torch.tensor([[True, True, False], [True, False, True]])
        >>> lower, upper = size_bounds_from_tags(tags, 16 * 16)
        >>> loss = size_loss(probs, lower, upper)
    """
    weight = _checks.check_weight("weight", weight)
    probs = _checks.check_float_tensor("probs", probs, 4, "(N, K, H, W)")
    roi_t = _checks.check_roi(roi, probs)
    _checks.check_probs(probs, roi_t)
    n, k, h, w = (int(s) for s in probs.shape)
    lower = _check_bounds("lower", lower, n, k, probs)
    upper = _check_bounds("upper", upper, n, k, probs)
    _check_bounds_pair(lower, upper, probs)
    dtype = _checks.compute_dtype(probs)
    with _checks.no_autocast(probs.device):
        s = probs.to(dtype) * roi_t.detach().to(dtype).unsqueeze(1)
        volume = s.sum(dim=(2, 3))  # (N, K) pixels
        a = lower.to(dtype)
        b = upper.to(dtype)
        penalty = torch.relu(a - volume).square() + torch.relu(volume - b).square()
        return weight * penalty.sum() / (n * float(h * w) ** 2)


def size_bounds_from_tags(
    tags: Tensor,
    num_pixels: int | Tensor,
    *,
    lower_fraction: float = TAG_LOWER_FRACTION,
    upper_fraction: float = TAG_UPPER_FRACTION,
) -> tuple[Tensor, Tensor]:
    """Size bounds from image-level tags: absent class ``[0, 0]``, present ``[lo·P, hi·P]``.

    Args:
        tags: ``(N, K)`` bool (or 0/1) tensor, True where class k is in image n.
        num_pixels: pixels per image ``P``: an int, or an ``(N,)`` tensor
            (e.g. ``roi.sum((1, 2))`` to exclude padding).
        lower_fraction: lower bound of a present class as a fraction of ``P``
            (default 0.01).
        upper_fraction: upper bound of a present class as a fraction of ``P``
            (default 1.0, i.e. no upper bound).

    Returns:
        ``(lower, upper)``, each ``(N, K)`` float32 in pixels, on ``tags``'s device.

    Example:
        >>> import torch
        >>> lower, upper = size_bounds_from_tags(torch.tensor([[True, False]]), 100)
        >>> lower.tolist(), upper.tolist()
        ([[1.0, 0.0]], [[100.0, 0.0]])
    """
    if not isinstance(tags, Tensor):
        raise TypeError(f"tags must be a torch.Tensor, got {type(tags).__name__}")
    if tags.dim() != 2:
        raise ValueError(f"tags must have shape (N, K), got {tuple(tags.shape)}")
    if tags.dtype != torch.bool:
        if bool(((tags != 0) & (tags != 1)).any()):
            raise ValueError("tags must be bool or hold only 0 and 1")
        tags = tags != 0
    if not 0.0 <= lower_fraction <= upper_fraction:
        raise ValueError(
            "need 0 <= lower_fraction <= upper_fraction, got "
            f"lower_fraction={lower_fraction}, upper_fraction={upper_fraction}"
        )
    n = tags.shape[0]
    p = torch.as_tensor(num_pixels, device=tags.device).to(torch.float64)
    if p.dim() == 0:
        p = p.expand(n)
    if tuple(p.shape) != (n,):
        raise ValueError(
            f"num_pixels must be an int or an (N,) = ({n},) tensor (N from tags), "
            f"got shape {tuple(p.shape)}"
        )
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        bad = p[~torch.isfinite(p) | (p < 0)][0]
        raise ValueError(
            f"num_pixels must be a finite pixel count >= 0 (per image), got {float(bad):g}"
        )
    present = tags.to(torch.float64)
    lower = present * (lower_fraction * p).unsqueeze(1)
    upper = present * (upper_fraction * p).unsqueeze(1)
    return lower.to(torch.float32), upper.to(torch.float32)


def size_bounds_from_mask(
    mask: Tensor,
    num_classes: int,
    margin: float = MASK_MARGIN,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor]:
    """Bounds ``[(1 − margin)·V, (1 + margin)·V]`` around each class's true size ``V``.

    As in Kervadec et al. (MIDL 2018), where the bounds come from the ground
    truth with a relative margin of 10%. Pixels labelled ``ignore_index`` are
    not counted; an absent class gets ``[0, 0]``.

    Args:
        mask: ``(N, H, W)`` integer labels in ``0..num_classes-1`` or ``ignore_index``.
        num_classes: K.
        margin: relative margin ≥ 0 (default 0.1).
        ignore_index: label of void pixels (default 255).

    Returns:
        ``(lower, upper)``, each ``(N, K)`` float32 in pixels.

    Example:
        >>> import torch
        >>> mask = torch.zeros(1, 10, 10, dtype=torch.long)
        >>> mask[0, :5] = 1
        >>> lower, upper = size_bounds_from_mask(mask, 2)
        >>> lower.tolist(), upper.tolist()
        ([[45.0, 45.0]], [[55.0, 55.0]])
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 3:
        raise ValueError(f"mask must have shape (N, H, W), got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.dtype == torch.bool:
        raise ValueError(f"mask must be an integer tensor, got dtype {mask.dtype}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not (margin >= 0.0):
        raise ValueError(f"margin must be >= 0, got {margin}")
    k = int(num_classes)
    m = mask.long()
    valid = m != ignore_index
    if bool((valid & ((m < 0) | (m >= k))).any()):
        raise ValueError(
            f"mask values must be in 0..{k - 1} or ignore_index={ignore_index}, "
            f"got values in [{int(m.min())}, {int(m.max())}]"
        )
    n = m.shape[0]
    flat = torch.where(valid, m, torch.full_like(m, k)).reshape(n, -1)
    counts = torch.zeros(n, k + 1, dtype=torch.float32, device=m.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    volume = counts[:, :k]
    return (1.0 - margin) * volume, (1.0 + margin) * volume


class SizeLoss(nn.Module):
    r"""Module form of :func:`size_loss` (Kervadec et al., MIDL 2018).

    Args:
        weight: loss weight ≥ 0 (the penalty is on volumes as fractions of
            the image, so a weight of order 1 is sensible).

    Only ``probs`` gets a gradient; ``roi`` and the bounds are detached.

    Shape:
        - probs: ``(N, K, H, W)`` float softmax.
        - lower, upper: ``(N, K)`` bounds in pixels, ``0 ≤ lower ≤ upper``.
        - roi: ``(N, H, W)`` or ``None``.
        - output: scalar.

    Example:
        >>> import torch
        >>> from rloss.losses import SizeLoss, size_bounds_from_mask
        >>> mask = torch.randint(0, 3, (2, 16, 16))
        >>> lower, upper = size_bounds_from_mask(mask, 3)
        >>> loss = SizeLoss(1.0)(torch.randn(2, 3, 16, 16).softmax(1), lower, upper)
    """

    #: How :class:`~rloss.losses.CompositeLoss` feeds this term.
    inputs: ClassVar[TermInputs] = TermInputs.PROBS_BOUNDS_ROI

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = _checks.check_weight("weight", weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"

    def forward(
        self, probs: Tensor, lower: Tensor, upper: Tensor, roi: Tensor | None = None
    ) -> Tensor:
        return size_loss(probs, lower, upper, roi, weight=self.weight)
