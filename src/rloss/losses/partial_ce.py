r"""Partial cross-entropy: cross-entropy on the labelled (scribbled) pixels only.

Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation",
ECCV 2018 (and Lin et al., ScribbleSup, CVPR 2016)::

    L = Σ_{i ∈ Ω_L} w_{y_i} (−log softmax(z_i)_{y_i}) / Σ_{i ∈ Ω_L} w_{y_i}

over the set ``Ω_L`` of pixels whose label is not ``ignore_index``
(``w ≡ 1`` without class weights: the mean over labelled pixels).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rloss.constants import IGNORE_INDEX
from rloss.losses import _checks

__all__ = ["PartialCrossEntropy", "partial_cross_entropy"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_labels(labels: object, logits: Tensor, ignore_index: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    n, k, h, w = (int(s) for s in logits.shape)
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(
            f"labels must have shape (N, H, W) = {(n, h, w)} to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise ValueError(f"labels must be an integer tensor (int64), got dtype {labels.dtype}")
    _checks.check_same_device(("logits", logits), ("labels", labels))
    labels = labels.long()
    if not _checks.host_values(labels):
        return labels  # value checks would sync an accelerator with the host
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels must be class indices in 0..{k - 1} (K={k} from logits) or "
            f"ignore_index={ignore_index}, got the value {value}"
        )
    return labels


def partial_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    r"""Cross-entropy averaged over labelled pixels; 0 (zero gradient) when none is labelled.

    ``L = Σ_{i labelled} w_{y_i} · (−log softmax(logits_i)_{y_i}) / Σ_{i labelled} w_{y_i}``,
    the weighted mean that ``torch.nn.functional.cross_entropy`` computes, except
    that a batch with no labelled pixel (or zero total weight) gives 0 with a
    zero gradient instead of NaN. Computed in float32 (float64 for float64 logits).

    Reference: Tang et al., ECCV 2018 (partial cross-entropy on scribbles).

    Args:
        logits: ``(N, K, H, W)`` float network outputs (before softmax).
        labels: ``(N, H, W)`` integer labels in ``0..K-1``, ``ignore_index``
            on unlabelled pixels.
        weight: optional ``(K,)`` non-negative class weights.
        ignore_index: label value of unlabelled pixels (default 255).

    Returns:
        0-dim float32 tensor (float64 for float64 logits), ``≥ 0``.

    Example:
        >>> import torch
        >>> from rloss.losses import partial_cross_entropy
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.full((2, 8, 8), 255)
        >>> labels[:, 2, 2:6] = 1
        >>> partial_cross_entropy(logits, labels).backward()
    """
    logits = _checks.check_float_tensor("logits", logits, 4, "(N, K, H, W)")
    labels = _check_labels(labels, logits, ignore_index)
    if _checks.host_values(logits) and not math.isfinite(
        float(logits.detach().sum(dtype=torch.float64))
    ):
        raise ValueError("logits contains NaN or Inf values")
    dtype = _checks.compute_dtype(logits)
    k = logits.shape[1]
    w = None
    if weight is not None:
        if not isinstance(weight, Tensor):
            weight = torch.as_tensor(weight)
        if tuple(weight.shape) != (k,):
            raise ValueError(
                f"weight must have shape (K,) = ({k},) to match logits {tuple(logits.shape)}, "
                f"got {tuple(weight.shape)}"
            )
        _checks.check_same_device(("logits", logits), ("weight", weight))
        w = weight.to(dtype)
        if _checks.host_values(w) and (not bool(torch.isfinite(w).all()) or bool((w < 0).any())):
            raise ValueError(f"weight must be finite and non-negative, got {weight.tolist()}")
    with _checks.no_autocast(logits.device):
        z = logits.to(dtype)
        total = F.cross_entropy(z, labels, weight=w, ignore_index=ignore_index, reduction="sum")
        valid = labels != ignore_index
        if w is None:
            denom = valid.sum().to(dtype)
        else:
            denom = (w[labels.clamp(0, k - 1)] * valid).sum()
        # No labelled pixel: total is 0 with zero gradient; 0 / tiny stays 0 (no NaN).
        return total / denom.clamp_min(torch.finfo(dtype).tiny)


class PartialCrossEntropy(nn.Module):
    r"""Module form of :func:`partial_cross_entropy` (mean CE over labelled pixels).

    Args:
        weight: optional ``(K,)`` class weights (a buffer: moves with ``.to()``).
        ignore_index: label value of unlabelled pixels (default 255).

    Shape:
        - logits: ``(N, K, H, W)`` float.
        - labels: ``(N, H, W)`` int64, ``ignore_index`` where unlabelled.
        - output: scalar.

    Example:
        >>> import torch
        >>> from rloss.losses import PartialCrossEntropy
        >>> pce = PartialCrossEntropy()
        >>> loss = pce(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 255))
        >>> float(loss)
        0.0
    """

    inputs: ClassVar[str] = "logits_labels"

    def __init__(self, weight: Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.dim() != 1:
                raise ValueError(f"weight must have shape (K,), got {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, weighted={self.weight is not None}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return partial_cross_entropy(logits, labels, self.weight, self.ignore_index)
